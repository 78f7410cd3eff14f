"""R11 beside the usage rows: the ``agents`` and ``active_agents`` columns of `compute` and `usage`.

One function (:func:`with_agents`) appends them to usage rows, for `metering compute` (seats and
transfers from the file) and for `metering usage` (from ClickHouse), so the two print the same
figures and can still be compared line for line. The rules are ``pipeline.rules.agents``'s.

The rows stay the usage rows: a period is a row when it has a non-zero usage count, as before
these columns existed. Seats are a subscription carried forward without end, not usage: counting
them would make every day after the first subscription a row. A period's ``agents`` is the highest
seat count in force at any instant of it (for a day, exactly R11's figure); its
``active_agents`` is the number of distinct agents who took a transfer that started in it (for a
week or a month, distinct over the whole period, not a sum of days).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Final

from pipeline.contract.decode import to_ms
from pipeline.contract.events import AgentsSubscribed, AgentTransfer
from pipeline.rules.agents import SeatTimeline, day_of, day_start_ms
from pipeline.rules.attribution import Period, PeriodOf, UsageRow, label_day, zone

AGENT_COLUMNS: Final = ("agents", "active_agents")

#: A usage row followed by ``agents`` and ``active_agents``.
AgentRow = tuple[str, str, str, int, int, int, int, int, int, int]
PeriodName = Period

_ONE_DAY: Final = timedelta(days=1)


def period_last_day(first: date, period: PeriodName) -> date:
    """The last day of the period that starts on ``first`` (weeks from Monday, months from the 1st; an hour's day)."""
    if period == "week":
        return first + timedelta(days=6)
    if period == "month":
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return following - _ONE_DAY
    return first


def with_agents(
    rows: Iterable[UsageRow],
    seats: Mapping[str, SeatTimeline],
    active: Mapping[tuple[str, str, str], int],
    *,
    zone_name: str,
    period: PeriodName = "day",
    start: date | None = None,
    end: date | None = None,
) -> list[AgentRow]:
    """``rows`` (period in column 3) with their app's seats and active agents appended.

    ``seats`` is keyed by app id, ``active`` by ``(account_id, app_id, period)``; ``start`` and
    ``end`` clip a period the report cuts (its seats are then those of the days inside). An
    hour's seats are those of its day (R11 counts seats per day).
    """
    out: list[AgentRow] = []
    for row in rows:
        account_id, app_id, first_text = row[0], row[1], row[2]
        first = label_day(first_text)
        last = period_last_day(first, period)
        if start is not None and first < start:
            first = start
        if end is not None and last > end:
            last = end
        timeline = seats.get(app_id)
        agents = 0
        if timeline is not None:
            agents = timeline.highest_between(day_start_ms(first, zone_name), day_start_ms(last + _ONE_DAY, zone_name))
        out.append((*row, agents, active.get((account_id, app_id, first_text), 0)))
    return out


class AgentBook:
    """Seats and active agents gathered from events, for `metering compute` (any event order).

    Active agents are kept per ``period``; ``first``/``last`` (ISO local days, inclusive) keep
    only the transfers started on those days, as the usage rows keep only their sessions.
    """

    def __init__(self, zone_name: str, period: Period = "day", first: str = "", last: str = "") -> None:
        self.zone_name = zone_name
        self.period: Period = period
        self.first = first
        self.last = last
        self.seats: dict[str, SeatTimeline] = {}
        self._day_of = day_of(zone_name)
        self._period_of = self._day_of if period == "day" else PeriodOf(zone(zone_name), period)
        self._active: dict[tuple[str, str, str], set[str]] = {}

    def subscribed(self, t_ms: int, event: AgentsSubscribed) -> None:
        timeline = self.seats.get(event.app_id)
        if timeline is None:
            timeline = self.seats[event.app_id] = SeatTimeline(app_id=event.app_id)
        timeline.add(t_ms, event.event_id, event.agents)

    def transfer(self, event: AgentTransfer) -> None:
        """A started transfer that names its agent counts for the period it started in; others name nobody."""
        if event.action == "started" and event.agent_id is not None:
            t = to_ms(event.occurred_at)
            if self.first:
                day = self._day_of(t)
                if day < self.first or day > self.last:
                    return
            key = (event.account_id, event.app_id, self._period_of(t))
            agents = self._active.get(key)
            if agents is None:
                agents = self._active[key] = set()
            agents.add(event.agent_id)

    def active(self) -> dict[tuple[str, str, str], int]:
        return {key: len(ids) for key, ids in self._active.items()}

    def rows(self, usage_rows: Iterable[UsageRow]) -> list[AgentRow]:
        start = date.fromisoformat(self.first) if self.first else None
        end = date.fromisoformat(self.last) if self.last else None
        return with_agents(
            usage_rows, self.seats, self.active(), zone_name=self.zone_name, period=self.period, start=start, end=end
        )
