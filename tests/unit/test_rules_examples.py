"""Every worked example of `billing-rules.md` and `docs/billing-rules.md`, one test each."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from pipeline.contract.decode import to_ms
from pipeline.rules.attribution import UsageBook
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.rules.meter import Meter, Outcome
from tests.support import T0, Conversation, alert, at, counts, decode, finished_meter, in_time_order, meter_run

SESSION = 15 * MINUTE


def usage_of(span: float | str, **conv: str) -> int:
    """Usage sessions of a conversation of ``span`` with a turn every five minutes."""
    c = Conversation(**conv).user(0)
    end = at(span) - T0
    for minute in range(5, end // MINUTE, 5):
        c.bot(minute)
    c.user(span)
    return counts(meter_run(c.events))["usage"]


# -- R5: usage sessions from bot time ----------------------------------------------------------


def test_r5_zero_seconds_is_one_session() -> None:
    assert counts(meter_run(Conversation().user(0).events))["usage"] == 1


def test_r5_exactly_fifteen_minutes_is_one_session() -> None:
    assert usage_of("15:00") == 1


def test_r5_fifteen_minutes_and_one_millisecond_is_two_sessions() -> None:
    assert usage_of("15:00.001") == 2


def test_r5_thirty_minutes_is_two_sessions() -> None:
    assert usage_of("30:00") == 2


def test_r5_thirty_one_minutes_is_three_sessions() -> None:
    """The "0-15, 16-30, 31-End" example: a 31-minute conversation is three usage sessions."""
    c = Conversation().user(0)
    for minute in range(1, 32):
        c.bot(minute) if minute % 2 else c.user(minute)
    sessions = meter_run(c.events)
    assert [s.session_index for s in sessions] == [0, 1, 2]
    assert [(s.started_ms - T0) // MINUTE for s in sessions] == [0, 15, 30]
    assert sessions[-1].ended_ms == at(31)


def test_r5_forty_minutes_with_twenty_minutes_of_human_agent_is_two_sessions() -> None:
    c = Conversation().user(0).bot(5).transfer("started", 10).agent(20).user(25).transfer("ended", 30).bot(40)
    sessions = meter_run(c.events)
    assert counts(sessions) == {"usage": 2, "voice": 0, "alert": 0}
    assert sessions[0].bot_ms == 20 * MINUTE
    assert sessions[0].agent_ms == 20 * MINUTE
    # Bot time reaches 15 minutes at 10 + 20 (agent) + 5 = minute 35.
    assert [s.started_ms for s in sessions] == [at(0), at(35)]
    assert [s.ended_ms for s in sessions] == [at(35), at(40)]


def test_r5_session_starts_skip_over_agent_time() -> None:
    c = Conversation().user(0).transfer("started", 14).transfer("ended", 44).bot(59)
    sessions = meter_run(c.events)
    # bot time: 14 + 15 = 29 min -> two sessions; the second starts when bot time reaches 15,
    # which is one minute after the agent hands back (minute 45).
    assert [s.started_ms for s in sessions] == [at(0), at(45)]


def test_r5_boundary_reached_exactly_when_the_agent_takes_over() -> None:
    c = Conversation().user(0).transfer("started", 15).transfer("ended", 25).bot(40)
    sessions = meter_run(c.events)
    # bot time 30 min -> 2 sessions; it reaches 15 min at minute 15, the earliest such instant.
    assert [s.started_ms for s in sessions] == [at(0), at(15)]


# -- R6: voice ---------------------------------------------------------------------------------


def test_r6_voice_call_of_46_minutes_is_four_voice_sessions() -> None:
    c = Conversation(channel="voice").user(0)
    for minute in range(5, 46, 5):
        c.bot(minute)
    c.user(46)
    sessions = meter_run(c.events)
    assert counts(sessions) == {"usage": 0, "voice": 4, "alert": 0}
    assert [s.started_ms for s in sessions] == [at(0), at(15), at(30), at(45)]


def test_r6_voice_includes_agent_time() -> None:
    c = Conversation(channel="ivr").user(0).transfer("started", 1).transfer("ended", 14).agent(13).user(16)
    assert counts(meter_run(c.events))["voice"] == 2


def test_r6_channel_is_the_first_turns_channel() -> None:
    c = Conversation(channel="voice").user(0).bot(10, channel="web").bot(20, channel="web")
    assert counts(meter_run(c.events)) == {"usage": 0, "voice": 2, "alert": 0}


# -- R2: segmentation --------------------------------------------------------------------------


def test_r2_gap_of_exactly_the_idle_timeout_keeps_the_session() -> None:
    c = Conversation().user(0).bot(15)
    sessions = meter_run(c.events)
    assert len({s.conversation_session_id for s in sessions}) == 1


def test_r2_gap_just_over_the_idle_timeout_starts_a_new_session() -> None:
    c = Conversation().user(0).user("15:00.001")
    sessions = meter_run(c.events)
    assert len({s.conversation_session_id for s in sessions}) == 2


def test_r2_idle_timeout_is_configurable() -> None:
    c = Conversation().user(0).user(20)
    assert len(meter_run(c.events, RulesConfig(idle_timeout_ms=30 * MINUTE))) == 2  # one session, 20 min
    assert len(meter_run(c.events, RulesConfig(idle_timeout_ms=10 * MINUTE))) == 2  # two sessions
    one = meter_run(c.events, RulesConfig(idle_timeout_ms=30 * MINUTE))
    assert len({s.conversation_session_id for s in one}) == 1


def test_r2_idle_timeout_per_app() -> None:
    config = RulesConfig(app_idle_timeout_ms={"slow-bot": 60 * MINUTE})
    fast = Conversation(app_id="fast-bot").user(0).user(40)
    slow = Conversation(app_id="slow-bot").user(0).user(40)
    assert len({s.conversation_session_id for s in meter_run(fast.events, config)}) == 2
    assert len({s.conversation_session_id for s in meter_run(slow.events, config)}) == 1


def test_r2_end_of_conversation_starts_a_new_session() -> None:
    c = Conversation().user(0).bot(1, end_of_conversation=True).user(2)
    sessions = meter_run(c.events)
    assert len({s.conversation_session_id for s in sessions}) == 2


def test_r2_open_transfer_holds_the_session_past_the_idle_timeout() -> None:
    c = Conversation().user(0).transfer("started", 1).agent(50).transfer("ended", 55).user(69)
    sessions = meter_run(c.events)
    assert len({s.conversation_session_id for s in sessions}) == 1
    assert sessions[0].agent_ms == 54 * MINUTE


def test_r2_after_the_transfer_ends_the_session_idles_out_again() -> None:
    c = Conversation().user(0).transfer("started", 1).transfer("ended", 55).user(71)
    assert len({s.conversation_session_id for s in meter_run(c.events)}) == 2


def test_r2_transfer_left_open_ends_at_the_last_event() -> None:
    c = Conversation().user(0).bot(5).transfer("started", 10).agent(20)
    sessions = meter_run(c.events)
    assert sessions[0].agent_ms == 10 * MINUTE
    assert sessions[0].bot_ms == 10 * MINUTE
    assert len(sessions) == 1


def test_r2_abandoned_transfer_is_bounded_by_the_open_transfer_timeout() -> None:
    c = Conversation().user(0).transfer("started", 1).user(26 * 60)
    config = RulesConfig(open_transfer_timeout_ms=24 * 60 * MINUTE)
    assert len({s.conversation_session_id for s in meter_run(c.events, config)}) == 2


# -- R4: anomalies -----------------------------------------------------------------------------


def test_r4_ended_without_started_is_ignored_and_counted() -> None:
    c = Conversation().user(0).transfer("ended", 5).bot(10)
    meter = finished_meter(c.events)
    sessions = meter.drain()[0]
    assert sessions[0].agent_ms == 0
    assert meter.stats.transfers_ended_without_start == 1


def test_r4_second_started_while_open_is_ignored() -> None:
    c = Conversation().user(0).transfer("started", 5).transfer("started", 8).transfer("ended", 10).bot(20)
    meter = finished_meter(c.events)
    assert meter.drain()[0][0].agent_ms == 5 * MINUTE
    assert meter.stats.transfers_started_while_open == 1


# -- R3: interactive only ----------------------------------------------------------------------


def test_r3_bot_only_session_is_not_billed_but_counted() -> None:
    c = Conversation().bot(0).bot(5)
    meter = finished_meter(c.events)
    assert meter.drain()[0] == []
    assert meter.stats.sessions_non_interactive == 1


def test_r3_test_session_is_not_billed_but_counted() -> None:
    c = Conversation().user(0, is_test=True).bot(5)
    meter = finished_meter(c.events)
    assert meter.drain()[0] == []
    assert meter.stats.sessions_test == 1


def test_r3_one_test_turn_makes_the_whole_session_test() -> None:
    c = Conversation().user(0).bot(5, is_test=True).user(6)
    assert meter_run(c.events) == []


# -- R1: duplicates ----------------------------------------------------------------------------


def test_r1_duplicates_are_ignored() -> None:
    c = Conversation().user(0).bot(10).bot(20)
    once = meter_run(c.events)
    twice = meter_run([*c.events, *c.events, c.events[1]])
    assert once == twice


def test_r1_duplicate_alert_is_billed_once() -> None:
    a = alert(0)
    assert counts(meter_run([a, a, a])) == {"usage": 0, "voice": 0, "alert": 1}


def test_r1_reapplying_an_event_returns_duplicate() -> None:
    meter = Meter(RulesConfig())
    t, e = decode(Conversation().user(0).events[0])
    assert meter.apply(t, e) is Outcome.APPLIED  # type: ignore[arg-type]
    assert meter.apply(t, e) is Outcome.DUPLICATE  # type: ignore[arg-type]


# -- R7: alerts --------------------------------------------------------------------------------


def test_r7_every_alert_is_one_session_at_delivery() -> None:
    sessions = meter_run([alert(0), alert(1), alert(2, is_test=True)])
    assert counts(sessions) == {"usage": 0, "voice": 0, "alert": 2}
    assert sessions[0].started_ms == at(0)


# -- R8: attribution ---------------------------------------------------------------------------


def day_rows(events: list[dict[str, object]], zone: str) -> list[tuple[str, str, str, int, int, int, int, int]]:
    book = UsageBook(ZoneInfo(zone))
    book.add_all(meter_run(in_time_order(events)))  # type: ignore[arg-type]
    return book.rows()


def test_r8_conversation_crossing_midnight_belongs_to_its_start_day_per_session() -> None:
    start = at("0", base=T0 + 13 * 60 * MINUTE + 50 * MINUTE)  # 23:50 UTC
    c = Conversation(start=start).user(0).bot(10).user(20).bot(35)
    rows = day_rows(c.events, "UTC")
    # 35 minutes -> 3 sessions: 23:50 (day 1), 00:05 and 00:20 (day 2); the conversation on day 1.
    assert rows == [
        ("acme", "support-bot", "2026-11-01", 1, 1, 0, 0, 1),
        ("acme", "support-bot", "2026-11-02", 0, 2, 0, 0, 2),
    ]


def test_r8_session_starting_at_2350_belongs_to_that_day_even_if_it_ends_after_midnight() -> None:
    start = T0 + 13 * 60 * MINUTE + 50 * MINUTE
    c = Conversation(start=start).user(0).bot(14)
    assert day_rows(c.events, "UTC") == [("acme", "support-bot", "2026-11-01", 1, 1, 0, 0, 1)]


def test_r8_half_hour_zone_asia_kolkata() -> None:
    # 18:29 UTC is 23:59 in Kolkata (UTC+05:30); 18:30 UTC is midnight there.
    before = Conversation(conversation_id="a", start=T0 + 8 * 60 * MINUTE + 29 * MINUTE).user(0)
    after = Conversation(conversation_id="b", start=T0 + 8 * 60 * MINUTE + 30 * MINUTE).user(0)
    rows = day_rows(before.events + after.events, "Asia/Kolkata")
    assert rows == [
        ("acme", "support-bot", "2026-11-01", 1, 1, 0, 0, 1),
        ("acme", "support-bot", "2026-11-02", 1, 1, 0, 0, 1),
    ]
    assert day_rows(before.events + after.events, "UTC") == [("acme", "support-bot", "2026-11-01", 2, 2, 0, 0, 2)]


def test_r8_billing_sessions_are_usage_plus_alert_voice_beside() -> None:
    events = [
        *Conversation(conversation_id="chat").user(0).bot(10).user(20).events,
        *Conversation(conversation_id="call", channel="voice").user(0).bot(10).user(20).events,
        alert(3),
    ]
    assert day_rows(events, "UTC") == [("acme", "support-bot", "2026-11-01", 2, 2, 2, 1, 3)]


def test_r8_day_follows_dst_in_the_zone() -> None:
    # 2026-03-29 01:00 UTC: Europe/Paris moves from +01:00 to +02:00.
    before = Conversation(conversation_id="a", start=to_ms(datetime(2026, 3, 28, 22, 30, tzinfo=UTC)))
    after = Conversation(conversation_id="b", start=to_ms(datetime(2026, 3, 29, 22, 30, tzinfo=UTC)))
    rows = day_rows(before.user(0).events + after.user(0).events, "Europe/Paris")
    assert [r[2] for r in rows] == ["2026-03-28", "2026-03-30"]  # 23:30 +01:00, then 00:30 +02:00


# -- ids ---------------------------------------------------------------------------------------


def test_billing_session_ids_are_deterministic_and_unique() -> None:
    long = Conversation().user(0).bot(10).user(20).bot(30).user(40)
    first = [s.billing_session_id for s in meter_run(long.events)]
    assert first == [s.billing_session_id for s in meter_run(long.events)]
    assert len(set(first)) == len(first) == 3
    short = Conversation().user(0).bot("0:20").user("0:40").bot("0:59")
    forward = meter_run(short.events)
    backward = meter_run(list(reversed(short.events)))  # all within the allowed lateness
    assert [s.billing_session_id for s in forward] == [s.billing_session_id for s in backward]


@pytest.mark.parametrize("kind", ["usage", "voice"])
def test_conversation_session_id_is_shared_by_its_billing_sessions(kind: str) -> None:
    c = Conversation(channel="voice" if kind == "voice" else "web").user(0).bot(35)
    sessions = meter_run(c.events)
    assert {s.kind for s in sessions} == {kind}
    assert len({s.conversation_session_id for s in sessions}) == 1
