"""A reconcile run: snapshot ClickHouse, then compute the truth, compare, and repair if asked.

ClickHouse is read *before* the topics' high watermarks are taken: every session it holds then
was computed from messages already in the topics, so none looks extra because the stream got
ahead of the read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cli.reconcile.compare import Comparison, DayDifference, compare, compare_days
from cli.reconcile.period import Period
from cli.reconcile.repair import Repaired, Who, in_period, repair_differences
from cli.reconcile.store import ReconcileStore
from cli.reconcile.truth import Truth

EXIT_EQUAL: Final = 0
EXIT_DIFFERENT: Final = 1


@dataclass
class Report:
    """Everything `metering reconcile` prints, and its exit status."""

    period: Period
    where: str
    truth: Truth
    comparison: Comparison
    days: list[DayDifference]
    repaired: Repaired | None = None

    @property
    def exit_code(self) -> int:
        if self.repaired is not None:
            clean = not self.repaired.days_after and not self.comparison.unrepairable
        else:
            clean = not self.days and not self.comparison.differences
        return EXIT_EQUAL if clean else EXIT_DIFFERENT


def reconcile(
    store: ReconcileStore,
    period: Period,
    truth_of: Callable[[], Truth],
    *,
    repair: bool,
    who: Who | None = None,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> Report:
    """Snapshot ClickHouse, then compute the truth (this order: see the module docstring), compare, repair."""
    stored = store.snapshot(period.widened())
    truth = truth_of()
    comparison = compare(truth, stored.sessions, period)
    days = compare_days(truth.rows, in_period(period, stored.usage))
    report = Report(period, store.where, truth, comparison, days)
    if repair:
        report.repaired = repair_differences(store, period, truth, comparison, days, who or Who.here(), now_ms)
    return report
