"""`metering reconcile`: recompute a period from every event there is, compare with ClickHouse, repair.

The stream bills an event only while it can still change a session that is not final (R9); a
later one is late, and this is how it (and a backfill, a replay, a fixed rules bug) reaches the
invoices. How it compares and repairs, and why running it twice changes nothing: docs/reconcile.md.
Modules in the order a run goes: period, store, topics, truth, compare, repair, run, render, command.
"""

from __future__ import annotations

from cli.reconcile.command import reconcile_command
from cli.reconcile.compare import Comparison, SessionDifference, compare, compare_days
from cli.reconcile.period import Period, ReconcileError
from cli.reconcile.render import render_report
from cli.reconcile.repair import Who
from cli.reconcile.run import Report, reconcile
from cli.reconcile.store import ApiStore, DirectStore, open_store
from cli.reconcile.topics import TopicDump
from cli.reconcile.truth import Truth, truth_from_archive

__all__ = [
    "ApiStore",
    "Comparison",
    "DirectStore",
    "Period",
    "ReconcileError",
    "Report",
    "SessionDifference",
    "TopicDump",
    "Truth",
    "Who",
    "compare",
    "compare_days",
    "open_store",
    "reconcile",
    "reconcile_command",
    "render_report",
    "truth_from_archive",
]
