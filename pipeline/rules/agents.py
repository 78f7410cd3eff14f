"""R11 agents: seats subscribed per day, and the human agents actually active per day.

Days are calendar days in the reporting zone, through the same ``DayOf`` as R8's
attribution, so an agent figure and a usage figure of the same day cover the same instants.

**Seats.** An ``agents_subscribed`` sets the seat count from its ``occurred_at`` on. A day
reports the highest count in force at any instant of it: the count at its first instant,
or any change during it, whichever is higher. So cutting seats at noon still bills the
morning's seats for that day, and the new count from the next day on; a day without change
carries the last count forward. Before the first subscription an app has 0 seats. Changes
stamped with the same millisecond are ordered by ``event_id`` and only the last one is ever
in force (the others lasted no time at all), as with plans.

**Active agents.** The distinct ``agent_id`` of the transfers *started* that day. Being a
set, it needs no deduplication: a transfer delivered twice adds nothing. A started transfer
without ``agent_id`` cannot be attributed to an agent; it is counted (``without_agent``,
copies included, as nothing tells them apart), never guessed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Final

from msgspec import Struct, field

from pipeline.contract.decode import to_ms
from pipeline.contract.events import AgentsSubscribed, AgentTransfer
from pipeline.rules.attribution import DayOf, zone
from pipeline.rules.config import DAY
from pipeline.rules.meter import Outcome

#: (occurred_at ms, event_id, seats): sorts in timeline order.
SeatChange = tuple[int, str, int]

_ONE_DAY: Final = timedelta(days=1)


@lru_cache(maxsize=64)
def day_of(zone_name: str) -> DayOf:
    """R8's day-of-an-instant for a zone, shared (it caches per 15-minute bucket)."""
    return DayOf(zone(zone_name))


def day_start_ms(day: date, zone_name: str) -> int:
    """The first instant of a local calendar day.

    Where clocks skip midnight (DST starting at 00:00), ``fold=0`` reads the missing local
    midnight with the offset before the change, which is exactly the instant of the change:
    the day's first instant.
    """
    return to_ms(datetime.combine(day, time(0), tzinfo=zone(zone_name)))


class SeatTimeline(Struct, kw_only=True):
    """An app's seat subscriptions in timeline order; a function of the set of events seen."""

    app_id: str
    changes: list[SeatChange] = field(default_factory=list)

    def add(self, t_ms: int, event_id: str, seats: int) -> Outcome:
        """Record a change; a second copy of one (same time and ``event_id``) is a duplicate."""
        i = bisect_left(self.changes, (t_ms, event_id))
        if i < len(self.changes) and self.changes[i][:2] == (t_ms, event_id):
            return Outcome.DUPLICATE
        self.changes.insert(i, (t_ms, event_id, seats))
        return Outcome.APPLIED

    def apply(self, event: AgentsSubscribed) -> Outcome:
        return self.add(to_ms(event.occurred_at), event.event_id, event.agents)

    def in_force(self, t_ms: int) -> int:
        """Seats at ``t_ms``: the last change at or before it; 0 before any."""
        i = bisect_right(self.changes, t_ms, key=_t)
        return self.changes[i - 1][2] if i else 0

    def highest_between(self, start_ms: int, end_ms: int) -> int:
        """Highest count in force at any instant of ``[start_ms, end_ms)``."""
        changes = self.changes
        best = self.in_force(start_ms)
        last = bisect_left(changes, end_ms, key=_t)
        for i in range(bisect_right(changes, start_ms, key=_t), last):
            superseded = i + 1 < len(changes) and changes[i + 1][0] == changes[i][0]
            if not superseded and changes[i][2] > best:
                best = changes[i][2]
        return best

    def per_day(self, zone_name: str, first: date, last: date) -> dict[str, int]:
        """Seats of every day from ``first`` to ``last`` (inclusive), keyed by ISO date."""
        out: dict[str, int] = {}
        day = first
        start = day_start_ms(day, zone_name)
        while day <= last:
            following = day + _ONE_DAY
            end = day_start_ms(following, zone_name)
            out[day.isoformat()] = self.highest_between(start, end)
            day, start = following, end
        return out

    def compact(self, before_ms: int) -> None:
        """Drop changes no day from ``before_ms`` on can see: all but the one in force then.

        Keeps the timeline bounded once reports up to ``before_ms`` are final; a change dated
        before the cut that arrives afterwards would then be misplaced, so cut well behind.
        """
        i = bisect_right(self.changes, before_ms, key=_t)
        if i > 1:
            del self.changes[: i - 1]


def seats_per_day(changes: Iterable[SeatChange], zone_name: str, first: date, last: date) -> dict[str, int]:
    """R11 seats per day, as a pure function of the changes (any order, duplicates allowed)."""
    timeline = SeatTimeline(app_id="")
    for t_ms, event_id, seats in changes:
        timeline.add(t_ms, event_id, seats)
    return timeline.per_day(zone_name, first, last)


def active_agents_per_day(transfers: Iterable[tuple[int, str | None]], zone_name: str) -> dict[str, int]:
    """R11 active agents: distinct agent ids per day of the transfers' start, in a zone.

    ``transfers`` are the ``(occurred_at ms, agent_id)`` of ``started`` transfers; those
    without an agent id name nobody and are left out.
    """
    day = day_of(zone_name)
    agents: dict[str, set[str]] = {}
    for t_ms, agent_id in transfers:
        if agent_id is not None:
            agents.setdefault(day(t_ms), set()).add(agent_id)
    return {d: len(ids) for d, ids in sorted(agents.items())}


class ActiveAgents(Struct, kw_only=True):
    """Incremental active agents of one app in one zone, with bounded state.

    ``open`` holds the agent ids of the days still open. Once the newest transfer seen is more
    than ``horizon_ms`` past a day, the day is closed: its count moves to ``closed`` (for the
    adapter to write and ``take_closed``) and its ids are dropped. A transfer for a closed day
    is late: counted, not added, since with the ids gone it cannot be told from a copy.
    """

    app_id: str
    zone: str = "UTC"
    horizon_ms: int = 7 * DAY
    open: dict[str, set[str]] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)
    closed_through: str = ""
    clock_ms: int = -(2**62)
    without_agent: int = 0
    late: int = 0

    def add(self, t_ms: int, agent_id: str | None) -> Outcome:
        """One started transfer at ``t_ms`` by ``agent_id``."""
        day_of_zone = day_of(self.zone)
        day = day_of_zone(t_ms)
        if day <= self.closed_through:
            self.late += 1
            return Outcome.LATE
        if t_ms > self.clock_ms:
            self.clock_ms = t_ms
            # Closes days strictly before the one ``horizon_ms`` back: never ``day`` itself.
            self._close_before(day_of_zone(t_ms - self.horizon_ms))
        if agent_id is None:
            self.without_agent += 1
            return Outcome.APPLIED
        ids = self.open.get(day)
        if ids is None:
            ids = self.open[day] = set()
        if agent_id in ids:
            return Outcome.DUPLICATE
        ids.add(agent_id)
        return Outcome.APPLIED

    def add_transfer(self, t_ms: int, event: AgentTransfer) -> Outcome | None:
        """An ``agent_transfer``; only ``started`` ones count (None for the others)."""
        if event.action != "started":
            return None
        return self.add(t_ms, event.agent_id)

    def counts(self) -> dict[str, int]:
        """Active agents of every day not yet taken, open or closed, by ISO date."""
        out = dict(self.closed)
        out.update((day, len(ids)) for day, ids in self.open.items())
        return dict(sorted(out.items()))

    def take_closed(self) -> dict[str, int]:
        """The final counts of the days closed since the last call (they no longer change)."""
        closed, self.closed = self.closed, {}
        return dict(sorted(closed.items()))

    def _close_before(self, day: str) -> None:
        for d in sorted(d for d in self.open if d < day):
            self.closed[d] = len(self.open.pop(d))
        if day > self.closed_through:
            # Days strictly before ``day`` are closed: the latest of them is the one before it.
            self.closed_through = (date.fromisoformat(day) - _ONE_DAY).isoformat()


def _t(change: SeatChange) -> int:
    return change[0]
