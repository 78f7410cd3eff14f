"""R8: attribute billing sessions to the app and the calendar day of their start, in a zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
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


class DayOf:
    """Local calendar day of an instant, cached per 15-minute UTC bucket.

    Every offset and transition since 2000 falls on a quarter hour of UTC, so all instants
    of a bucket share a day; the cache makes attribution cost a dict lookup.
    """

    __slots__ = ("_cache", "_zone")

    def __init__(self, tz: ZoneInfo) -> None:
        self._zone = tz
        self._cache: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        bucket = ms // _BUCKET_MS
        day = self._cache.get(bucket)
        if day is None:
            day = datetime.fromtimestamp(bucket * _BUCKET_MS / 1000, UTC).astimezone(self._zone).date().isoformat()
            self._cache[bucket] = day
        return day


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
    """Per account, app and day totals: the figures `metering compute` and `usage` print."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.day_of = DayOf(tz)
        self.days: dict[tuple[str, str, str], DayUsage] = {}

    def add(self, session: BillingSession) -> None:
        key = (session.account_id, session.app_id, self.day_of(session.started_ms))
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
            for (acc, app, day), u in sorted(self.days.items())
        ]
