"""What the plan sinks keep of each message (no broker, no database I/O: the decoders and names only).

The flush contract itself is ClickHouseSink's (tests/unit/test_sink_flush.py); the real path,
broker and chDB included, is tests/integration/test_plan_sinks.py.
"""

from __future__ import annotations

import json

import msgspec

from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from consumers.plan_sinks import FEEDS, PlanSink
from pipeline.contract.events import AgentsSubscribed, AgentTransfer, BalanceSnapshot, FundsAdded
from pipeline.infra.settings import Settings
from tests.unit.test_clickhouse_plans import snapshot

FEED = {feed.name: feed for feed in FEEDS}


def event(kind: str, **fields: object) -> bytes:
    base = {"type": kind, "event_id": "e-1", "occurred_at": "2026-11-01T10:00:00.000Z", "account_id": "acme"}
    return json.dumps({**base, "app_id": "support-bot", **fields}).encode()


def test_billing_plans_keeps_the_plan_events_and_skips_anything_else_quietly() -> None:
    decode = FEED["plans"].decode
    assert isinstance(decode(event("funds_added", amount="10.00")), FundsAdded)
    assert isinstance(decode(event("agents_subscribed", agents=4)), AgentsSubscribed)
    assert decode(event("funds_added", amount="-1.00")) is None  # invalid: the workers dead-letter it
    assert decode(b"not json") is None
    assert decode(event("alert_delivered", user_id="u", alert_id="a")) is None  # misrouted: not ours to store
    assert decode(None) is None


def test_agent_transfers_keeps_only_started_transfers_that_name_an_agent() -> None:
    decode = FEED["transfers"].decode
    started = decode(event("agent_transfer", conversation_id="c", action="started", agent_id="ana"))
    assert isinstance(started, AgentTransfer)
    assert started.agent_id == "ana"
    assert decode(event("agent_transfer", conversation_id="c", action="ended", agent_id="ana")) is None
    assert decode(event("agent_transfer", conversation_id="c", action="started")) is None


def test_balance_state_decodes_snapshots_reports_garbage_and_skips_tombstones() -> None:
    decode = FEED["balances"].decode
    assert decode(msgspec.json.encode(snapshot(2, "10.00"))) == snapshot(2, "10.00")
    assert isinstance(decode(msgspec.json.encode(snapshot(2, "10.00"))), BalanceSnapshot)
    reason = decode(b'{"app_id": "x"}')
    assert isinstance(reason, str)
    assert reason.startswith("not a balance snapshot")
    assert decode(None) is None


def test_each_feed_has_its_topic_and_its_own_consumer_group(chdb_client: Client) -> None:
    settings = Settings(app_id="metering")
    sinks = [PlanSink(settings, feed, PlanStore(chdb_client, "metering")) for feed in FEEDS]  # no I/O until run
    assert [(s.topic, s.group) for s in sinks] == [
        ("billing-plans", "metering-sink-plans"),
        ("agent-transfers", "metering-sink-transfers"),
        ("balance-state", "metering-sink-balances"),
        ("billing-accounts", "metering-sink-accounts"),
        ("billing-orders", "metering-sink-orders"),
    ]
