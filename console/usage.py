"""The usage series of one account (console.md §1): one point per period, zero-filled, in time order.

Figures per period: ``billing_sessions`` (usage + alert, R8), ``usage_sessions``,
``voice_sessions``, ``alert_sessions``, ``agents`` (seats in force, R11, carried forward into
periods without usage; for all apps the sum of the apps' seats) and ``active_agents`` (distinct
agents of the transfers started in the period, across the apps asked for). Totals: sums, except
``agents`` (the highest of the range) and ``active_agents`` (distinct over the range).

Reading is account-scoped SQL (``console.tenancy``): the sessions from the exact 15-minute counts of
``usage_counts`` (migration 012, any zone), agents from the seat changes and started transfers;
:func:`assemble` is the pure part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from console.tenancy import AccountScope
from console.usage_range import UsageRange, local_midnight
from pipeline.contract.decode import to_ms
from pipeline.rules.agents import SeatTimeline
from pipeline.rules.attribution import zone

__all__ = ["METRICS", "UsagePoint", "UsageSeries", "assemble", "query_bounds", "usage_series"]

METRICS: Final = (
    "billing_sessions",
    "usage_sessions",
    "voice_sessions",
    "alert_sessions",
    "agents",
    "active_agents",
)


@dataclass(slots=True)
class UsagePoint:
    period: str
    billing_sessions: int = 0
    usage_sessions: int = 0
    voice_sessions: int = 0
    alert_sessions: int = 0
    agents: int = 0
    active_agents: int = 0

    def row(self) -> tuple[Any, ...]:
        return (self.period, *(getattr(self, m) for m in METRICS))


@dataclass(frozen=True, slots=True)
class UsageSeries:
    account_id: str
    app: str | None
    range: UsageRange
    series: list[UsagePoint]
    totals: UsagePoint  # period ""

    def as_json(self) -> dict[str, Any]:
        def metrics(point: UsagePoint) -> dict[str, int]:
            return {m: getattr(point, m) for m in METRICS}

        return {
            "account_id": self.account_id,
            "app": self.app,
            "range": {
                "from": self.range.label_from,
                "to": self.range.label_to,
                "by": self.range.by,
                "timezone": self.range.timezone,
            },
            "series": [{"period": p.period, **metrics(p)} for p in self.series],
            "totals": metrics(self.totals),
        }


def usage_series(scope: AccountScope, rng: UsageRange, app: str | None) -> UsageSeries:
    """Read and assemble; ``app`` must already be known to belong to the account (or None: all)."""
    apps = [app] if app is not None else []
    bounds = query_bounds(rng, apps)
    sessions = session_counts(scope, bounds)
    active = scope.query("console_active_agents", **bounds)
    # seats of the range's last local day count whole (an hour takes its day's seats)
    seats_end = local_midnight(rng.last_day + timedelta(days=1), zone(rng.timezone))
    seats = scope.query("console_seat_changes", apps=apps, end=seats_end)
    return UsageSeries(scope.account_id, app, rng, *assemble(rng, sessions, active, seats))


def session_counts(scope: AccountScope, bounds: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Sessions per period and kind: the account's own counts for all apps, the apps' counts for a list."""
    return scope.query("console_usage" if bounds["apps"] else "console_usage_account", **bounds)


def query_bounds(rng: UsageRange, apps: list[str]) -> dict[str, Any]:
    """The parameters the console's usage queries take (console_usage.sql, console_active_agents.sql)."""
    return {"apps": apps, "start": rng.start, "end": rng.end, "tz": rng.timezone, "period": rng.by}


def _key_of(rng: UsageRange) -> dict[str, int]:
    """A SQL period key to its index in the series."""
    if rng.by == "hour":
        return {str(i): i for i in range(len(rng.periods))}
    return {p.label: i for i, p in enumerate(rng.periods)}


def assemble(
    rng: UsageRange,
    sessions: Iterable[Sequence[Any]],
    active: Iterable[Sequence[Any]],
    seat_changes: Iterable[Sequence[Any]],
) -> tuple[list[UsagePoint], UsagePoint]:
    """The zero-filled series and its totals from the rows of the three queries.

    ``sessions``: ``(period_key, usage, voice, alert)`` as console_usage.sql gives them.
    """
    points = [UsagePoint(p.label) for p in rng.periods]
    index = _key_of(rng)
    for key, usage_n, voice_n, alert_n in sessions:
        point = points[index[str(key)]]
        point.usage_sessions += int(usage_n)
        point.voice_sessions += int(voice_n)
        point.alert_sessions += int(alert_n)
    totals = UsagePoint("")
    for key, n in active:
        if key == "":
            totals.active_agents = int(n)
        else:
            points[index[str(key)]].active_agents = int(n)
    for point, agents in zip(points, _seats(rng, seat_changes), strict=True):
        point.agents = agents
    for point in points:
        point.billing_sessions = point.usage_sessions + point.alert_sessions
        for metric in ("billing_sessions", "usage_sessions", "voice_sessions", "alert_sessions"):
            setattr(totals, metric, getattr(totals, metric) + getattr(point, metric))
    totals.agents = max((p.agents for p in points), default=0)
    return points, totals


def _seats(rng: UsageRange, seat_changes: Iterable[Sequence[Any]]) -> list[int]:
    """Per period, the sum over apps of each app's highest seat count in force during the period's days.

    An hour takes the seats of its local day, as a day does (console.md).
    """
    timelines: dict[str, SeatTimeline] = {}
    for app_id, t_ms, event_id, agents in seat_changes:
        timeline = timelines.get(str(app_id))
        if timeline is None:
            timeline = timelines[str(app_id)] = SeatTimeline(app_id=str(app_id))
        timeline.add(int(t_ms), str(event_id), int(agents))
    if not timelines:
        return [0] * len(rng.periods)
    tz = zone(rng.timezone)
    bounds = [
        (to_ms(local_midnight(p.first_day, tz)), to_ms(local_midnight(p.last_day + timedelta(days=1), tz)))
        for p in rng.periods
    ]
    out = [0] * len(bounds)
    first, end = bounds[0][0], bounds[-1][1]
    for timeline in timelines.values():
        if _changes_within(timeline, first, end):
            for i, (start_ms, end_ms) in enumerate(bounds):
                out[i] += timeline.highest_between(start_ms, end_ms)
        else:  # the same seats all through the range (most apps): one lookup, not one per period
            seats = timeline.in_force(first)
            out = [n + seats for n in out]
    return out


def _changes_within(timeline: SeatTimeline, start_ms: int, end_ms: int) -> bool:
    """True if a seat change falls after ``start_ms`` and before ``end_ms``."""
    return any(start_ms < t_ms < end_ms for t_ms, _, _ in timeline.changes)
