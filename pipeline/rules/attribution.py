"""R8: attribute billing sessions to the app and the calendar day (or period) of their start, in a zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.rules.model import BillingSession

_BUCKET_MS: Final = 15 * 60 * 1000

USAGE_COLUMNS: Final = (
    "account_id",
    "app_id",
    "day",
    "conversations",
    "usage_sessions",
    "voice_sessions",
    "alert_sessions",
    "billing_sessions",
)


class UnknownZoneError(ValueError):
    """The reporting time zone is not an IANA zone this machine knows."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownZoneError(
            f"unknown time zone {name!r}: use an IANA name such as UTC, Europe/Paris or Asia/Kolkata"
        ) from exc


#: Reporting periods: local hours, days, ISO weeks (from Monday) and calendar months.
Period = Literal["hour", "day", "week", "month"]
PERIODS: Final[tuple[str, ...]] = get_args(Period)


def period_label(ms: int, tz: ZoneInfo, period: Period) -> str:
    """The local period an instant belongs to, as `metering compute --by` and the console's usage label it.

    Day, week and month: the period's first local day ``YYYY-MM-DD`` (a week's Monday, a month's
    1st). Hour: the start of the instant's local clock hour in RFC 3339 with the offset in force
    then (``2026-11-01T10:00:00+05:30``); the hour repeated when clocks go back is two periods,
    told apart by their offsets.
    """
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0).isoformat()
    day = local.date()
    if period == "week":
        day -= timedelta(days=day.weekday())
    elif period == "month":
        day = day.replace(day=1)
    return day.isoformat()


def period_order(label: str) -> str:
    """Sort key of a period label, in time order: a day's text as it is, an hour's start instant in UTC."""
    return datetime.fromisoformat(label).astimezone(UTC).isoformat() if len(label) > 10 else label


def label_day(label: str) -> date:
    """The local day a period label starts on (an hour's day)."""
    return date.fromisoformat(label[:10])


def period_labels(tz: ZoneInfo, period: Period, first: date, last: date) -> list[str]:
    """Every period that holds a local day from ``first`` to ``last`` (inclusive), in time order.

    Read off the same 15-minute buckets as :class:`PeriodOf`, so a label here is exactly one
    that attribution gives (a week or month cut by the range keeps its first day's label).
    """
    start = int(datetime.combine(first, time(0), tzinfo=tz).timestamp() * 1000)
    end = int(datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz).timestamp() * 1000)
    period_of = PeriodOf(tz, period)
    labels: list[str] = []
    for ms in range(start - start % _BUCKET_MS, end, _BUCKET_MS):
        label = period_of(ms)
        if not labels or labels[-1] != label:
            labels.append(label)
    return labels


class PeriodOf:
    """Local period of an instant (:func:`period_label`), cached per 15-minute UTC bucket.

    Every offset and transition since 2000 falls on a quarter hour of UTC, so all instants
    of a bucket share a local clock hour, hence a day, week and month; the cache makes
    attribution cost a dict lookup.
    """

    __slots__ = ("_cache", "_period", "_zone")

    def __init__(self, tz: ZoneInfo, period: Period = "day") -> None:
        self._zone = tz
        self._period: Period = period
        self._cache: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        bucket = ms // _BUCKET_MS
        label = self._cache.get(bucket)
        if label is None:
            label = period_label(bucket * _BUCKET_MS, self._zone, self._period)
            self._cache[bucket] = label
        return label


class DayOf(PeriodOf):
    """Local calendar day of an instant (R8), cached per 15-minute UTC bucket."""

    __slots__ = ()

    def __init__(self, tz: ZoneInfo) -> None:
        super().__init__(tz, "day")


@dataclass(slots=True)
class DayUsage:
    conversations: int = 0
    usage_sessions: int = 0
    voice_sessions: int = 0
    alert_sessions: int = 0

    @property
    def billing_sessions(self) -> int:
        """R8: usage plus alert; voice is reported beside them, not inside."""
        return self.usage_sessions + self.alert_sessions


UsageRow = tuple[str, str, str, int, int, int, int, int]


class UsageBook:
    """Per account, app and period totals: the figures `metering compute` and `usage` print.

    ``first``/``last`` (ISO local days, inclusive) count only the sessions that start on those
    days, so a week or month the range cuts holds only the days inside, as `metering usage`.
    """

    def __init__(self, tz: ZoneInfo, period: Period = "day", first: str = "", last: str = "") -> None:
        self.day_of = DayOf(tz)
        self.period_of = self.day_of if period == "day" else PeriodOf(tz, period)
        self.first = first
        self.last = last
        self.days: dict[tuple[str, str, str], DayUsage] = {}
        #: With a range: every (account, app) with a session, inside the range or not.
        self.apps: set[tuple[str, str]] = set()

    def add(self, session: BillingSession) -> None:
        if self.first:
            self.apps.add((session.account_id, session.app_id))
            local_day = self.day_of(session.started_ms)
            if local_day < self.first or local_day > self.last:
                return
        key = (session.account_id, session.app_id, self.period_of(session.started_ms))
        day = self.days.get(key)
        if day is None:
            day = self.days[key] = DayUsage()
        kind = session.kind
        if kind == "usage":
            day.usage_sessions += 1
        elif kind == "voice":
            day.voice_sessions += 1
        else:
            day.alert_sessions += 1
        if session.session_index == 0 and kind != "alert":
            day.conversations += 1

    def add_all(self, sessions: list[BillingSession]) -> None:
        for s in sessions:
            self.add(s)

    def rows(self) -> list[UsageRow]:
        return [
            (acc, app, day, u.conversations, u.usage_sessions, u.voice_sessions, u.alert_sessions, u.billing_sessions)
            for (acc, app, day), u in sorted(self.days.items(), key=_row_order)
        ]


def _row_order(item: tuple[tuple[str, str, str], DayUsage]) -> tuple[str, str, str]:
    acc, app, label = item[0]
    return acc, app, period_order(label)
