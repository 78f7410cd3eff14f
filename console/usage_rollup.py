"""Usage per kind and period from the hourly rollup (migration 006): cached counts, exact by version.

For a zone whose offset is a whole number of hours over the range, every period is a union of
UTC hours. ``console_usage_hourly.sql`` sums, per kind and period, the cached count of every
hour whose cache version still equals the rows inserted into it (nothing arrived since), and
lists the other hours; those are computed here from their sets (``console_usage_hours.sql``) and
their counts cached for the next request, unless the hour is recent (still filling: caching it
would only add a row per request).

The answer is the same as from ``usage_15m`` (``console_usage.sql``) at every instant, which
``tests/unit/test_console_usage_rollup.py`` checks under replays, voids and late sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from console.tenancy import AccountScope
from console.usage_range import UsageRange

__all__ = ["SETTLED_AFTER", "hourly_rows", "whole_hour_zone"]

#: Hours younger than this are computed from their sets every time, never cached.
SETTLED_AFTER: Final = timedelta(hours=2)
_STEP: Final = timedelta(hours=6)


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
    stale: dict[tuple[str, datetime, str], str] = {}
    for kind, key, sessions, stale_hours in scope.query("console_usage_hourly", **bounds):
        if sessions:
            out.append(("", str(kind), str(key), int(sessions)))
        for app_id, hour in stale_hours:
            stale[(str(app_id), _utc(hour), str(kind))] = str(key)
    if stale:
        out += _recompute(scope, rng, stale, datetime.now(UTC))
    return out


def _recompute(
    scope: AccountScope, rng: UsageRange, stale: dict[tuple[str, datetime, str], str], now: datetime
) -> list[tuple[Any, ...]]:
    keys = sorted({(app, hour) for app, hour, _ in stale})
    rows = scope.query("console_usage_hours", keys=keys, start=rng.start, end=rng.end)
    out: list[tuple[Any, ...]] = []
    settled: list[Sequence[Any]] = []
    horizon = now - SETTLED_AFTER
    for app_id, kind, hour_value, version, sessions in rows:
        hour = _utc(hour_value)
        period = stale.get((str(app_id), hour, str(kind)))
        if period is None:
            continue  # a kind of this hour whose cache was current: already counted
        out.append((str(app_id), str(kind), period, int(sessions)))
        if hour + timedelta(hours=1) <= horizon:
            settled.append([scope.account_id, str(app_id), hour, str(kind), int(version), int(sessions)])
    if settled:
        scope.insert("usage_1h_counts", ["account_id", "app_id", "hour", "kind", "version", "sessions"], settled)
    return out


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
