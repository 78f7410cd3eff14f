"""R11 agents: seats per day with carry-forward, in UTC and other zones, and active agents per day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contract.decode import to_ms
from pipeline.contract.events import AgentsSubscribed, AgentTransfer, ms_to_datetime
from pipeline.rules.agents import (
    ActiveAgents,
    SeatChange,
    SeatTimeline,
    active_agents_per_day,
    day_of,
    day_start_ms,
    seats_per_day,
)
from pipeline.rules.config import DAY, HOUR, MINUTE
from pipeline.rules.meter import Outcome

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ZONES = ("UTC", "Asia/Kolkata", "Europe/Paris", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return to_ms(datetime(year, month, day, hour, minute, tzinfo=UTC))


def days(first: str, *values: int) -> dict[str, int]:
    start = date.fromisoformat(first)
    return {(start + timedelta(days=i)).isoformat(): v for i, v in enumerate(values)}


CHANGES: list[SeatChange] = [
    (utc(2026, 11, 1, 10), "e1", 5),
    (utc(2026, 11, 2, 12), "e2", 3),
    (utc(2026, 11, 4, 23, 30), "e3", 8),
]


# -- seats -------------------------------------------------------------------------------------


def test_seats_are_the_days_highest_and_carried_forward_in_utc() -> None:
    report = seats_per_day(CHANGES, "UTC", date(2026, 10, 31), date(2026, 11, 6))
    # 0 before any subscription; the day of a cut still has the morning's 5; 8 from 23:30 on.
    assert report == days("2026-10-31", 0, 5, 5, 3, 8, 8, 8)


def test_seats_by_kolkata_days() -> None:
    """23:30 UTC on the 4th is 05:00 on the 5th in Kolkata (UTC+05:30): the 4th keeps 3 seats there."""
    report = seats_per_day(CHANGES, "Asia/Kolkata", date(2026, 10, 31), date(2026, 11, 6))
    assert report == days("2026-10-31", 0, 5, 5, 3, 3, 8, 8)


@pytest.mark.parametrize(("offset", "expected"), [(-1, (2, 9, 9)), (0, (2, 2, 9))])
def test_kolkata_midnight_is_18_30_utc(offset: int, expected: tuple[int, ...]) -> None:
    changes: list[SeatChange] = [(utc(2026, 11, 1), "a", 2), (utc(2026, 11, 2, 18, 30) + offset, "b", 9)]
    report = seats_per_day(changes, "Asia/Kolkata", date(2026, 11, 1), date(2026, 11, 3))
    assert tuple(report.values()) == expected


def test_a_change_at_an_instant_superseded_in_the_same_millisecond_was_never_in_force() -> None:
    t = utc(2026, 11, 1, 12)
    changes: list[SeatChange] = [(utc(2026, 11, 1), "x", 4), (t, "b", 1), (t, "a", 100)]
    assert seats_per_day(changes, "UTC", date(2026, 11, 1), date(2026, 11, 2)) == days("2026-11-01", 4, 1)


def test_seats_on_the_25_hour_day_in_paris() -> None:
    """2026-10-25 has 25 hours in Paris; 22:59 UTC is 23:59 there, 23:00 UTC already the 26th."""
    first, last = date(2026, 10, 25), date(2026, 10, 26)
    before = seats_per_day([(utc(2026, 10, 25, 22, 59), "a", 7)], "Europe/Paris", first, last)
    after = seats_per_day([(utc(2026, 10, 25, 23, 0), "a", 7)], "Europe/Paris", first, last)
    assert before == days("2026-10-25", 7, 7)
    assert after == days("2026-10-25", 0, 7)


def test_a_day_whose_midnight_does_not_exist_starts_at_the_clock_change() -> None:
    """Santiago skips from 00:00 to 01:00 on 2026-09-06: that day begins at 04:00 UTC."""
    start = day_start_ms(date(2026, 9, 6), "America/Santiago")
    assert start == utc(2026, 9, 6, 4)
    assert day_of("America/Santiago")(start) == "2026-09-06"
    assert day_of("America/Santiago")(start - 1) == "2026-09-05"


def test_seat_timeline_from_events_with_duplicates_and_compaction() -> None:
    timeline = SeatTimeline(app_id="support-bot")

    def subscribed(t: int, seats: int, event_id: str) -> AgentsSubscribed:
        return AgentsSubscribed(
            event_id=event_id, occurred_at=ms_to_datetime(t), account_id="acme", app_id="support-bot", agents=seats
        )

    assert timeline.apply(subscribed(utc(2026, 11, 1), 5, "a")) is Outcome.APPLIED
    assert timeline.apply(subscribed(utc(2026, 11, 1), 5, "a")) is Outcome.DUPLICATE
    timeline.apply(subscribed(utc(2026, 11, 3), 6, "b"))
    timeline.apply(subscribed(utc(2026, 11, 5), 7, "c"))
    report = timeline.per_day("UTC", date(2026, 11, 4), date(2026, 11, 6))
    timeline.compact(utc(2026, 11, 4))
    assert [c[1] for c in timeline.changes] == ["b", "c"]
    assert timeline.per_day("UTC", date(2026, 11, 4), date(2026, 11, 6)) == report == days("2026-11-04", 6, 7, 7)
    assert msgspec.json.decode(msgspec.json.encode(timeline), type=SeatTimeline) == timeline


def naive_seats(changes: list[SeatChange], zone_name: str, first: date, last: date) -> dict[str, int]:
    """Brute force: the count in force at the day's start and at every change inside it."""
    ordered = sorted(set(changes))

    def in_force(t: int) -> int:
        seats = 0
        for when, _, n in ordered:
            if when <= t:
                seats = n
        return seats

    out = {}
    day = first
    while day <= last:
        start, end = day_start_ms(day, zone_name), day_start_ms(day + timedelta(days=1), zone_name)
        instants = [start, *(t for t, _, _ in ordered if start <= t < end)]
        out[day.isoformat()] = max(in_force(t) for t in instants)
        day += timedelta(days=1)
    return out


T_START = utc(2026, 10, 20)


@st.composite
def seat_changes(draw: st.DrawFn) -> list[SeatChange]:
    instants = st.integers(T_START, T_START + 10 * DAY) | st.sampled_from([T_START + DAY, T_START + 3 * DAY])
    change = st.tuples(instants, st.sampled_from("abcd"), st.integers(0, 50))
    return draw(st.lists(change, max_size=12, unique_by=lambda c: c[:2]))


@PROPERTY
@given(seat_changes(), st.data(), st.sampled_from(ZONES))
def test_seats_per_day_is_the_brute_force_for_any_order_and_copies(
    changes: list[SeatChange], data: st.DataObject, zone_name: str
) -> None:
    copies = data.draw(st.lists(st.sampled_from(changes))) if changes else []
    delivered = data.draw(st.permutations(changes + copies))
    first, last = date(2026, 10, 19), date(2026, 11, 1)
    assert seats_per_day(delivered, zone_name, first, last) == naive_seats(changes, zone_name, first, last)


@PROPERTY
@given(st.integers(utc(2000, 1, 1), utc(2040, 1, 1)), st.sampled_from(ZONES))
def test_a_days_first_instant_agrees_with_the_day_of_an_instant(t: int, zone_name: str) -> None:
    day = date.fromisoformat(day_of(zone_name)(t))
    assert day_start_ms(day, zone_name) <= t < day_start_ms(day + timedelta(days=1), zone_name)


# -- active agents -------------------------------------------------------------------------------


def test_active_agents_are_distinct_per_day_of_the_transfer_start() -> None:
    transfers = [
        (utc(2026, 11, 1, 9), "ann"),
        (utc(2026, 11, 1, 15), "ann"),  # same agent again: still one
        (utc(2026, 11, 1, 16), "bob"),
        (utc(2026, 11, 1, 17), None),  # no agent id: nobody to count
        (utc(2026, 11, 2, 1), "ann"),
    ]
    assert active_agents_per_day(transfers, "UTC") == {"2026-11-01": 2, "2026-11-02": 1}
    # 16:00 UTC is 21:30 in Kolkata, 01:00 UTC 06:30; 18:30 UTC would already be the next day there.
    assert active_agents_per_day([*transfers, (utc(2026, 11, 1, 18, 30), "cy")], "Asia/Kolkata") == {
        "2026-11-01": 2,
        "2026-11-02": 2,
    }


def test_incremental_active_agents_close_days_and_refuse_late_transfers() -> None:
    acc = ActiveAgents(app_id="support-bot", zone="UTC", horizon_ms=DAY)
    assert acc.add(utc(2026, 11, 1, 9), "ann") is Outcome.APPLIED
    assert acc.add(utc(2026, 11, 1, 10), "ann") is Outcome.DUPLICATE
    acc.add(utc(2026, 11, 1, 11), "bob")
    acc.add(utc(2026, 11, 2, 9), "ann")
    assert acc.counts() == {"2026-11-01": 2, "2026-11-02": 1}
    assert acc.take_closed() == {}
    acc.add(utc(2026, 11, 3, 12), "cy")  # a day behind is 2026-11-02 12:00: the 1st is closed
    assert acc.take_closed() == {"2026-11-01": 2}
    assert acc.take_closed() == {}
    assert list(acc.open) == ["2026-11-02", "2026-11-03"]
    assert acc.add(utc(2026, 11, 1, 23), "dan") is Outcome.LATE
    assert acc.late == 1
    assert acc.add(utc(2026, 11, 2, 23), "dan") is Outcome.APPLIED  # the 2nd is still open
    assert acc.counts() == {"2026-11-02": 2, "2026-11-03": 1}


def test_only_started_transfers_count() -> None:
    acc = ActiveAgents(app_id="support-bot", zone="Asia/Kolkata")

    def transfer(action: str, agent: str | None) -> AgentTransfer:
        return AgentTransfer(
            event_id=f"{action}-{agent}",
            occurred_at=ms_to_datetime(utc(2026, 11, 1, 12)),
            account_id="acme",
            app_id="support-bot",
            conversation_id="c-1",
            action=action,  # type: ignore[arg-type]
            agent_id=agent,
        )

    assert acc.add_transfer(utc(2026, 11, 1, 12), transfer("ended", "ann")) is None
    assert acc.add_transfer(utc(2026, 11, 1, 12), transfer("started", "ann")) is Outcome.APPLIED
    assert acc.add_transfer(utc(2026, 11, 1, 12), transfer("started", None)) is Outcome.APPLIED
    assert acc.counts() == {"2026-11-01": 1}
    assert acc.without_agent == 1


@PROPERTY
@given(
    st.lists(st.tuples(st.integers(T_START, T_START + 3 * DAY), st.sampled_from(["a", "b", "c", "d", None]))),
    st.data(),
    st.sampled_from(ZONES),
)
def test_incremental_active_agents_equal_the_pure_function_in_any_order_and_after_any_restore(
    transfers: list[tuple[int, str | None]], data: st.DataObject, zone_name: str
) -> None:
    delivered = data.draw(st.permutations(transfers + transfers[: data.draw(st.integers(0, len(transfers)))]))
    acc = ActiveAgents(app_id="support-bot", zone=zone_name)
    for i, (t, agent) in enumerate(delivered):
        if i % 3 == 0:
            acc = msgspec.msgpack.decode(msgspec.msgpack.encode(acc), type=ActiveAgents)
        assert acc.add(t, agent) is not Outcome.LATE  # all within the 7-day horizon
    assert acc.counts() == active_agents_per_day(transfers, zone_name)


def test_the_horizon_is_event_time_not_arrival() -> None:
    acc = ActiveAgents(app_id="support-bot", horizon_ms=2 * HOUR)
    acc.add(utc(2026, 11, 1, 23, 59), "ann")
    acc.add(utc(2026, 11, 2, 1, 0), "bob")  # the 1st is only an hour behind: still open
    assert acc.add(utc(2026, 11, 1, 23, 0) + 30 * MINUTE, "cy") is Outcome.APPLIED
    assert acc.counts() == {"2026-11-01": 2, "2026-11-02": 1}
