"""The usage series of one account (console.md §1): one point per period, zero-filled, in time order.

Figures per period: ``billing_sessions`` (usage + alert, R8), ``usage_sessions``,
``voice_sessions``, ``alert_sessions``, ``agents`` (seats in force, R11, carried forward into
periods without usage; for all apps the sum of the apps' seats) and ``active_agents`` (distinct
agents of the transfers started in the period, across the apps asked for). Totals: sums, except
``agents`` (the highest of the range) and ``active_agents`` (distinct over the range).

Reading is account-scoped SQL (``console.tenancy``); :func:`assemble` is the pure part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from console.tenancy import AccountScope
from console.usage_range import UsageRange, local_midnight
from console.usage_rollup import hourly_rows, query_bounds, whole_hour_zone
from pipeline.balance.agents import SeatTimeline
from pipeline.decode import to_ms
from pipeline.rules.attribution import zone

__all__ = ["METRICS", "UsagePoint", "UsageSeries", "assemble", "usage_series"]

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
    if whole_hour_zone(rng, zone(rng.timezone)):
        sessions = hourly_rows(scope, rng, apps)  # cached counts of UTC hours (migration 006)
    else:
        sessions = scope.query("console_usage", **bounds)  # 15-minute sets: half-hour zones
    active = scope.query("console_active_agents", **bounds)
    # seats of the range's last local day count whole (an hour takes its day's seats)
    seats_end = local_midnight(rng.last_day + timedelta(days=1), zone(rng.timezone))
    seats = scope.query("console_seat_changes", apps=apps, end=seats_end)
    return UsageSeries(scope.account_id, app, rng, *assemble(rng, sessions, active, seats))


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
    """The zero-filled series and its totals from the rows of the three queries."""
    points = [UsagePoint(p.label) for p in rng.periods]
    index = _key_of(rng)
    for _app, kind, key, n in sessions:
        point = points[index[str(key)]]
        if kind == "usage":
            point.usage_sessions += int(n)
        elif kind == "voice":
            point.voice_sessions += int(n)
        elif kind == "alert":
            point.alert_sessions += int(n)
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
    out = []
    for period in rng.periods:
        start_ms = to_ms(local_midnight(period.first_day, tz))
        end_ms = to_ms(local_midnight(period.last_day + timedelta(days=1), tz))
        out.append(sum(t.highest_between(start_ms, end_ms) for t in timelines.values()))
    return out
