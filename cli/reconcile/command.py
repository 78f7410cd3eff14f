"""`metering reconcile`: the command's options in, the report out, an exit status that says what is left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Final

from confluent_kafka import KafkaException
from rich.console import Console

from cli.reconcile.period import Period, ReconcileError, make_period
from cli.reconcile.render import render_report, summary_text
from cli.reconcile.run import reconcile
from cli.reconcile.store import open_store
from cli.reconcile.truth import Truth, truth_from_archive, truth_from_topics
from cli.usage_command import StoreBusyError
from consumers.clickhouse import ClickHouseError
from pipeline.infra.kafka import KafkaSetupError
from pipeline.infra.report import Format
from pipeline.infra.settings import Settings

EXIT_ERROR: Final = 2


def reconcile_command(
    settings: Settings,
    *,
    start: date,
    end: date,
    tz: str | None,
    archive: Path | None,
    repair: bool,
    fmt: Format,
) -> int:
    """`metering reconcile`: 0 equal (or repaired), 1 differences left, 2 an error (stderr says what to do)."""
    err = Console(stderr=True)
    now_ms = time.time_ns() // 1_000_000
    try:
        period = make_period(start, end, tz or settings.timezone)
        if archive is not None:
            with archive.open("rb"):  # unreadable: say so before touching ClickHouse
                pass
        store = open_store(settings, on_wait=lambda message: err.print(message, highlight=False))
        try:
            report = reconcile(store, period, _truth_source(settings, period, archive, now_ms, err), repair=repair)
        finally:
            store.close()
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {exc.filename or archive}: {exc.strerror or exc}", highlight=False)
        return EXIT_ERROR
    except (ReconcileError, ClickHouseError, StoreBusyError, KafkaSetupError, KafkaException, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return EXIT_ERROR
    sys.stdout.write(render_report(report, fmt))
    sys.stderr.write(summary_text(report))
    return report.exit_code


def _truth_source(
    settings: Settings, period: Period, archive: Path | None, now_ms: int, console: Console
) -> Callable[[], Truth]:
    if archive is not None:
        return lambda: truth_from_archive(archive, period, settings.rules, now_ms=now_ms, console=console)
    return lambda: truth_from_topics(settings, period, now_ms=now_ms, console=console)
