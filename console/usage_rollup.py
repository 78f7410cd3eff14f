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

__all__ = ["SETTLED_AFTER", "hourly_rows", "whole_hour_zone"]

#: Days that ended less than this ago are computed from their sets every time, never cached.
SETTLED_AFTER: Final = timedelta(hours=2)
_STEP: Final = timedelta(hours=6)
#: Beyond this many apps, the stale hours are read for all apps of the account (one filter less).
_MAX_LISTED_APPS: Final = 1000


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


def hourly_rows(scope: AccountScope, rng: UsageRange, apps: list[str]) -> list[tuple[Any, ...]]:
    """Rows ``(app_id, kind, period_key, sessions)`` as ``console_usage.sql`` gives them (app_id may be "")."""
    bounds: dict[str, Any] = {
        "apps": apps,
        "start": rng.start,
        "end": rng.end,
        "tz": rng.timezone,
        "period": rng.by,
    }
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
    """The stale days' counts from their sets, in one pass over their span; settled days cached."""
    apps = sorted({app for app, _ in stale})
    rows = scope.query(
        "console_usage_hours",
        apps=apps if len(apps) <= _MAX_LISTED_APPS else [],
        first=min(day for _, day in stale),
        last=max(day for _, day in stale),
    )
    tz = ZoneInfo(rng.timezone)
    out: list[tuple[Any, ...]] = []
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
            out.append((key[0], str(kind), _period_key(rng, hour, tz), int(sessions)))
    horizon = now - SETTLED_AFTER
    settled = [
        [scope.account_id, app_id, day_date, day.version, day.hours, day.kinds, day.sessions]
        for (app_id, day_date), day in days.items()
        if datetime.combine(day_date + timedelta(days=1), datetime.min.time(), UTC) <= horizon
    ]
    if settled:
        scope.insert("usage_day_counts", _CACHE_COLUMNS, settled)
    return out


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
