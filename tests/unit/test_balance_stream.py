"""The balance processor's pure part (``BalancePartition``), the entitlement read model and the notifier's signing.

No Kafka here: messages are built as the processor receives them (``Input``); the changelog
is the list of records ``take_changes`` returns, restored as the processor restores it. The
entitlement server runs on a real local socket.
"""

from __future__ import annotations

import hmac
import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from consumers.entitlement import EntitlementModel, EntitlementServer
from consumers.notifier import sign, verify, webhook_of
from pipeline.balance.ledger import BalanceConfig, Ledger
from pipeline.contract.events import AgentsSubscribed, BalanceSnapshot, ms_to_datetime
from pipeline.infra.kafka import partition_of
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings, SettingsError
from pipeline.rules.config import DAY, HOUR, MINUTE
from pipeline.rules.model import BillingSession
from pipeline.stream.balance_partition import BalancePartition, Input, Outputs, bucket_key, head_key
from pipeline.stream.records import billing_session_record, encode
from tests.balance_support import ACCOUNT, APP, funds, plan, session
from tests.support import T0, get_json

PARTITIONS = 6
PLANS = "billing-plans"
SESSIONS = "billing-sessions"
NOW = T0 + 30 * DAY
P = partition_of(APP.encode(), PARTITIONS)


def partition(config: BalanceConfig | None = None) -> BalancePartition:
    return BalancePartition(P, PARTITIONS, plans_topic=PLANS, sessions_topic=SESSIONS, config=config or BalanceConfig())


class Feed:
    """Numbered messages for one partition, as the consumer hands them over."""

    def __init__(self) -> None:
        self.offset = 0

    def plan_event(self, event: Any) -> Input:
        self.offset += 1
        return Input(PLANS, P, self.offset, msgspec.json.encode(event))

    def raw(self, value: bytes | None, topic: str = PLANS, partition_number: int = P) -> Input:
        self.offset += 1
        return Input(topic, partition_number, self.offset, value)

    def session(self, s: BillingSession) -> Input:
        self.offset += 1
        return Input(SESSIONS, P, self.offset, encode(billing_session_record(s)))


def run(part: BalancePartition, inputs: list[Input], now: int = NOW) -> Outputs:
    out = Outputs()
    for message in inputs:
        part.apply(message, now, out)
    return out


def restored(records: list[tuple[bytes, bytes | None]], config: BalanceConfig | None = None) -> BalancePartition:
    part = partition(config)
    part.restore(records, NOW)
    return part


# -- the changelog ---------------------------------------------------------------------------


def test_a_restored_partition_is_the_same_state_and_treats_every_replayed_input_as_a_copy() -> None:
    feed = Feed()
    inputs = [feed.plan_event(plan()), feed.plan_event(funds("60.00"))]
    inputs += [feed.session(session(f"s{k}", T0 + k * MINUTE)) for k in range(15)]
    first = partition()
    out = run(first, inputs)
    assert [a.state for a in out.alerts] == ["low"]
    _, records = first.take_changes(NOW, frozenset())

    again = restored(records)
    assert again.apps == first.apps
    replay = run(again, inputs)
    assert replay.alerts == []
    assert replay.charged == {}
    assert replay.duplicates == {"plan": 1, "funds": 1, "session": 15}
    assert again.take_changes(NOW, frozenset()) == ([], []), "copies change nothing"


def test_only_the_shards_a_batch_touched_are_written_and_settled_days_are_removed() -> None:
    feed = Feed()
    part = partition(BalanceConfig(dedupe_horizon_ms=2 * DAY))
    run(part, [feed.plan_event(plan()), feed.session(session("d0", T0))])
    _, records = part.take_changes(NOW, frozenset())
    day0, hour0 = (T0 + 15 * MINUTE) // DAY, T0 // HOUR
    assert [k for k, _ in records] == [head_key(APP), bucket_key(APP, day0, hour0)]

    run(part, [feed.session(session("d0b", T0 + 5 * MINUTE)), feed.session(session("d0c", T0 + 2 * HOUR))])
    _, records = part.take_changes(NOW, frozenset())
    assert [k for k, _ in records] == [head_key(APP), bucket_key(APP, day0, hour0), bucket_key(APP, day0, hour0 + 2)]
    assert msgspec.msgpack.decode(records[1][1] or b"").keys() == {"d0", "d0b"}, "the whole shard"

    run(part, [feed.session(session("d1", T0 + DAY))])
    _, records = part.take_changes(NOW, frozenset())
    assert [k for k, _ in records] == [head_key(APP), bucket_key(APP, day0 + 1, hour0 + 24)], "day 0 is unchanged"

    run(part, [feed.session(session("d3", T0 + 3 * DAY))])
    _, records = part.take_changes(NOW, frozenset())
    assert (bucket_key(APP, day0, hour0), None) in records, "day 0 is settled: tombstones"
    assert (bucket_key(APP, day0, hour0 + 2), None) in records


def test_a_held_session_priced_by_a_late_plan_is_written_to_its_shard() -> None:
    feed = Feed()
    part = partition()
    run(part, [feed.session(session("early", T0))])
    _, records = part.take_changes(NOW, frozenset())
    assert [k for k, _ in records] == [head_key(APP)], "held: in the head, no bucket yet"
    run(part, [feed.plan_event(plan(T0 - MINUTE))])
    _, more = part.take_changes(NOW, frozenset())
    day0 = (T0 + 15 * MINUTE) // DAY
    assert [k for k, _ in more] == [head_key(APP), bucket_key(APP, day0, T0 // HOUR)]
    assert restored(records + more).apps == part.apps


def test_restoring_the_whole_log_in_order_gives_the_latest_state() -> None:
    feed = Feed()
    part = partition(BalanceConfig(dedupe_horizon_ms=2 * DAY))
    log: list[tuple[bytes, bytes | None]] = []
    for k in range(6):
        run(part, [feed.session(session(f"s{k}", T0 + k * DAY))] + ([feed.plan_event(plan())] if k == 0 else []))
        log += part.take_changes(NOW, frozenset())[1]
    again = restored(log, BalanceConfig(dedupe_horizon_ms=2 * DAY))
    assert again.apps == part.apps
    assert sorted(again.apps[APP].balance.days) == sorted(part.apps[APP].balance.days)


# -- inputs ----------------------------------------------------------------------------------


def test_the_partition_agrees_with_the_ledger_and_reports_cost_and_reversals() -> None:
    feed = Feed()
    part = partition()
    sessions = [session(f"s{k}", T0 + k * 10 * MINUTE, ("usage", "alert", "voice")[k % 3]) for k in range(12)]
    later_plan = plan(T0 + 60 * MINUTE, usage="0.50", event_id="plan-2")
    out = run(part, [feed.plan_event(plan()), feed.plan_event(funds("100.00"))] + [feed.session(s) for s in sessions])
    out2 = run(part, [feed.plan_event(later_plan)])
    ledger = Ledger()
    ledger.apply_plan(plan())
    ledger.apply_funds(funds("100.00"))
    for s in sessions:
        ledger.charge(s)
    ledger.apply_plan(later_plan)
    assert part.apps[APP].balance == ledger.apps[APP]
    assert out.charged == {"usage": 4, "alert": 4, "voice": 4}
    assert out.cost == {("usage", "USD"): 4, ("alert", "USD"): Decimal("0.40"), ("voice", "USD"): 8}
    # usage sessions at 60, 90 min: re-priced from 1.00 to 0.50
    assert out2.reversed == {("usage", "USD"): 1}
    assert out2.cost == {}


def test_bad_plan_messages_become_dead_letters_with_their_reason() -> None:
    feed = Feed()
    part = partition()
    other = next(a for a in (f"app-{i}" for i in range(100)) if partition_of(a.encode(), PARTITIONS) != P)
    turn = {
        "type": "conversation_turn",
        "event_id": "e",
        "occurred_at": "2026-11-01T10:00:00Z",
        "account_id": "a",
        "app_id": APP,
        "conversation_id": "c",
        "user_id": "u",
        "channel": "web",
        "speaker": "user",
    }
    out = run(
        part,
        [
            feed.raw(b"not json"),
            feed.raw(None),
            feed.raw(
                json.dumps(
                    {
                        "type": "funds_added",
                        "event_id": "f",
                        "occurred_at": "2026-11-01T10:00:00Z",
                        "account_id": "a",
                        "app_id": APP,
                        "amount": "-5.00",
                    }
                ).encode()
            ),
            feed.raw(json.dumps(turn).encode()),
            feed.plan_event(funds("5.00", app_id=other)),
            feed.raw(b'{"billing_session_id": 3}', topic=SESSIONS),
        ],
    )
    assert [(d.code, d.source_topic, d.source_offset) for d in out.dead] == [
        ("not_json", PLANS, 1),
        ("not_json", PLANS, 2),
        ("schema", PLANS, 3),
        ("wrong_topic", PLANS, 4),
        ("misrouted", PLANS, 5),
        ("schema", SESSIONS, 6),
    ]
    assert "amount must be greater than zero" in out.dead[2].reason
    assert out.invalid == {
        (PLANS, "not_json"): 2,
        (PLANS, "schema"): 1,
        (PLANS, "wrong_topic"): 1,
        (PLANS, "misrouted"): 1,
        (SESSIONS, "schema"): 1,
    }
    assert part.apps == {}


def test_a_session_on_a_settled_day_goes_to_the_late_topic_uncharged() -> None:
    feed = Feed()
    part = partition(BalanceConfig(dedupe_horizon_ms=2 * DAY))
    run(part, [feed.plan_event(plan()), feed.session(session("new", T0 + 5 * DAY))])
    out = run(part, [feed.session(session("old", T0))])
    assert [(r.event_id, r.source_topic, r.source_offset) for r in out.late] == [("old", SESSIONS, 3)]
    assert out.charged == {}
    assert part.apps[APP].balance.counters.sessions_late == 1


# -- snapshots -------------------------------------------------------------------------------


def test_a_snapshot_carries_the_balance_in_the_latest_plans_currency_and_the_seats() -> None:
    feed = Feed()
    part = partition()
    seats = AgentsSubscribed(event_id="a1", occurred_at=ms_to_datetime(T0), account_id=ACCOUNT, app_id=APP, agents=4)
    run(
        part,
        [
            feed.plan_event(plan(threshold="10.00")),
            feed.plan_event(funds("12.50")),
            feed.plan_event(funds("3.00", event_id="eur", currency="EUR")),
            feed.plan_event(seats),
            feed.session(session("s1", T0 + MINUTE)),
        ],
    )
    [snap], _ = part.take_changes(NOW, frozenset())
    assert (snap.funds, snap.usage_cost, snap.balance, snap.threshold, snap.status, snap.currency) == (
        "12.50",
        "1.00",
        "11.50",
        "10.00",
        "active",
        "USD",
    )
    assert (snap.entitled, snap.agents, snap.version, snap.plan, snap.account_id) == (True, 4, 5, "starter", ACCOUNT)


def test_a_future_plan_without_prepaid_limit_entitles_the_app_when_it_comes_into_force() -> None:
    feed = Feed()
    part = partition()
    starts = NOW + 3_600_000
    run(part, [feed.plan_event(plan(T0)), feed.plan_event(plan(starts, event_id="p2", name="enterprise"))], now=NOW)
    [before], _ = part.take_changes(NOW, frozenset({"enterprise"}))
    assert not before.entitled, "never funded, on a prepaid plan until then"
    assert not part.has_due(starts - 1)
    assert part.has_due(starts)
    part.due(starts, Outputs())
    [after], _ = part.take_changes(starts, frozenset({"enterprise"}))
    assert after.entitled
    assert after.version == before.version + 1


# -- entitlement read model ------------------------------------------------------------------


def snapshot_bytes(app_id: str, balance: str, entitled: bool, version: int) -> bytes:
    snap = BalanceSnapshot(
        account_id=ACCOUNT,
        app_id=app_id,
        plan="starter",
        currency="USD",
        funds="10.00",
        usage_cost="0.00",
        alert_cost="0.00",
        voice_cost="0.00",
        usage_sessions=0,
        alert_sessions=0,
        voice_sessions=0,
        unpriced_sessions=0,
        balance=balance,
        threshold="50.00",
        status="low" if entitled else "depleted",
        entitled=entitled,
        agents=0,
        version=version,
        updated_at=ms_to_datetime(NOW),
    )
    return msgspec.json.encode(snap)


def test_the_entitlement_endpoint_answers_from_the_latest_snapshot() -> None:
    model = EntitlementModel()
    server = EntitlementServer(model, "127.0.0.1", 0).start()
    try:
        url = f"{server.url}/v1/entitlement/"
        assert get_json(url + "a")[0] == 503, "not loaded yet"
        model.apply(b"a", snapshot_bytes("a", "10.00", True, 1))
        model.apply(b"a", snapshot_bytes("a", "-1.00", False, 2))
        model.apply(b"b", snapshot_bytes("b", "5.00", True, 1))
        model.apply(b"b", None)
        model.apply(b"c", b"garbage")
        model.ready.set()
        assert get_json(url + "a") == (
            200,
            {
                "app_id": "a",
                "entitled": False,
                "status": "depleted",
                "balance": "-1.00",
                "currency": "USD",
                "as_of": "2026-12-01T10:00:00.000Z",
            },
        )
        status, body = get_json(url + "b")
        assert (status, body["entitled"], body["status"], body["as_of"]) == (404, False, "unknown", None)
        assert get_json(url + "c")[0] == 404
        assert model.invalid == 1
        assert get_json(f"{server.url}/v1/other")[0] == 404
        assert get_json(f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()


def test_every_entitlement_answer_is_counted_by_what_it_says() -> None:
    """metering_entitlement_answers_total{answer}: the balances dashboard's "Entitlement answers"."""

    def answered() -> dict[str, float]:
        return {
            answer: REGISTRY.get_sample_value("metering_entitlement_answers_total", {"answer": answer}) or 0.0
            for answer in ("entitled", "not_entitled", "unknown", "loading")
        }

    model = EntitlementModel()
    before = answered()
    model.lookup("a")
    model.apply(b"a", snapshot_bytes("a", "10.00", True, 1))
    model.apply(b"d", snapshot_bytes("d", "-1.00", False, 1))
    model.ready.set()
    for app in ("a", "a", "d", "nobody"):
        model.lookup(app)
    model.apply(b"a", snapshot_bytes("a", "-2.00", False, 2))
    model.lookup("a")
    after = answered()
    assert {k: after[k] - before[k] for k in after} == {"entitled": 2, "not_entitled": 2, "unknown": 1, "loading": 1}


# -- notifier --------------------------------------------------------------------------------


def test_the_signature_is_the_hmac_sha256_of_the_body() -> None:
    body = b'{"alert_event_id":"x"}'
    assert sign("secret", body) == "sha256=" + hmac.new(b"secret", body, "sha256").hexdigest()
    assert verify("secret", body, sign("secret", body))
    assert not verify("secret", body + b" ", sign("secret", body))
    assert not verify("other", body, sign("secret", body))


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(initial=0.5, maximum=4.0, jitter=0.2)
    assert [b.delay(n, rand=lambda: 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(3, rand=lambda: 1.0) == pytest.approx(1.6)


def test_a_webhook_url_without_a_secret_is_refused() -> None:
    assert webhook_of(Settings()) is None
    with pytest.raises(SettingsError, match="METERING_WEBHOOK_SECRET is empty"):
        webhook_of(Settings(webhook_url="https://hooks.example.com/x"))
    hook = webhook_of(Settings(webhook_url="https://hooks.example.com/x", webhook_secret="s"))
    assert hook is not None
    assert hook.url == "https://hooks.example.com/x"
