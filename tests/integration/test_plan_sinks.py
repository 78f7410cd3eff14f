"""The store's plan sinks against the real broker: billing-plans, agent-transfers and balance-state
into ClickHouse, read back by `metering usage` (agents columns) and `metering plans` via the store API.

Everything is real: the session's broker, the store process's work (``serve_store`` in a thread:
migrations, the four sinks, the API) and the embedded chDB. Copies, garbage, a tombstone and an
older snapshot arriving last are produced on purpose; the figures are worked out by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cli.service import StoreEndpoints
from cli.usage_command import plans_text, usage_text
from pipeline.contract.decode import to_ms
from pipeline.contract.events import format_ms
from pipeline.infra.kafka import producer_config
from pipeline.infra.settings import Settings
from tests.support import wait_until
from tests.unit.test_clickhouse_plans import at, session, snapshot

pytestmark = pytest.mark.integration

APP = "support-bot"


def event(kind: str, when: str, event_id: str, **fields: object) -> bytes:
    base = {"type": kind, "event_id": event_id, "occurred_at": format_ms(to_ms(at(when))), "account_id": "acme"}
    return json.dumps({**base, "app_id": APP, **fields}).encode()


def transfer(when: str, event_id: str, action: str = "started", agent: str | None = None) -> bytes:
    fields = {"conversation_id": f"c-{event_id}", "action": action} | ({"agent_id": agent} if agent else {})
    return event("agent_transfer", when, event_id, **fields)


PLANS = [
    event(
        "plan_changed",
        "2026-10-20T00:00:00",
        "p-1",
        plan="starter",
        price_per_usage_session="1.00",
        price_per_alert_session="0.10",
        price_per_voice_session="2.00",
    ),
    event("funds_added", "2026-10-20T00:00:00", "f-1", amount="100.00"),
    event("agents_subscribed", "2026-10-25T00:00:00", "s-1", agents=3),
    event("agents_subscribed", "2026-11-02T11:00:00", "s-2", agents=8),
    event("agents_subscribed", "2026-11-02T12:00:00", "s-3", agents=5),
    b"not json: the workers dead-letter this, the sink skips it",
    event("agents_subscribed", "2026-11-02T11:00:00", "s-2", agents=8),  # a copy
]
TRANSFERS = [
    transfer("2026-11-01T10:01:00", "t-1", agent="ana"),
    transfer("2026-11-01T10:31:00", "t-2", agent="bo"),
    transfer("2026-11-01T10:40:00", "t-3", action="ended"),
    transfer("2026-11-01T10:50:00", "t-4"),  # names no agent: nobody to count
    transfer("2026-11-02T10:01:00", "t-5", agent="ana"),
    transfer("2026-11-02T10:01:00", "t-5", agent="ana"),  # a copy
    b"{}",
]
SNAPSHOTS: list[bytes | None] = [
    msgspec.json.encode(snapshot(1, "100.00")),
    msgspec.json.encode(snapshot(3, "98.00")),
    None,  # a tombstone says nothing about a balance
    b"garbage",  # counted as invalid, skipped
    msgspec.json.encode(snapshot(2, "99.00")),  # an older version arriving last loses
]


def produce(settings: Settings, topic: str, values: Sequence[bytes | None]) -> None:
    producer = Producer(producer_config(settings))
    for value in values:
        producer.produce(topic, key=APP.encode(), value=value)
    assert producer.flush(30) == 0


def committed(settings: Settings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return sum(max(0, tp.offset) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def test_plan_sinks_feed_usage_agents_and_plans(settings: Settings, store: StoreEndpoints) -> None:
    started = time.monotonic()
    producer = Producer(producer_config(settings))
    for record in (session("b-1", "2026-11-01T10:00:00"), session("b-2", "2026-11-02T10:00:00")):
        producer.produce(settings.topics.billing_sessions, key=APP.encode(), value=msgspec.json.encode(record))
    assert producer.flush(30) == 0
    produce(settings, settings.topics.plans, PLANS)
    produce(settings, settings.topics.transfers, TRANSFERS)
    produce(settings, settings.topics.balance_state, SNAPSHOTS)

    usage_expected = [
        "account_id,app_id,day,conversations,usage_sessions,voice_sessions,alert_sessions,billing_sessions,"
        "agents,active_agents",
        "acme,support-bot,2026-11-01,1,1,0,0,1,3,2",  # ana and bo; seats 3 carried from October
        "acme,support-bot,2026-11-02,1,1,0,0,1,8,1",  # 8 then 5: the highest of the day
    ]
    plans_expected = "acme,support-bot,starter,USD,active,98.00,50.00,true,2026-11,2,0,0,2,0,2.00"

    def usage() -> list[str]:
        text = usage_text(settings, start=None, end=None, apps=[], account=None, by="day", tz="UTC", fmt="csv")
        return text.splitlines()

    def plans() -> list[str]:
        return plans_text(settings, account=None, month="2026-11", tz="UTC", fmt="csv").splitlines()

    wait_until(lambda: usage() == usage_expected, 60, f"usage with agents columns (last: {usage()})")
    wait_until(lambda: plans()[1:] == [plans_expected], 60, f"the plans row (last: {plans()})")
    app = settings.app_id
    wait_until(
        lambda: (
            (
                committed(settings, f"{app}-sink-plans", settings.topics.plans),
                committed(settings, f"{app}-sink-transfers", settings.topics.transfers),
                committed(settings, f"{app}-sink-balances", settings.topics.balance_state),
            )
            == (len(PLANS), len(TRANSFERS), len(SNAPSHOTS))
        ),
        30,
        "every message's offset committed, skipped ones included",
    )
    print(f"plan sinks: produced to queryable and committed in {time.monotonic() - started:.1f} s")
