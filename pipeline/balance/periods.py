"""Billing periods and plan terms: UTC calendar months, and when a plan change takes effect.

The billing period is the UTC calendar month, whatever zone a report is read in: a plan change
scheduled "for the next period" is one instant for every reader. Terms are counted in calendar
months from the instant a plan took effect; a day that the target month lacks is clamped to its
last day (31 January + 1 month = 28 or 29 February), the time of day is kept.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: How a requested plan change is carried out (docs/balances.md, "Changing plans").
ChangeKind = Literal["start", "upgrade", "downgrade", "renewal", "switch"]


def _datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _ms(value: datetime) -> int:
    delta = value - EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def add_months(ms: int, months: int) -> int:
    """``ms`` moved by ``months`` calendar months (UTC), the day clamped to the target month's length."""
    t = _datetime(ms)
    index = t.year * 12 + (t.month - 1) + months
    year, month = divmod(index, 12)
    day = min(t.day, calendar.monthrange(year, month + 1)[1])
    return _ms(t.replace(year=year, month=month + 1, day=day))


def period_start(ms: int) -> int:
    """The first instant of the UTC calendar month that holds ``ms``: the billing period's start."""
    t = _datetime(ms)
    return _ms(t.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


def next_period_start(ms: int) -> int:
    """The first instant of the billing period after the one that holds ``ms``."""
    return add_months(period_start(ms), 1)


def plan_change(
    *,
    current_rank: int | None,
    current_name: str | None,
    expires_ms: int | None,
    new_rank: int,
    new_name: str,
    now_ms: int,
) -> tuple[ChangeKind, int]:
    """How a change to plan ``new_name`` requested at ``now_ms`` is carried out, and from when.

    - no plan yet (``start``), or the plan in force has expired: the new plan now;
    - a plan of higher rank (``upgrade``): now;
    - a plan of lower rank (``downgrade``): at the start of the next billing period, so the
      period already paid for at the higher rank is kept;
    - the plan in force again (``renewal``): a new term from the end of the current one (now if
      the plan has no term); it also withdraws a downgrade still pending;
    - another plan of the same rank (``switch``): now.

    The event for it is one ``plan_changed`` with this ``effective_at``; decided now, it replaces
    any change that is still pending (``pipeline.balance.plans.cancelled_plans``).
    """
    if current_rank is None or current_name is None or (expires_ms is not None and expires_ms <= now_ms):
        return "start", now_ms
    if new_name == current_name:
        return "renewal", now_ms if expires_ms is None else expires_ms
    if new_rank > current_rank:
        return "upgrade", now_ms
    if new_rank < current_rank:
        return "downgrade", next_period_start(now_ms)
    return "switch", now_ms
