"""The `metering` command line (`interfaces.md`): thin commands over the modules that do the work."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console

from pipeline import logs
from pipeline.compute import compute as compute_usage
from pipeline.events import MAX_IDLE_TIMEOUT_MINUTES, MIN_IDLE_TIMEOUT_MINUTES
from pipeline.progress import FileProgress
from pipeline.report import FORMATS, Format, render
from pipeline.rules.attribution import UnknownZoneError, zone
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.settings import Settings, SettingsError

EXIT_UNREADABLE = 2
EXIT_BAD_SETTINGS = 78
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service the command needs does not answer


def load_settings() -> Settings:
    """The settings from the environment, logging configured; a clear exit on a wrong setting."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_BAD_SETTINGS)
    logs.setup(settings.log_level, settings.log_format)
    return settings


class _MeteringCommands(click.Group):
    """Kafka that cannot be reached or set up ends any command with one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RuntimeError as exc:
            from pipeline.kafka import KafkaSetupError  # here: compute never loads the Kafka client

            if not isinstance(exc, KafkaSetupError):
                raise
            Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
            sys.exit(EXIT_UNAVAILABLE)


@click.group(cls=_MeteringCommands, context_settings={"help_option_names": ["-h", "--help"]})
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
        with FileProgress(err, size, "metering") as on_progress:
            result = compute_usage(
                events_path, tz, config, now_ms=int(time.time() * 1000), on_invalid=on_invalid, on_progress=on_progress
            )
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {events_path}: {exc.strerror or exc}")
        sys.exit(EXIT_UNREADABLE)
    columns, rows = result.report()
    sys.stdout.write(render(columns, rows, fmt, title=f"Usage by day ({tz_name})"))
    s = result.stats
    note = " (file not in time order: metered again in time order)" if result.resorted else ""
    sys.stderr.write(
        f"read {result.lines} lines: {s.events + result.plan_events} events, {result.invalid} invalid, "
        f"{s.duplicates} duplicates; {s.sessions_billable} billable conversation sessions, "
        f"{s.sessions_non_interactive} non-interactive, {s.sessions_test} test{note}\n"
    )


@main.command()
@click.option("--file", "path", required=True, type=click.Path(path_type=Path), help="JSON-lines file of events.")
@click.option("--raw", is_flag=True, help="Send lines as they are, unvalidated and unkeyed (to exercise the DLQ).")
def produce(path: Path, raw: bool) -> None:
    """Publish a file of events to their input topics, keyed as the event contract says."""
    from pipeline.produce import produce_command

    sys.exit(produce_command(load_settings(), path, validate=not raw))


@main.command()
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None, help="First day (in the zone).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Last day, included.")
@click.option("--app", "apps", multiple=True, help="Only this app (repeatable).")
@click.option("--account", default=None, help="Only this account.")
@click.option("--by", type=click.Choice(["day", "week", "month"]), default="day", show_default=True)
@click.option("--timezone", "tz_name", default=None, help="IANA zone of the days [default: METERING_TIMEZONE or UTC].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def usage(
    start: datetime | None,
    end: datetime | None,
    apps: tuple[str, ...],
    account: str | None,
    by: str,
    tz_name: str | None,
    fmt: Format,
) -> None:
    """Per-app usage from ClickHouse (asks the running service when the database is embedded)."""
    from consumers.clickhouse import ClickHouseError
    from consumers.usage_api import UsageParameterError
    from consumers.usage_command import StoreBusyError, usage_text

    settings = load_settings()
    try:
        text = usage_text(
            settings,
            start=start.date() if start else None,
            end=end.date() if end else None,
            apps=apps,
            account=account,
            by=by,
            tz=tz_name or settings.timezone,
            fmt=fmt,
        )
    except UsageParameterError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{exc.parameter}") from exc
    except (StoreBusyError, ClickHouseError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    sys.stdout.write(text)


@main.command()
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day (in the zone).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last day, included.")
@click.option("--timezone", "tz_name", default=None, help="IANA zone of the days [default: METERING_TIMEZONE or UTC].")
@click.option(
    "--archive",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON-lines file of events to recompute from, instead of the input topics.",
)
@click.option("--repair", is_flag=True, help="Write the corrections (inserts, voids, an audit row) to ClickHouse.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def reconcile(
    start: datetime, end: datetime, tz_name: str | None, archive: Path | None, repair: bool, fmt: Format
) -> None:
    """Recompute days from every event, compare with ClickHouse and optionally repair.

    Exit status: 0 no differences (or all repaired), 1 differences remain, 2 an error.
    """
    from pipeline.reconcile import reconcile_command

    sys.exit(
        reconcile_command(
            load_settings(), start=start.date(), end=end.date(), tz=tz_name, archive=archive, repair=repair, fmt=fmt
        )
    )


@main.command()
@click.option("--account", default=None, help="Only this account.")
@click.option("--month", default=None, help="Month as YYYY-MM [default: the current one in the zone].")
@click.option("--timezone", "tz_name", default=None, help="IANA zone of the month [default: METERING_TIMEZONE or UTC].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def plans(account: str | None, month: str | None, tz_name: str | None, fmt: Format) -> None:
    """Every app's plan, status, balance and this month's usage and cost, from ClickHouse."""
    from consumers.clickhouse import ClickHouseError
    from consumers.usage_api import UsageParameterError
    from consumers.usage_command import StoreBusyError, plans_text

    settings = load_settings()
    try:
        text = plans_text(settings, account=account, month=month, tz=tz_name or settings.timezone, fmt=fmt)
    except UsageParameterError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{exc.parameter}") from exc
    except (StoreBusyError, ClickHouseError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    sys.stdout.write(text)


@main.command()
def migrate() -> None:
    """Apply the ClickHouse migrations (idempotent; the service also migrates at start-up)."""
    from consumers.clickhouse import ClickHouseError
    from consumers.usage_command import StoreBusyError, migrate_text

    try:
        sys.stdout.write(migrate_text(load_settings()))
    except (StoreBusyError, ClickHouseError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)


@main.command()
def sink() -> None:
    """Run the ClickHouse sink with the usage API and metrics (the process that owns ClickHouse)."""
    import signal
    import threading

    from consumers.service import StoreEndpoints, serve_store

    settings = load_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    err = Console(stderr=True)

    def ready(endpoints: StoreEndpoints) -> None:
        err.print(f"usage API {endpoints.api}  metrics {endpoints.metrics}  ClickHouse {endpoints.clickhouse_url}")

    serve_store(settings, stop, ready)


@main.command()
@click.option("--demo", is_flag=True, help="Also generate realistic live traffic.")
@click.option("--demo-rate", type=click.FloatRange(min=0.1), default=50.0, show_default=True, help="Demo events/s.")
def run(demo: bool, demo_rate: float) -> None:
    """Start everything on this machine (broker, workers, sink, usage API, metrics) until Ctrl-C."""
    from pipeline.run import run as run_pipeline

    sys.exit(run_pipeline(load_settings(), demo=demo, demo_rate=demo_rate, console=Console(soft_wrap=True)))


@main.command()
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default METERING_METRICS_PORT).")
@click.option(
    "--instance",
    type=click.IntRange(min=0),
    default=None,
    help="This worker's number, unique among concurrent ones: a restarted instance takes its partitions and "
    "transactional id back at once [default: a new id per process].",
)
def worker(metrics_port: int | None, instance: int | None) -> None:
    """Run one stream worker; start several with the same settings to share the partitions."""
    from pipeline.stream.worker import run_worker  # the Kafka clients are imported only by the commands that need them

    sys.exit(run_worker(load_settings(), metrics_port, instance))


@main.command()
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default METERING_METRICS_PORT).")
@click.option(
    "--instance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This processor's number: give each concurrent one its own (it names its transactional id).",
)
def balance(metrics_port: int | None, instance: int) -> None:
    """Keep per-app prepaid balances, balance alerts and the balance-state read model (R12)."""
    from pipeline.stream.balance import run_balance

    sys.exit(run_balance(load_settings(), metrics_port, instance))


@main.command()
@click.option("--port", type=int, default=None, help="HTTP port (default METERING_ENTITLEMENT_PORT).")
def entitlement(port: int | None) -> None:
    """Serve GET /v1/entitlement/{app_id}: may the app serve its users now (from balance-state)."""
    from consumers.entitlement import serve_entitlement

    sys.exit(serve_entitlement(load_settings(), port))


@main.command()
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default METERING_METRICS_PORT).")
def notify(metrics_port: int | None) -> None:
    """Log every balance alert and, with METERING_WEBHOOK_URL, deliver it to the webhook (signed, retried)."""
    from consumers.notifier import run_notifier
    from pipeline.settings import SettingsError

    try:
        code = run_notifier(load_settings(), metrics_port)
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        code = EXIT_BAD_SETTINGS
    sys.exit(code)
