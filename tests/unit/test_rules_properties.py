"""Properties of the rules engine over generated traffic (hypothesis).

The central one: the stream's result equals a batch run over the events it accepted, for any
arrival order, batching, restarts and idle spells; within the allowed lateness it accepts all.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.events import format_ms
from pipeline.rules.billing import conversation_session_id
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.rules.meter import ClockWire, ConversationState, ConversationWire, Meter, Outcome, PartitionClock
from pipeline.rules.model import BillingSession
from tests.support import (
    GAPS,
    T0,
    bot_time_between,
    decode,
    in_time_order,
    reference_counts,
    reference_segments,
)

CONFIG = RulesConfig()
LATENESS = CONFIG.allowed_lateness_ms


@st.composite
def conversation(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    app = draw(st.sampled_from(["app-a", "app-b"]))
    conv = f"conv-{index}"
    channel = draw(st.sampled_from(["web", "web", "whatsapp", "voice", "ivr"]))
    t = T0 + draw(st.integers(0, 30 * MINUTE))
    out = []
    for i in range(draw(st.integers(1, 14))):
        t += draw(GAPS) if i else 0
        what = draw(st.sampled_from(["user", "user", "bot", "bot", "agent", "started", "ended"]))
        base = {
            "event_id": f"{conv}-{i}",
            "occurred_at": format_ms(t),
            "account_id": "acme",
            "app_id": app,
            "conversation_id": conv,
        }
        if what in ("started", "ended"):
            out.append(base | {"type": "agent_transfer", "action": what, "agent_id": "ag-1"})
        else:
            turn = base | {"type": "conversation_turn", "user_id": "u", "speaker": what, "channel": channel}
            if draw(st.integers(0, 9)) == 0:
                turn["end_of_conversation"] = True
            if draw(st.integers(0, 29)) == 0:
                turn["is_test"] = True
            out.append(turn)
    return out


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 6))):
        events.extend(draw(conversation(i)))
    for i in range(draw(st.integers(0, 4))):
        t = T0 + draw(st.integers(0, 120 * MINUTE))
        events.append(
            {
                "type": "alert_delivered",
                "event_id": f"alert-{i}",
                "occurred_at": format_ms(t),
                "account_id": "acme",
                "app_id": "app-a",
                "user_id": "u",
                "alert_id": "sub",
                "is_test": draw(st.integers(0, 9)) == 0,
            }
        )
    return in_time_order(events)


@st.composite
def within_lateness(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An arrival order in which no event is older than the clock minus the allowed lateness."""
    delays = draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    keyed = sorted(range(len(events)), key=lambda i: decode(events[i])[0] + delays[i])
    return [events[i] for i in keyed]


def run(arrival: list[dict[str, Any]], config: RulesConfig = CONFIG) -> tuple[list[BillingSession], list[Outcome]]:
    meter = Meter(config)
    outcomes = [meter.apply(*decode(ev)) for ev in arrival]  # type: ignore[arg-type]
    meter.finish()
    return meter.drain()[0], outcomes


def by_id(sessions: list[BillingSession]) -> list[BillingSession]:
    return sorted(sessions, key=lambda s: s.billing_session_id)


fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(st.data())
def test_any_arrival_order_within_lateness_gives_the_batch_result(data: st.DataObject) -> None:
    events = data.draw(traffic())
    arrival = data.draw(within_lateness(events))
    batch, _ = run(events)
    stream, outcomes = run(arrival)
    assert Outcome.LATE not in outcomes
    assert by_id(stream) == by_id(batch)


@fast
@given(traffic())
def test_engine_agrees_with_the_reference_implementation(events: list[dict[str, Any]]) -> None:
    sessions, _ = run(events)
    counted = {"usage": 0, "voice": 0, "alert": 0}
    for s in sessions:
        counted[s.kind] += 1
    assert counted == reference_counts(events, CONFIG)


@fast
@given(st.data())
def test_duplicates_anywhere_later_change_nothing(data: st.DataObject) -> None:
    events = data.draw(traffic())
    arrival = list(events)
    for _ in range(data.draw(st.integers(1, 8))):
        original = events[data.draw(st.integers(0, len(events) - 1))]
        j = data.draw(st.integers(arrival.index(original) + 1, len(arrival)))
        arrival.insert(j, original)
    stream, outcomes = run(arrival)
    assert by_id(stream) == by_id(run(events)[0])
    assert Outcome.LATE not in outcomes


@fast
@given(st.data())
def test_batches_with_persist_and_restore_give_the_same_result(data: st.DataObject) -> None:
    """Persist changes after every batch as the stream does, restore into a new meter, go on."""
    events = data.draw(traffic())
    arrival = data.draw(within_lateness(events))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrival)), max_size=6)))
    table: dict[str, bytes] = {}
    clock = msgspec.msgpack.encode(PartitionClock().to_wire())
    out: list[BillingSession] = []
    start = 0
    for end in [*cuts, len(arrival)]:
        meter = restored(table, clock)
        for ev in arrival[start:end]:
            meter.apply(*decode(ev))  # type: ignore[arg-type]
        start = end
        out.extend(meter.drain()[0])
        upserts, removed = meter.take_changes()
        for key, value in upserts.items():
            table[key] = msgspec.msgpack.encode(value.to_wire() if isinstance(value, ConversationState) else value)
        for key in removed:
            table.pop(key, None)
        clock = msgspec.msgpack.encode(meter.partition.to_wire())
    meter = restored(table, clock)
    meter.finish()
    out.extend(meter.drain()[0])
    assert by_id(out) == by_id(run(events)[0])
    assert len({s.billing_session_id for s in out}) == len(out)


def restored(table: dict[str, bytes], clock: bytes) -> Meter:
    meter = Meter(CONFIG, track_changes=True)
    meter.restore(
        PartitionClock.from_wire(msgspec.msgpack.decode(clock, type=ClockWire)),
        [
            ConversationState.from_wire(msgspec.msgpack.decode(v, type=ConversationWire))
            for k, v in table.items()
            if k[0] == "c"
        ],
        [(k, msgspec.msgpack.decode(v, type=int)) for k, v in table.items() if k[0] == "a"],
    )
    return meter


@fast
@given(st.data())
def test_any_order_and_idle_spells_bill_exactly_the_accepted_events(data: st.DataObject) -> None:
    """Beyond the lateness nothing is guaranteed but this: late events are returned, never
    billed, and what is billed is the batch result of the accepted events."""
    events = data.draw(traffic())
    arrival = data.draw(st.permutations(events))
    meter = Meter(CONFIG)
    accepted = []
    for ev in arrival:
        if data.draw(st.integers(0, 9)) == 0:
            meter.idle_tick(decode(ev)[0] + data.draw(st.integers(0, 40 * MINUTE)))
        outcome = meter.apply(*decode(ev))  # type: ignore[arg-type]
        if outcome is Outcome.APPLIED:
            accepted.append(ev)
    meter.finish()
    stream = meter.drain()[0]
    assert meter.stats.events == len(arrival)
    assert meter.stats.late + meter.stats.duplicates + len(accepted) == len(arrival)
    assert by_id(stream) == by_id(run(in_time_order(accepted))[0])


@fast
@given(traffic())
def test_usage_blocks_hold_fifteen_minutes_of_bot_time_each_and_sum_to_bot_time(events: list[dict[str, Any]]) -> None:
    sessions, _ = run(events)
    segments = {
        conversation_session_id(app, conv, seg.start, seg.events[0][1]): seg
        for (app, conv), segs in reference_segments(events, CONFIG).items()
        for seg in segs
    }
    by_conversation: dict[str | None, list[BillingSession]] = {}
    for s in sessions:
        if s.kind == "usage":
            by_conversation.setdefault(s.conversation_session_id, []).append(s)
    for blocks in by_conversation.values():
        blocks.sort(key=lambda s: s.session_index)
        seg = segments[blocks[0].conversation_session_id]
        bot = [bot_time_between(b.started_ms, b.ended_ms, seg.intervals) for b in blocks]
        assert sum(bot) == blocks[0].bot_ms
        assert all(b == 15 * MINUTE for b in bot[:-1])
        assert 0 <= bot[-1] <= 15 * MINUTE
        assert [b.started_ms for b in blocks[1:]] == [b.ended_ms for b in blocks[:-1]]
        assert blocks[-1].ended_ms == seg.end


@fast
@given(traffic())
def test_no_billing_session_is_emitted_twice(events: list[dict[str, Any]]) -> None:
    sessions, _ = run(events + events)
    ids = [s.billing_session_id for s in sessions]
    assert len(ids) == len(set(ids))
