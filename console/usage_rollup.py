"""Usage per kind and period from the hourly rollup (migration 006): cached counts, exact by version.

For a zone whose offset is a whole number of hours over the range, every period is a union of
UTC hours. ``console_usage_hourly.sql`` sums, per kind and period, the cached hourly counts of
every app and UTC day whose cache version still equals the rows inserted into that day (nothing
arrived since), and lists the other days; those are computed here from their sets
(``console_usage_hours.sql``) and cached for the next request, unless the day is recent (still
filling: caching it would only add a row per request).

The answer is the same as from ``usage_15m`` (``console_usage.sql``) at every instant, which
``tests/unit/test_console_usage_rollup.py`` checks under replays, voids and late sessions.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from console.tenancy import AccountScope
from console.usage_range import UsageRange, first_of_period

__all__ = ["SETTLED_AFTER", "hourly_rows", "query_bounds", "whole_hour_zone"]

#: Days that ended less than this ago are computed from their sets every time, never cached.
SETTLED_AFTER: Final = timedelta(hours=2)
_STEP: Final = timedelta(hours=6)
#: Beyond this many apps, the stale hours are read for all apps of the account (one filter less).
_MAX_LISTED_APPS: Final = 1000
#: Hourly rows read per recomputing pass (bounds the memory of a first read of a long range).
_ROWS_PER_PASS: Final = 100_000


def whole_hour_zone(rng: UsageRange, tz: ZoneInfo) -> bool:
    """True if every offset of ``tz`` over the range is a whole number of hours (then periods are UTC hours).

    Offsets change at most a few times a year and each change lasts months, so sampling every
    six hours (and both ends) finds any non-whole-hour offset in force during the range.
    """
    instant, end = rng.start, rng.end
    while True:
        offset = instant.astimezone(tz).utcoffset()
        if offset is None or offset.total_seconds() % 3600:
            return False
        if instant >= end:
            return True
        instant = min(instant + _STEP, end)


def query_bounds(rng: UsageRange, apps: list[str]) -> dict[str, Any]:
    """The parameters every console usage query takes (console_usage.sql)."""
    return {"apps": apps, "start": rng.start, "end": rng.end, "tz": rng.timezone, "period": rng.by}


def hourly_rows(scope: AccountScope, rng: UsageRange, apps: list[str]) -> list[tuple[Any, ...]]:
    """Rows ``(app_id, kind, period_key, sessions)`` as ``console_usage.sql`` gives them (app_id may be "")."""
    bounds = query_bounds(rng, apps)
    out: list[tuple[Any, ...]] = []
    stale: set[tuple[str, date]] = set()
    for kind, key, sessions, stale_days in scope.query("console_usage_hourly", **bounds):
        if kind == "":
            stale = {(str(app_id), day) for app_id, day in stale_days}
        elif sessions:
            out.append(("", str(kind), str(key), int(sessions)))
    if stale:
        out += _recompute(scope, rng, stale, datetime.now(UTC))
    return out


def _recompute(
    scope: AccountScope, rng: UsageRange, stale: set[tuple[str, date]], now: datetime
) -> list[tuple[Any, ...]]:
    """The stale days' counts from their sets, a few days per pass; settled days cached.

    Passes cover about ``_ROWS_PER_PASS`` hourly rows (days x apps x 24 x kinds), so the first
    read of a year of a large account holds a bounded batch in memory at a time.
    """
    by_day: dict[date, set[str]] = {}
    for app_id, day_date in stale:
        by_day.setdefault(day_date, set()).add(app_id)
    ordered = sorted(by_day)
    widest = max(len(apps) for apps in by_day.values())
    per_pass = max(1, _ROWS_PER_PASS // (widest * 24 * 3))
    tz = ZoneInfo(rng.timezone)
    totals: dict[tuple[str, str], int] = {}
    horizon = now - SETTLED_AFTER
    for i in range(0, len(ordered), per_pass):
        batch = ordered[i : i + per_pass]
        apps = sorted(set().union(*(by_day[d] for d in batch)))
        rows = scope.query(
            "console_usage_hours",
            apps=apps if len(apps) <= _MAX_LISTED_APPS else [],
            first=batch[0],
            last=batch[-1],
        )
        days: dict[tuple[str, date], _Day] = {}
        for app_id, kind, hour_value, inserted, sessions in rows:
            hour = _utc(hour_value)
            key = (str(app_id), hour.date())
            if key not in stale:
                continue  # a day whose cache was current: already counted
            day = days.get(key)
            if day is None:
                day = days[key] = _Day()
            day.add(hour, str(kind), int(inserted), int(sessions))
            if rng.start <= hour < rng.end and sessions:
                period = (str(kind), _period_key(rng, hour, tz))
                totals[period] = totals.get(period, 0) + int(sessions)
        settled = [
            [scope.account_id, app_id, day_date, day.version, day.hours, day.kinds, day.sessions]
            for (app_id, day_date), day in days.items()
            if datetime.combine(day_date + timedelta(days=1), datetime.min.time(), UTC) <= horizon
        ]
        if settled:
            scope.insert("usage_day_counts", _CACHE_COLUMNS, settled)
    return [("", kind, key, n) for (kind, key), n in totals.items()]


_CACHE_COLUMNS: Final = ("account_id", "app_id", "day", "version", "hours", "kinds", "sessions")


class _Day:
    """One app's UTC day recomputed: its version and per hour and kind its count."""

    __slots__ = ("hours", "kinds", "sessions", "version")

    def __init__(self) -> None:
        self.version = 0
        self.hours: list[datetime] = []
        self.kinds: list[str] = []
        self.sessions: list[int] = []

    def add(self, hour: datetime, kind: str, inserted: int, sessions: int) -> None:
        self.version += inserted
        self.hours.append(hour)
        self.kinds.append(kind)
        self.sessions.append(sessions)


def _period_key(rng: UsageRange, hour: datetime, tz: ZoneInfo) -> str:
    """The SQL's period key of an hour (console_usage.sql): its index for hours, else its period's first day."""
    if rng.by == "hour":
        return str(int((hour - rng.start).total_seconds()) // 3600)
    return first_of_period(hour.astimezone(tz).date(), rng.by).isoformat()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
