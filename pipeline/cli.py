"""The `metering` command line (`interfaces.md`): thin commands over the modules that do the work."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from pipeline import logs
from pipeline.compute import OnProgress
from pipeline.compute import compute as compute_usage
from pipeline.events import MAX_IDLE_TIMEOUT_MINUTES, MIN_IDLE_TIMEOUT_MINUTES
from pipeline.report import FORMATS, Format, render
from pipeline.rules.attribution import USAGE_COLUMNS, UnknownZoneError, zone
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.settings import Settings, SettingsError

EXIT_UNREADABLE = 2
EXIT_BAD_SETTINGS = 78


def load_settings() -> Settings:
    """The settings from the environment, logging configured; a clear exit on a wrong setting."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_BAD_SETTINGS)
    logs.setup(settings.log_level, settings.log_format)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Meter conversational-AI usage into billing sessions."""


@main.command()
@click.option(
    "--events", "events_path", required=True, type=click.Path(path_type=Path), help="JSON-lines file of events."
)
@click.option("--timezone", "tz_name", default="UTC", show_default=True, help="IANA zone that defines the days.")
@click.option(
    "--idle-timeout",
    type=click.IntRange(MIN_IDLE_TIMEOUT_MINUTES, MAX_IDLE_TIMEOUT_MINUTES),
    default=15,
    show_default=True,
    help="Minutes of silence that end a conversation session.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
def compute(events_path: Path, tz_name: str, idle_timeout: int, fmt: Format) -> None:
    """Apply the billing rules to a file of events and print per-app per-day usage (offline)."""
    err = Console(stderr=True)
    try:
        tz = zone(tz_name)
    except UnknownZoneError as exc:
        raise click.BadParameter(str(exc), param_hint="--timezone") from exc
    config = RulesConfig(idle_timeout_ms=idle_timeout * MINUTE)

    def on_invalid(lineno: int, reason: str) -> None:
        sys.stderr.write(f"{events_path}:{lineno}: skipped: {reason[:300]}\n")

    try:
        size = events_path.stat().st_size
        if events_path.is_dir():
            raise IsADirectoryError(f"{events_path} is a directory")
        with _progress(err, size, "metering") as on_progress:
            result = compute_usage(
                events_path, tz, config, now_ms=int(time.time() * 1000), on_invalid=on_invalid, on_progress=on_progress
            )
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {events_path}: {exc.strerror or exc}")
        sys.exit(EXIT_UNREADABLE)
    sys.stdout.write(render(USAGE_COLUMNS, result.rows, fmt, title=f"Usage by day ({tz_name})"))
    s = result.stats
    note = " (file not in time order: metered again in time order)" if result.resorted else ""
    sys.stderr.write(
        f"read {result.lines} lines: {s.events + result.plan_events} events, {result.invalid} invalid, "
        f"{s.duplicates} duplicates; {s.sessions_billable} billable conversation sessions, "
        f"{s.sessions_non_interactive} non-interactive, {s.sessions_test} test{note}\n"
    )


@main.command()
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default METERING_METRICS_PORT).")
def worker(metrics_port: int | None) -> None:
    """Run one stream worker; start several with the same settings to share the partitions."""
    from pipeline.stream.worker import run_worker  # faust is imported only by the commands that need it

    run_worker(load_settings(), metrics_port)


class _progress:
    """A byte-progress bar on a terminal; nothing when stderr is not one."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        self._progress: Progress | None = None
        if console.is_terminal and total > 8 * 1024 * 1024:
            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> OnProgress | None:
        if self._progress is None:
            return None
        self._progress.start()
        progress, task = self._progress, self._task
        return lambda done: progress.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

