"""The usage dashboard's ranges and periods (console.md §1), as plain functions of "now" and a zone.

- ``24h``: the 24 whole hours ending with the current one, in the reporting zone (a half-hour
  zone's hours start at half past UTC), by hour only;
- ``7d``, ``30d``: the last 7 or 30 local days, today included; ``3m``: the last three calendar
  months, this one included, up to today; ``custom``: ``from``..``to``, inclusive local dates,
  at most 366 days;
- granularity ``hour`` (24h only), ``day``, ``week`` (ISO, from Monday; a week cut by the range
  is labelled by its Monday) or ``month``; defaults 24h by hour, 7d and 30d by day, 3m by week,
  custom by day.

Every period is a half-open interval of UTC instants whose ends are local period starts; each
15-minute bucket lies in exactly one (every offset is a multiple of 15 minutes). No I/O, no
clock: "now" is an argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal, get_args
from zoneinfo import ZoneInfo

from console.errors import ApiError, bad_parameter
from pipeline.rules.attribution import UnknownZoneError, zone

__all__ = [
    "BYS",
    "MAX_CUSTOM_DAYS",
    "RANGES",
    "By",
    "Period",
    "RangeName",
    "UsageRange",
    "first_of_period",
    "resolve_range",
]

RangeName = Literal["24h", "7d", "30d", "3m", "custom"]
By = Literal["hour", "day", "week", "month"]
RANGES: Final[tuple[str, ...]] = get_args(RangeName)
BYS: Final[tuple[str, ...]] = get_args(By)
DEFAULT_RANGE: Final = "30d"
DEFAULT_BY: Final[dict[str, By]] = {"24h": "hour", "7d": "day", "30d": "day", "3m": "week", "custom": "day"}
MAX_CUSTOM_DAYS: Final = 366
#: DateTime in ClickHouse spans 1970 to 2106; local days near the ends would not fit.
FIRST_DAY: Final = date(1971, 1, 1)
LAST_DAY: Final = date(2105, 12, 31)
_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR: Final = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Period:
    """One point of the series: ``[start, end)`` in UTC, labelled as console.md says."""

    label: str  # YYYY-MM-DD, or for hours the start in RFC 3339 with the zone's offset
    start: datetime  # UTC
    end: datetime  # UTC
    first_day: date  # the local days this period covers within the range (seats are taken over them)
    last_day: date


@dataclass(frozen=True, slots=True)
class UsageRange:
    name: RangeName
    by: By
    timezone: str
    periods: tuple[Period, ...]

    @property
    def start(self) -> datetime:
        return self.periods[0].start

    @property
    def end(self) -> datetime:
        return self.periods[-1].end

    @property
    def first_day(self) -> date:
        return self.periods[0].first_day

    @property
    def last_day(self) -> date:
        return self.periods[-1].last_day

    @property
    def label_from(self) -> str:
        return self.periods[0].label if self.by == "hour" else self.first_day.isoformat()

    @property
    def label_to(self) -> str:
        return self.periods[-1].label if self.by == "hour" else self.last_day.isoformat()


def check_zone(name: str) -> ZoneInfo:
    try:
        return zone(name)
    except UnknownZoneError as exc:
        raise bad_parameter("timezone", f"{exc}") from exc
    except OSError as exc:  # zoneinfo opens files: "America" is a directory, a long name is too long
        raise bad_parameter(
            "timezone", f"unknown time zone {name[:100]!r}: use an IANA name such as UTC or Asia/Kolkata"
        ) from exc


def parse_day(parameter: str, value: str) -> date:
    fix = "give a local date as YYYY-MM-DD, e.g. 2026-03-01"
    if not _DAY.match(value):
        raise bad_parameter(parameter, f"{value!r} is not a date: {fix}")
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise bad_parameter(parameter, f"{value!r} is not a valid date ({exc}): {fix}") from exc
    if not FIRST_DAY <= day <= LAST_DAY:
        raise bad_parameter(parameter, f"{value} is out of range: give a date from {FIRST_DAY} to {LAST_DAY}")
    return day


def resolve_range(  # noqa: PLR0912 - one branch per range name and parameter check, each naming its parameter
    now: datetime,
    *,
    range_name: str | None,
    start: str | None,
    end: str | None,
    by: str | None,
    timezone: str,
) -> UsageRange:
    """The periods a request asks for; :class:`ApiError` 400 naming the first wrong parameter."""
    tz = check_zone(timezone)
    if range_name is None:
        range_name = "custom" if start is not None or end is not None else DEFAULT_RANGE
    if range_name not in RANGES:
        raise bad_parameter("range", f"unknown range {range_name!r}: use one of {', '.join(RANGES)}")
    if by is not None and by not in BYS:
        raise bad_parameter("by", f"unknown granularity {by!r}: use one of {', '.join(BYS)}")
    chosen: By = DEFAULT_BY[range_name] if by is None else by  # type: ignore[assignment]
    if range_name != "custom":
        for name, value in (("from", start), ("to", end)):
            if value is not None:
                raise bad_parameter(name, f"is for range=custom only (the range is {range_name}): leave it out")
    if (range_name == "24h") != (chosen == "hour"):
        if chosen == "hour":
            raise bad_parameter("by", f"hour is for the 24h range only (the range is {range_name})")
        raise bad_parameter("by", "the 24h range is shown by hour: use by=hour or leave it out")
    local_now = now.astimezone(tz)
    today = local_now.date()
    if range_name == "24h":
        return UsageRange("24h", "hour", timezone, _hours(local_now, tz))
    if range_name == "custom":
        if start is None or end is None:
            missing = "from" if start is None else "to"
            raise bad_parameter(missing, "is required for a custom range: give both from and to (YYYY-MM-DD)")
        first, last = parse_day("from", start), parse_day("to", end)
        if first > last:
            raise bad_parameter("from", f"{first} is after to ({last}): give the earlier date first")
        days = (last - first).days + 1
        if days > MAX_CUSTOM_DAYS:
            raise bad_parameter("to", f"the range is {days} days: a custom range is at most {MAX_CUSTOM_DAYS} days")
    elif range_name == "3m":
        first, last = _months_back(today.replace(day=1), 2), today
    else:
        first, last = today - timedelta(days=int(range_name.removesuffix("d")) - 1), today
    if not (first >= FIRST_DAY and last <= LAST_DAY):
        raise ApiError(400, "the range is out of the dates this console serves", parameter="range")
    return UsageRange(range_name, chosen, timezone, _day_periods(first, last, chosen, tz))  # type: ignore[arg-type]


def _hours(local_now: datetime, tz: ZoneInfo) -> tuple[Period, ...]:
    """The 24 whole local hours ending with the current one (DST: 24 real hours, labels show the offset)."""
    current = local_now.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    out = []
    for k in range(23, -1, -1):
        start = current - k * _HOUR
        local = start.astimezone(tz)
        out.append(Period(local.isoformat(), start, start + _HOUR, local.date(), local.date()))
    return tuple(out)


def first_of_period(day: date, by: By) -> date:
    if by == "week":
        return day - timedelta(days=day.weekday())
    if by == "month":
        return day.replace(day=1)
    return day


def _next_period(first: date, by: By) -> date:
    if by == "week":
        return first + timedelta(days=7)
    if by == "month":
        return _months_back(first, -1)
    return first + timedelta(days=1)


def _months_back(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of a local day, in UTC (a skipped midnight: the instant of the change)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _day_periods(first: date, last: date, by: By, tz: ZoneInfo) -> tuple[Period, ...]:
    out = []
    label = first_of_period(first, by)
    while label <= last:
        following = _next_period(label, by)
        inside_first, inside_last = max(label, first), min(following - timedelta(days=1), last)
        out.append(
            Period(
                label.isoformat(),
                local_midnight(inside_first, tz),
                local_midnight(inside_last + timedelta(days=1), tz),
                inside_first,
                inside_last,
            )
        )
        label = following
    return tuple(out)
