"""The truth: the rules over every event there is (the input topics, or an archive), for the period.

Metered by ``metering compute``'s exact path, so it is what `metering compute` prints for the
same events, whatever order they arrived in.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cli.reconcile.period import Period, ReconcileError
from cli.reconcile.topics import dump_topics
from pipeline.compute import ComputeResult, compute
from pipeline.infra.progress import FileProgress
from pipeline.infra.settings import Settings
from pipeline.rules.attribution import UsageBook, UsageRow
from pipeline.rules.config import RulesConfig
from pipeline.rules.model import BillingSession


@dataclass
class Truth:
    """The rules over all available events, for the period."""

    source: str
    #: Final sessions of the period's days and the margin days either side.
    sessions: list[BillingSession]
    unfinished: list[BillingSession]
    #: Usage of the period's days.
    rows: list[UsageRow]
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    invalid_examples: list[str] = field(default_factory=list)
    #: Events older than this may have been deleted by retention (None: nothing was deleted).
    complete_from_ms: int | None = None
    #: How long before its first event a conversation session can reach (longest idle gap).
    reach_ms: int = 0
    plans_truncated: bool = False
    #: A digest of exactly which input this is, for the insert tokens.
    scope: str = ""


def max_gap_ms(config: RulesConfig, plan_timeouts: Sequence[int] = ()) -> int:
    """The longest silence that can still join two events into one conversation session (R2)."""
    return max(config.idle_timeout_ms, *config.app_idle_timeout_ms.values(), *plan_timeouts,
               config.open_transfer_timeout_ms)  # fmt: skip


def truth_from_archive(
    path: Path, period: Period, config: RulesConfig, *, now_ms: int, console: Console | None = None
) -> Truth:
    """Meter a JSON-lines archive (any order) and keep the period's sessions."""
    invalid: list[str] = []

    def on_invalid(lineno: int, reason: str) -> None:
        if len(invalid) < 10:
            invalid.append(f"{path}:{lineno}: skipped: {reason[:300]}")

    if path.is_dir():
        raise ReconcileError(f"--archive {path} is a directory: give a JSON-lines file of events")
    stat = path.stat()
    with FileProgress(console or Console(stderr=True), stat.st_size, "recomputing") as on_progress:
        result = compute(
            path, period.zone, config, now_ms=now_ms, on_invalid=on_invalid, on_progress=on_progress,
            keep=period.widened().days,
        )  # fmt: skip
    truth = _metered(result, period, f"archive {path}", f"archive|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    truth.invalid, truth.invalid_examples, truth.reach_ms = result.invalid, invalid, max_gap_ms(config)
    return truth


def truth_from_topics(settings: Settings, period: Period, *, now_ms: int, console: Console | None = None) -> Truth:
    """Read the input topics up to their high watermarks into a temporary file and meter it."""
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="metering-reconcile-") as tmp:
        path = Path(tmp) / "events.jsonl"
        with path.open("wb") as out:
            dump = dump_topics(settings, out, now_ms=now_ms, console=console)
        status = console.status("recomputing in time order") if console.is_terminal else contextlib.nullcontext()
        with status:
            result = compute(
                path, period.zone, settings.rules, now_ms=now_ms, on_invalid=lambda *_: None,
                keep=period.widened().days, unordered=True,
            )  # fmt: skip
    marks = ",".join(f"{t}[{p}]={high}" for (t, p), (_, high) in sorted(dump.watermarks.items()))
    source = f"topics {', '.join(settings.topics.inputs)} at {settings.kafka_bootstrap}"
    truth = _metered(result, period, source, f"topics|{settings.kafka_bootstrap}|{marks}")
    truth.invalid, truth.rejected = sum(dump.rejected.values()), dict(dump.rejected)
    truth.complete_from_ms, truth.plans_truncated = dump.complete_from_ms, dump.plans_truncated
    truth.reach_ms = max_gap_ms(settings.rules, dump.plan_timeouts)
    return truth


def _metered(result: ComputeResult, period: Period, source: str, scope: str) -> Truth:
    """What both sources give alike: the sessions, usage per (account, app, day) of the period's days, counts."""
    book = UsageBook(period.zone)
    book.add_all(result.sessions)
    rows = [row for row in book.rows() if period.holds(row[2])]
    return Truth(
        source=source,
        sessions=result.sessions,
        unfinished=result.unfinished,
        rows=rows,
        events=result.stats.events + result.plan_events,
        duplicates=result.stats.duplicates,
        scope=scope,
    )
