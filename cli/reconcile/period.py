"""The days a reconcile covers, and the error that stops a reconcile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from pipeline.compute import Days
from pipeline.rules.attribution import UnknownZoneError, zone

#: Days read either side of the period: a late agent transfer can move the start of a usage session
#: across midnight, and reconcile must see both places to move it rather than count it twice.
MARGIN_DAYS: Final = 1


class ReconcileError(RuntimeError):
    """Reconcile cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Period:
    """Local days ``first``..``last`` (inclusive) in the IANA zone ``tz``."""

    first: date
    last: date
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    @property
    def days(self) -> Days:
        return Days(self.first, self.last)

    def widened(self) -> Period:
        """The period and :data:`MARGIN_DAYS` either side: what is read to see sessions cross its edges."""
        margin = timedelta(days=MARGIN_DAYS)
        return Period(self.first - margin, self.last + margin, self.tz)

    def holds(self, day: str) -> bool:
        """Whether the ISO day ``day`` is one of the period's."""
        return self.first.isoformat() <= day <= self.last.isoformat()

    def __str__(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()} ({self.tz})"


def make_period(start: date, end: date, tz: str) -> Period:
    """A validated period; ReconcileError says what is wrong with the options."""
    first = start.date() if isinstance(start, datetime) else start
    last = end.date() if isinstance(end, datetime) else end
    if first > last:
        raise ReconcileError(f"--from {first} is after --to {last}: give the first day first")
    try:
        zone(tz)
    except UnknownZoneError as exc:
        raise ReconcileError(f"--timezone: {exc}") from exc
    return Period(first, last, tz)
