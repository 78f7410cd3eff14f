"""PartitionMeter: one partition's raw Kafka messages in; billing sessions, late records, dead letters
and state changes out. No broker: the messages are built here, with the offsets Kafka would give.

The meter under test reads the turns and transfers topics (keyed by conversation id) and the
alerts topic (keyed by app id) of partition ``PARTITION`` of ``PARTITIONS``; every key used is
chosen so that the Java murmur2 partitioner puts it there, unless the test is about one that
does not. The reference is ``Meter`` over the events sorted by time (``tests.support.meter_run``).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.events import BillingSessionRecord, DeadLetter, format_ms, ms_to_datetime
from pipeline.infra.kafka import partition_of
from pipeline.rules.config import DAY, MINUTE, SECOND, IdleTimeouts, RulesConfig
from pipeline.rules.meter import LATE_CLOCK, LATE_FINAL, NEVER
from pipeline.stream.partition import CLOCK_KEY, BatchResult, Message, PartitionMeter
from pipeline.stream.records import billing_session_record, encode
from tests.support import GAPS, T0, Conversation, alert, decode, in_time_order, meter_run

PARTITIONS = 6
PARTITION = 5
TURNS, TRANSFERS, ALERTS = "turns-topic", "transfers-topic", "alerts-topic"
TOPIC_OF = {"conversation_turn": TURNS, "agent_transfer": TRANSFERS, "alert_delivered": ALERTS}

CONFIG = RulesConfig()
LATENESS = CONFIG.allowed_lateness_ms
SKEW = 5 * MINUTE
IDLE_AFTER = 30 * SECOND
#: The wall clock of a replay: well after every event.
NOW = T0 + 2 * DAY
#: Wall-clock time long after the end of input, when every session is final.
END = NOW + 30 * DAY


def keys(prefix: str, count: int, *, here: bool = True) -> list[str]:
    """``count`` keys ``prefix-i`` that murmur2 puts on PARTITION (or, with ``here=False``, elsewhere)."""
    candidates = (f"{prefix}-{i}" for i in itertools.count())
    found = (k for k in candidates if (partition_of(k.encode(), PARTITIONS) == PARTITION) == here)
    return list(itertools.islice(found, count))


CONVERSATIONS = keys("conv", 8)
APPS = ["support-bot", "sales-bot"]  # alerts are keyed by app id: both hash to PARTITION
ELSEWHERE_CONVERSATION = keys("conv", 1, here=False)[0]
ELSEWHERE_APP = "faq-bot"
assert all(partition_of(a.encode(), PARTITIONS) == PARTITION for a in APPS)
assert partition_of(ELSEWHERE_APP.encode(), PARTITIONS) != PARTITION


class Log:
    """The partition's topics: each message gets the next offset of its topic."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def message(self, value: dict[str, Any] | bytes, topic: str | None = None) -> Message:
        if isinstance(value, dict):
            topic = topic or TOPIC_OF[value["type"]]
            value = json.dumps(value).encode()
        assert topic is not None
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return Message(topic, PARTITION, offset, value)

    def messages(self, events: Iterable[dict[str, Any]]) -> list[Message]:
        return [self.message(ev) for ev in events]


def new_meter(config: RulesConfig = CONFIG) -> PartitionMeter:
    return PartitionMeter(
        PARTITION,
        PARTITIONS,
        config,
        IdleTimeouts(config),
        conversation_topics=(TURNS, TRANSFERS),
        alert_topics=(ALERTS,),
    )


def restored(store: dict[str, bytes], config: RulesConfig = CONFIG) -> PartitionMeter:
    meter = new_meter(config)
    meter.restore(store.items())
    return meter


def persist(store: dict[str, bytes], result: BatchResult) -> None:
    """What the table does with a batch's changes: upsert, or delete on None."""
    for key, value in result.changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def finish(meter: PartitionMeter) -> list[BillingSessionRecord]:
    """Idle ticks long after the end of input (a fresh meter first waits IDLE_AFTER): all final."""
    sessions = meter.idle_tick(END, IDLE_AFTER, backlog=False).sessions
    sessions += meter.idle_tick(END + IDLE_AFTER, IDLE_AFTER, backlog=False).sessions
    return sessions


def expected(events: Iterable[dict[str, Any]], config: RulesConfig = CONFIG) -> list[BillingSessionRecord]:
    """The batch result: Meter over the events sorted by time, as billing-session records."""
    return by_id(billing_session_record(s) for s in meter_run(in_time_order(events), config))


def by_id(records: Iterable[BillingSessionRecord]) -> list[BillingSessionRecord]:
    return sorted(records, key=lambda r: r.billing_session_id)


def mmss(ms: int) -> str:
    """A builder offset ("mm:ss.fff") of ``ms`` milliseconds."""
    return f"{ms // MINUTE}:{(ms % MINUTE) / 1000:06.3f}"


def clock(meter: PartitionMeter) -> int:
    return meter.meter.partition.clock


# -- generated traffic --------------------------------------------------------------------


@st.composite
def conversation(draw: st.DrawFn, conversation_id: str) -> list[dict[str, Any]]:
    c = Conversation(
        conversation_id,
        app_id=draw(st.sampled_from(APPS)),
        channel=draw(st.sampled_from(["web", "web", "whatsapp", "voice"])),
        start=T0 + draw(st.integers(0, 30 * MINUTE)),
    )
    t = 0
    for i in range(draw(st.integers(1, 8))):
        t += draw(GAPS) if i else 0
        what = draw(st.sampled_from(["user", "user", "bot", "bot", "agent", "started", "ended"]))
        if what in ("started", "ended"):
            c.transfer(what, mmss(t))
        else:
            flags = {}
            if draw(st.integers(0, 9)) == 0:
                flags["end_of_conversation"] = True
            if draw(st.integers(0, 29)) == 0:
                flags["is_test"] = True
            c.turn(what, mmss(t), **flags)
    return c.events


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Conversations and alerts of this partition, in time order (the order of a replay)."""
    events: list[dict[str, Any]] = []
    for conversation_id in CONVERSATIONS[: draw(st.integers(1, 4))]:
        events.extend(draw(conversation(conversation_id)))
    for _ in range(draw(st.integers(0, 3))):
        offset = mmss(draw(st.integers(0, 120 * MINUTE)))
        events.append(alert(offset, app_id=draw(st.sampled_from(APPS)), is_test=draw(st.integers(0, 9)) == 0))
    return in_time_order(events)


@st.composite
def within_lateness(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An arrival order no event of which is older than the clock minus the allowed lateness."""
    times = [json_time(ev) for ev in events]
    delays = draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    return [events[i] for i in sorted(range(len(events)), key=lambda i: times[i] + delays[i])]


@st.composite
def with_redeliveries(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` with some of them sent again later (producer retries): the same bytes twice."""
    out = list(events)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(events) - 1))
        out.insert(draw(st.integers(out.index(events[i]) + 1, len(out))), events[i])
    return out


@st.composite
def batches(draw: st.DrawFn, messages: Sequence[Message]) -> list[list[Message]]:
    """``messages`` cut into consecutive batches of any sizes."""
    cuts = draw(st.lists(st.booleans(), min_size=len(messages), max_size=len(messages)))
    out: list[list[Message]] = [[]]
    for m, cut in zip(messages, cuts, strict=True):
        out[-1].append(m)
        if cut:
            out.append([])
    return [b for b in out if b]


def json_time(event: dict[str, Any]) -> int:
    return decode(event)[0]


fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- (a) replay in batches ----------------------------------------------------------------


@fast
@given(st.data())
def test_a_replay_in_batches_of_any_size_bills_as_the_batch_run_over_sorted_events(data: st.DataObject) -> None:
    events = data.draw(traffic())
    meter = new_meter()
    sessions: list[BillingSessionRecord] = []
    for batch in data.draw(batches(Log().messages(events))):
        result = meter.process(batch, NOW, SKEW)
        assert (result.late, result.dead, result.duplicates) == ([], [], {})
        sessions += result.sessions
    sessions += finish(meter)
    assert by_id(sessions) == expected(events)
    assert len({s.billing_session_id for s in sessions}) == len(sessions), "a session was emitted twice"


def test_a_replay_one_batch_or_one_message_at_a_time_gives_the_same_records() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1).transfer("started", 2).agent(30).transfer("ended", 31).user(40)
    b = Conversation(CONVERSATIONS[1], channel="voice").user(5).bot(20).user(36, end_of_conversation=True)
    events = in_time_order([*a.events, *b.events, alert(3), alert(50, app_id="sales-bot")])
    want = expected(events)
    assert len(want) >= 4
    for size in (1, 2, 3, len(events)):
        meter, log, sessions = new_meter(), Log(), []
        messages = log.messages(events)
        for i in range(0, len(messages), size):
            sessions += meter.process(messages[i : i + size], NOW, SKEW).sessions
        assert by_id(sessions + finish(meter)) == want, size


# -- (b) dead letters ---------------------------------------------------------------------

PLAN = {
    "type": "plan_changed",
    "event_id": "plan-1",
    "occurred_at": format_ms(T0),
    "account_id": "acme",
    "app_id": "support-bot",
    "plan": "pro",
    "price_per_usage_session": "0.10",
    "price_per_alert_session": "0.02",
    "price_per_voice_session": "0.25",
}
MISROUTED = partition_of(ELSEWHERE_CONVERSATION.encode(), PARTITIONS)
MISROUTED_APP = partition_of(ELSEWHERE_APP.encode(), PARTITIONS)


def _bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


#: (name, topic, payload, code, what the reason must say)
BAD_CASES: list[tuple[str, str, bytes, str, list[str]]] = [
    ("garbage", TURNS, b"{not json at all", "not_json", ["JSON"]),
    ("not-utf-8", TURNS, b'{"type": "conversation_turn", "app_id": "\xff\xfe"}', "not_json", ["utf-8"]),
    ("plan-on-turns", TURNS, _bytes(PLAN), "wrong_topic", ["does not belong", repr(TURNS)]),
    ("alert-on-turns", TURNS, _bytes(alert(1)), "wrong_topic", ["does not belong", repr(TURNS)]),
    (
        "turn-on-alerts",
        ALERTS,
        _bytes(Conversation(CONVERSATIONS[2]).user(1).events[0]),
        "wrong_topic",
        ["does not belong", repr(ALERTS)],
    ),
    (
        "transfer-on-alerts",
        ALERTS,
        _bytes(Conversation(CONVERSATIONS[2]).transfer("started", 1).events[0]),
        "wrong_topic",
        ["does not belong", repr(ALERTS)],
    ),
    (
        "misrouted-turn",
        TURNS,
        _bytes(Conversation(ELSEWHERE_CONVERSATION).user(1).events[0]),
        "misrouted",
        [repr(ELSEWHERE_CONVERSATION), f"belongs on partition {MISROUTED}, not {PARTITION}", "murmur2"],
    ),
    (
        "misrouted-transfer",
        TRANSFERS,
        _bytes(Conversation(ELSEWHERE_CONVERSATION).transfer("started", 1).events[0]),
        "misrouted",
        [repr(ELSEWHERE_CONVERSATION), f"belongs on partition {MISROUTED}, not {PARTITION}", "murmur2"],
    ),
    (
        "misrouted-alert",
        ALERTS,
        _bytes(alert(1, app_id=ELSEWHERE_APP)),
        "misrouted",
        [repr(ELSEWHERE_APP), f"belongs on partition {MISROUTED_APP}, not {PARTITION}", "murmur2"],
    ),
]
BAD = [pytest.param(*case[1:], id=case[0]) for case in BAD_CASES]


def valid_traffic() -> list[dict[str, Any]]:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1).user(20)
    return in_time_order([*a.events, alert(2)])


@pytest.mark.parametrize(("topic", "payload", "code", "hints"), BAD)
def test_b_a_bad_message_is_one_dead_letter_and_valid_events_around_it_are_unaffected(
    topic: str, payload: bytes, code: str, hints: list[str]
) -> None:
    log = Log()
    good = valid_traffic()
    before = log.messages(good[:2])
    bad = log.message(payload, topic)
    after = log.messages(good[2:])
    meter = new_meter()

    result = meter.process([*before, bad, *after], NOW, SKEW)

    assert len(result.dead) == 1
    letter = result.dead[0]
    assert letter.code == code
    assert base64.b64decode(letter.payload_base64) == payload
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, PARTITION, bad.offset)
    assert letter.received_at == ms_to_datetime(NOW)
    assert letter.reason.startswith(f"{code}: ")
    for hint in hints:
        assert hint in letter.reason
    assert result.invalid == {(topic, code): 1}
    assert result.stats.events == len(good), "a rejected message reached the rules engine"
    assert sum(result.received.values()) == len(good) + 1
    assert by_id(result.sessions + finish(meter)) == expected(good)


@pytest.mark.parametrize(
    ("event", "topic"),
    [(PLAN, TURNS), (alert(1), TURNS), (Conversation(CONVERSATIONS[2]).user(1).events[0], ALERTS)],
    ids=["plan-on-turns", "alert-on-turns", "turn-on-alerts"],
)
def test_b_a_wrong_topic_reason_names_the_type_and_where_to_produce_it(event: dict[str, Any], topic: str) -> None:
    [letter] = new_meter().process([Log().message(event, topic)], NOW, SKEW).dead
    assert letter.code == "wrong_topic"
    assert event["type"] in letter.reason, "the contract's type name (docs/events.md)"
    assert "produce" in letter.reason, "what to do: the topic its type belongs on"


def test_b_every_bad_message_in_a_mixed_replay_is_dead_lettered_once() -> None:
    good = in_time_order(valid_traffic() + Conversation(CONVERSATIONS[3], channel="voice").user(3).bot(9).events)
    bad = [(topic, payload, code) for _, topic, payload, code, _ in BAD_CASES]
    log = Log()
    stream: list[tuple[Message, str | None]] = []
    for i in range(max(len(good), len(bad))):
        if i < len(good):
            stream.append((log.message(good[i]), None))
        if i < len(bad):
            topic, payload, code = bad[i]
            stream.append((log.message(payload, topic), code))
    meter = new_meter()
    dead: list[DeadLetter] = []
    sessions: list[BillingSessionRecord] = []
    for i in range(0, len(stream), 4):
        result = meter.process([m for m, _ in stream[i : i + 4]], NOW, SKEW)
        dead += result.dead
        sessions += result.sessions
    sessions += finish(meter)

    want = {(m.topic, m.offset): code for m, code in stream if code is not None}
    assert {(d.source_topic, d.source_offset): d.code for d in dead} == want
    assert len(dead) == len(want)
    assert by_id(sessions) == expected(good)


# -- (c) persistence ----------------------------------------------------------------------


def run_straight(
    batches: Sequence[Sequence[Message]], now: int = NOW, config: RulesConfig = CONFIG
) -> list[BillingSessionRecord]:
    meter = new_meter(config)
    sessions = [s for b in batches for s in meter.process(b, now, SKEW).sessions]
    return sessions + finish(meter)


def run_with_crash(
    batches: Sequence[Sequence[Message]], crash: int, *, lost: bool, now: int = NOW, config: RulesConfig = CONFIG
) -> list[BillingSessionRecord]:
    """Crash after batch ``crash``; with ``lost`` its state changes never reached the table, so
    Kafka redelivers it to the restored meter. Every emitted record counts: they were produced."""
    store: dict[str, bytes] = {}
    meter = new_meter(config)
    emitted: list[BillingSessionRecord] = []
    for i, batch in enumerate(batches[: crash + 1]):
        result = meter.process(batch, now, SKEW)
        emitted += result.sessions
        if not (lost and i == crash):
            persist(store, result)
    meter = restored(store, config)
    for batch in batches[crash if lost else crash + 1 :]:
        emitted += meter.process(batch, now, SKEW).sessions
    return emitted + finish(meter)


def run_restarting_every_batch(batches: Sequence[Sequence[Message]]) -> list[BillingSessionRecord]:
    store: dict[str, bytes] = {}
    emitted: list[BillingSessionRecord] = []
    for batch in batches:
        result = restored(store).process(batch, NOW, SKEW)
        emitted += result.sessions
        persist(store, result)
    return emitted + finish(restored(store))


def assert_nothing_lost(emitted: list[BillingSessionRecord], want: list[BillingSessionRecord], what: str) -> None:
    wanted = {r.billing_session_id: r for r in want}
    assert {r.billing_session_id for r in emitted} == wanted.keys(), what
    for r in emitted:
        assert r == wanted[r.billing_session_id], f"{what}: a repeated record differs from the first"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_c_restoring_from_the_changes_after_any_batch_continues_as_if_never_stopped(data: st.DataObject) -> None:
    events = data.draw(traffic())
    arrival = data.draw(with_redeliveries(data.draw(within_lateness(events))))
    cut = data.draw(batches(Log().messages(arrival)))
    want = expected(events)
    straight = run_straight(cut)
    assert by_id(straight) == want
    for crash in range(len(cut)):
        for lost in (False, True):
            assert_nothing_lost(run_with_crash(cut, crash, lost=lost), want, f"crash after batch {crash}, lost={lost}")
    assert by_id(run_restarting_every_batch(cut)) == want


def test_c_a_batch_changes_its_conversations_alerts_and_the_clock() -> None:
    result = new_meter().process(Log().messages(valid_traffic()), NOW, SKEW)
    assert CLOCK_KEY in result.changes
    assert all(v is not None for v in result.changes.values())
    assert {k.split("\x1f")[0] for k in result.changes} == {"c", "a", CLOCK_KEY}


def test_c_a_conversation_forgotten_after_the_dedupe_horizon_is_deleted_from_the_store() -> None:
    short = RulesConfig(dedupe_horizon_ms=0)  # forgotten one allowed lateness after its last session
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    b = Conversation(CONVERSATIONS[1]).user(30).bot(31)
    c = Conversation(CONVERSATIONS[2]).user(60)
    log = Log()
    meter = new_meter(short)
    store: dict[str, bytes] = {}
    for events in (a.events, b.events, c.events):
        persist(store, meter.process(log.messages(events), NOW, SKEW))
    a_key = f"c\x1fsupport-bot\x1f{CONVERSATIONS[0]}"
    assert a_key not in store
    assert a_key not in meter.meter.conversations


def returning_after_a_week() -> tuple[RulesConfig, list[list[dict[str, Any]]], int]:
    """A conversation id used again 8 days later (past lateness + the 7-day dedupe horizon)."""
    first = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    other = Conversation(CONVERSATIONS[1]).user(60).bot(61)  # makes the first session final
    back = Conversation(CONVERSATIONS[0], start=T0 + 8 * DAY).user(0).bot(1)
    return CONFIG, [first.events, other.events, back.events], T0 + 9 * DAY


def returning_after_its_end_without_a_dedupe_horizon() -> tuple[RulesConfig, list[list[dict[str, Any]]], int]:
    """METERING_DEDUPE_HORIZON_DAYS=0: a user comes back 2 min after end_of_conversation, all in one batch."""
    c = Conversation(CONVERSATIONS[0]).user(0).bot("0:30", end_of_conversation=True)
    other = Conversation(CONVERSATIONS[1]).user(2)  # makes c's session final: c is forgotten a minute later
    back = Conversation(CONVERSATIONS[0]).user(3).bot(4)
    return RulesConfig(dedupe_horizon_ms=0), [[*c.events, *other.events, *back.events]], NOW


@pytest.mark.parametrize("scenario", [returning_after_a_week, returning_after_its_end_without_a_dedupe_horizon])
def test_c_a_conversation_forgotten_and_back_in_one_batch_survives_a_restart(scenario: Any) -> None:
    config, plan, now = scenario()
    log = Log()
    cut = [log.messages(events) for events in plan]
    want = expected([ev for events in plan for ev in events], config)
    assert len(want) >= 2
    assert by_id(run_straight(cut, now, config)) == want
    for crash in range(len(cut)):
        for lost in (False, True):
            emitted = run_with_crash(cut, crash, lost=lost, now=now, config=config)
            assert_nothing_lost(emitted, want, f"crash after batch {crash}, {lost=}")


# -- (d) late events ----------------------------------------------------------------------


def test_d_an_event_older_than_the_clock_minus_the_lateness_is_a_late_record() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(30)  # the clock reaches T0 + 30 min
    late = Conversation(CONVERSATIONS[1]).user("28:59.999")  # 1 ms older than clock - lateness
    on_time = Conversation(CONVERSATIONS[2]).user("29:00")  # exactly clock - lateness
    log = Log()
    meter = new_meter()
    first = meter.process(log.messages(a.events), NOW, SKEW)
    assert clock(meter) == T0 + 30 * MINUTE
    late_message = log.message(late.events[0])

    result = meter.process([late_message, *log.messages(on_time.events)], NOW, SKEW)

    [record] = result.late
    assert record.reason == LATE_CLOCK
    assert bytes(record.event) == late_message.value
    assert (record.app_id, record.event_id) == ("support-bot", late.events[0]["event_id"])
    assert record.occurred_at == ms_to_datetime(T0 + 29 * MINUTE - 1)
    assert record.partition_clock == ms_to_datetime(T0 + 30 * MINUTE)
    source = (record.source_topic, record.source_partition, record.source_offset)
    assert source == (late_message.topic, late_message.partition, late_message.offset) == (TURNS, PARTITION, 2)
    assert json.loads(encode(record))["event"] == late.events[0]
    assert result.late_by_topic == {TURNS: 1}
    assert result.stats.late == 1
    assert result.dead == []
    assert by_id(first.sessions + result.sessions + finish(meter)) == expected(a.events + on_time.events)


def test_d_an_event_that_would_change_a_final_session_is_late() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    b = Conversation(CONVERSATIONS[1]).user(20)  # clock T0 + 20 min: a's session (due 1 + 15 + 1) is final
    log = Log()
    meter = new_meter()
    sessions = meter.process(log.messages(a.events + b.events), NOW, SKEW).sessions
    assert by_id(sessions) == expected(a.events)
    a.bot("0:30")
    result = meter.process([log.message(a.events[-1])], NOW, SKEW)
    [record] = result.late
    assert record.reason == LATE_FINAL
    assert record.partition_clock == ms_to_datetime(T0 + 20 * MINUTE)
    assert result.sessions == []


# -- (e) the clock of several input topics -------------------------------------------------


def lagging_scenario(lagging: list[str]) -> tuple[list[BatchResult], PartitionMeter, list[dict[str, Any]]]:
    """Turns of T0..T0+5 min are read slowly; the transfers topic has got to T0 + 2 h."""
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    ahead = Conversation(CONVERSATIONS[1]).transfer("started", 120).transfer("ended", 125)
    c = Conversation(CONVERSATIONS[2]).user(2).bot(3)
    a.user(5)
    log = Log()
    meter = new_meter()
    plan = [a.events[:2], ahead.events, [*c.events, a.events[2]]]
    results = [meter.process(log.messages(batch), NOW, SKEW, lagging=lagging) for batch in plan]
    return results, meter, [*a.events, *ahead.events, *c.events]


def test_e_a_topic_far_ahead_does_not_make_a_lagging_topics_events_late() -> None:
    results, meter, events = lagging_scenario([TURNS])
    assert [r.late for r in results] == [[], [], []]
    assert clock(meter) == T0 + 5 * MINUTE, "the clock follows the lagging turns, not the transfers"
    sessions = [s for r in results for s in r.sessions]
    assert by_id(sessions + finish(meter)) == expected(events)


def test_e_without_a_lagging_topic_the_same_traffic_makes_the_turns_late() -> None:
    results, meter, _ = lagging_scenario([])
    assert clock(meter) == T0 + 125 * MINUTE
    assert [r.reason for r in results[2].late] == [LATE_CLOCK, LATE_CLOCK, LATE_FINAL]


def test_e_a_lagging_topic_not_seen_since_load_holds_the_clock_where_it_is() -> None:
    log = Log()
    meter = new_meter()
    ahead = Conversation(CONVERSATIONS[1]).transfer("started", 120).events
    meter.process(log.messages(ahead), NOW, SKEW, lagging=[TURNS])
    assert clock(meter) == NEVER
    meter.process(log.messages(Conversation(CONVERSATIONS[0]).user(0).events), NOW, SKEW, lagging=[TURNS])
    assert clock(meter) == T0


def test_e_the_clock_never_passes_the_wall_clock_plus_the_skew() -> None:
    now = T0 + 10 * MINUTE
    a = Conversation(CONVERSATIONS[0]).user(0).bot(2)  # due at T0 + 18 min, past the ceiling now + skew
    future = Conversation(CONVERSATIONS[1]).user(180)  # stamped hours ahead (valid: under 24 h)
    meter = new_meter()
    result = meter.process(Log().messages(a.events + future.events), now, SKEW)
    assert clock(meter) == now + SKEW
    assert meter.meter.partition.high_water == T0 + 180 * MINUTE
    assert result.sessions == [], "one event from the future finalized a session early"


# -- (f) idle ticks -----------------------------------------------------------------------


def live() -> tuple[PartitionMeter, list[dict[str, Any]], int]:
    """A live partition: turns at T0 and T0 + 4 min, received at T0 + 5 min; due at T0 + 20 min."""
    a = Conversation(CONVERSATIONS[0]).user(0).bot(4)
    meter = new_meter()
    wall = T0 + 5 * MINUTE
    assert meter.process(Log().messages(a.events), wall, SKEW).sessions == []
    return meter, a.events, wall


def test_f_with_a_backlog_the_clock_does_not_follow_the_wall_clock() -> None:
    meter, _, wall = live()
    for later in (wall + IDLE_AFTER, T0 + 30 * MINUTE, T0 + DAY):
        result = meter.idle_tick(later, IDLE_AFTER, backlog=True)
        assert result.sessions == []
        assert clock(meter) == T0 + 4 * MINUTE
        assert not meter.meter.partition.idle


def test_f_without_a_backlog_after_idle_after_the_clock_follows_the_wall_clock_and_finalizes() -> None:
    meter, events, wall = live()
    assert meter.idle_tick(wall + IDLE_AFTER - 1, IDLE_AFTER, backlog=False).sessions == []
    assert clock(meter) == T0 + 4 * MINUTE, "not idle yet"
    assert meter.idle_tick(wall + IDLE_AFTER, IDLE_AFTER, backlog=False).sessions == []
    assert clock(meter) == wall + IDLE_AFTER
    assert meter.meter.partition.idle
    result = meter.idle_tick(T0 + 21 * MINUTE, IDLE_AFTER, backlog=False)
    assert clock(meter) == T0 + 21 * MINUTE
    assert by_id(result.sessions) == expected(events)
    assert result.stats.sessions_final == 1
    assert result.changes[CLOCK_KEY] is not None


def test_f_after_a_backlog_clears_the_partition_must_stay_quiet_for_idle_after() -> None:
    meter, _, _ = live()
    meter.idle_tick(T0 + 30 * MINUTE, IDLE_AFTER, backlog=True)
    assert meter.idle_tick(T0 + 30 * MINUTE + IDLE_AFTER - 1, IDLE_AFTER, backlog=False).sessions == []
    assert len(meter.idle_tick(T0 + 30 * MINUTE + IDLE_AFTER, IDLE_AFTER, backlog=False).sessions) == 1


def test_f_the_first_event_after_an_idle_spell_sets_the_clock_back_to_event_time() -> None:
    meter, _, _ = live()
    meter.idle_tick(T0 + 10 * MINUTE, IDLE_AFTER, backlog=False)
    assert clock(meter) == T0 + 10 * MINUTE
    b = Conversation(CONVERSATIONS[1]).user(6)  # 4 min behind the wall clock: not late on event time
    result = meter.process(Log().messages(b.events), T0 + 10 * MINUTE, SKEW)
    assert result.late == []
    assert clock(meter) == T0 + 6 * MINUTE
    assert not meter.meter.partition.idle


# -- (g) duplicates -----------------------------------------------------------------------


def test_g_duplicates_across_batches_are_counted_and_not_billed() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1).user(2)
    notice = alert(3)
    log = Log()
    meter = new_meter()
    first = meter.process(log.messages([*a.events, notice]), NOW, SKEW)
    assert len(first.sessions) == 1  # the alert
    again = meter.process(log.messages([a.events[1], notice, a.events[0]]), NOW, SKEW)
    assert again.duplicates == {TURNS: 2, ALERTS: 1}
    assert again.stats.duplicates == 3
    assert (again.sessions, again.late, again.dead) == ([], [], [])
    sessions = first.sessions + finish(meter)
    assert by_id(sessions) == expected([*a.events, notice])


def test_g_a_duplicate_of_a_final_session_is_a_duplicate_not_late() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    b = Conversation(CONVERSATIONS[1]).user(30)  # a's session is final
    log = Log()
    meter = new_meter()
    sessions = meter.process(log.messages(a.events + b.events), NOW, SKEW).sessions
    assert len(sessions) == 1
    again = meter.process(log.messages(a.events), NOW, SKEW)
    assert again.duplicates == {TURNS: 2}
    assert (again.sessions, again.late) == ([], [])


def test_g_a_duplicate_redelivered_after_a_restart_is_still_a_duplicate() -> None:
    a = Conversation(CONVERSATIONS[0]).user(0).bot(1)
    log = Log()
    store: dict[str, bytes] = {}
    persist(store, new_meter().process(log.messages(a.events), NOW, SKEW))
    again = restored(store).process(log.messages(a.events), NOW, SKEW)
    assert again.duplicates == {TURNS: 2}
