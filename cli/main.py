"""The `metering` command line (`docs/interfaces.md`): thin commands over the modules that do the work."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
from rich.console import Console

from consumers.reports.sessions import SESSION_COLUMNS, session_rows
from pipeline.compute import Days, Periods, kept_sessions
from pipeline.compute import compute as compute_usage
from pipeline.contract.events import MAX_IDLE_TIMEOUT_MINUTES, MIN_IDLE_TIMEOUT_MINUTES
from pipeline.infra import logs
from pipeline.infra.progress import FileProgress
from pipeline.infra.report import FORMATS, Format, render
from pipeline.infra.settings import Settings, SettingsError
from pipeline.rules.attribution import PERIODS, Period, UnknownZoneError, zone
from pipeline.rules.config import MINUTE, RulesConfig

if TYPE_CHECKING:
    from pipeline.infra.publish import Publisher

EXIT_UNREADABLE = 2
EXIT_BAD_SETTINGS = 78
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service the command needs does not answer


def load_settings() -> Settings:
    """The settings from the environment, logging configured; a clear exit on a wrong setting.

    Without METERING_KAFKA_BOOTSTRAP, Kafka is the broker `metering run` started for the data
    directory, where it announced itself (``devtools.local_kafka.running_broker``).
    """
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_BAD_SETTINGS)
    logs.setup(settings.log_level, settings.log_format)
    return with_data_dir_broker(settings)


def with_data_dir_broker(settings: Settings) -> Settings:
    """``settings`` pointed at the data directory's running broker, unless a bootstrap was given."""
    if settings.kafka_bootstrap_given:
        return settings
    from devtools.local_kafka import running_broker  # here: compute never loads the Kafka client

    broker = running_broker(settings.data_dir / "kafka")
    return settings if broker is None else replace(settings, kafka_bootstrap=broker.bootstrap)


def _waiting(message: str) -> None:
    """What a command says while it waits for the metering service starting on its data directory (one line)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class _MeteringCommands(click.Group):
    """Kafka that cannot be reached or set up ends any command with one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RuntimeError as exc:
            from pipeline.infra.kafka import KafkaSetupError  # here: compute never loads the Kafka client

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
@click.option(
    "--by",
    type=click.Choice(PERIODS),
    default="day",
    show_default=True,
    help="Period of a row: local hour, day, ISO week (from Monday) or calendar month.",
)
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None, help="First local day counted.")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Last local day counted.")
@click.option("--zero-fill", is_flag=True, help="Every period from --from to --to, for every app, zeros included.")
@click.option("--sessions", is_flag=True, help="One row per billing session (the console's sessions export).")
def compute(
    events_path: Path,
    tz_name: str,
    idle_timeout: int,
    fmt: Format,
    by: Period,
    start: datetime | None,
    end: datetime | None,
    zero_fill: bool,
    sessions: bool,
) -> None:
    """Apply the billing rules to a file of events and print per-app usage per day (or --by period), offline.

    With --sessions, one row per billing session instead, in the columns of the console's
    sessions export, sorted by start then billing_session_id.
    """
    err = Console(stderr=True)
    try:
        tz = zone(tz_name)
    except UnknownZoneError as exc:
        raise click.BadParameter(str(exc), param_hint="--timezone") from exc
    if start and end and start > end:
        raise click.BadParameter(f"{start:%Y-%m-%d} is after --to {end:%Y-%m-%d}", param_hint="--from")
    if zero_fill and not (start and end):
        raise click.BadParameter("give --from and --to: the periods to fill", param_hint="--zero-fill")
    config = RulesConfig(idle_timeout_ms=idle_timeout * MINUTE)
    days = Days.between(start.date() if start else None, end.date() if end else None)
    within = days if start or end else None

    def on_invalid(lineno: int, reason: str) -> None:
        sys.stderr.write(f"{events_path}:{lineno}: skipped: {reason[:300]}\n")

    try:
        size = events_path.stat().st_size
        if events_path.is_dir():
            raise IsADirectoryError(f"{events_path} is a directory")
        with FileProgress(err, size, "metering") as on_progress:
            result = compute_usage(
                events_path,
                tz,
                config,
                now_ms=int(time.time() * 1000),
                on_invalid=on_invalid,
                on_progress=on_progress,
                keep=days if sessions else None,
                periods=Periods(by, within),
            )
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {events_path}: {exc.strerror or exc}")
        sys.exit(EXIT_UNREADABLE)
    if sessions:
        rows = session_rows(kept_sessions(result, tz, days))
        sys.stdout.write(render(SESSION_COLUMNS, rows, fmt, title=f"Billing sessions ({tz_name})"))
    else:
        columns, table = result.report(zero_fill=zero_fill)
        sys.stdout.write(render(columns, table, fmt, title=f"Usage by {by} ({tz_name})"))
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
    from devtools.produce import produce_command

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
    from cli.usage_command import usage_text

    settings = load_settings()
    _write_report(
        lambda: usage_text(
            settings,
            start=start.date() if start else None,
            end=end.date() if end else None,
            apps=apps,
            account=account,
            by=by,
            tz=tz_name or settings.timezone,
            fmt=fmt,
            on_wait=_waiting,
        )
    )


def _write_report(text_of: Callable[[], str]) -> None:
    """A report's text on stdout; a wrong parameter as click's usage error, a store out of reach as exit status 1."""
    from cli.usage_command import StoreBusyError
    from consumers.clickhouse import ClickHouseError
    from consumers.reports.usage import UsageParameterError

    try:
        text = text_of()
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
    from cli.reconcile import reconcile_command

    sys.exit(
        reconcile_command(
            load_settings(), start=start.date(), end=end.date(), tz=tz_name, archive=archive, repair=repair, fmt=fmt
        )
    )


@main.group(invoke_without_command=True)
@click.option("--account", default=None, help="Only this account.")
@click.option("--month", default=None, help="Month as YYYY-MM [default: the current one in the zone].")
@click.option("--timezone", "tz_name", default=None, help="IANA zone of the month [default: METERING_TIMEZONE or UTC].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def plans(ctx: click.Context, account: str | None, month: str | None, tz_name: str | None, fmt: Format) -> None:
    """Every app's plan, status, balance and this month's usage and cost, from ClickHouse.

    Subcommands handle extension requests: `requests` lists them, `extend` grants one, `decline` refuses it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cli.usage_command import plans_text

    settings = load_settings()
    _write_report(
        lambda: plans_text(
            settings, account=account, month=month, tz=tz_name or settings.timezone, fmt=fmt, on_wait=_waiting
        )
    )


@plans.command("requests")
@click.option("--account", default=None, help="Only this account.")
@click.option("--all", "show_all", is_flag=True, help="Decided requests too, not only pending ones.")
def plans_requests(account: str | None, show_all: bool) -> None:
    """Extension requests waiting for an operator (with --all, decided ones too)."""
    from cli.plan_actions import extension_requests

    found = [
        r for r in _run_action(lambda s: extension_requests(s, account=account)) if show_all or r.status == "pending"
    ]
    columns = ("request_id", "account_id", "app_id", "days", "requested_at", "status", "reason")
    rows = [(r.request_id, r.account_id, r.app_id, r.days, r.requested_at, r.status, r.reason) for r in found]
    sys.stdout.write(render(columns, rows, "table", title="Extension requests"))


@plans.command("extend")
@click.argument("request_id")
@click.option("--days", type=click.IntRange(1, 366), default=None, help="Days to grant [default: as requested].")
def plans_extend(request_id: str, days: int | None) -> None:
    """Grant an extension request: the plan's term ends that many days later."""
    from cli.plan_actions import decide_extension

    def act(settings: Settings, publisher: Publisher) -> str:
        found = decide_extension(settings, publisher, request_id, grant=True, days=days)
        return f"granted {days or found.days} days to {found.app_id} ({found.account_id}), request {request_id}\n"

    sys.stdout.write(_run_publishing(act))


@plans.command("decline")
@click.argument("request_id")
@click.option("--reason", default=None, help="Why, for the account's admins.")
def plans_decline(request_id: str, reason: str | None) -> None:
    """Decline an extension request: the term stays as it is."""
    from cli.plan_actions import decide_extension

    def act(settings: Settings, publisher: Publisher) -> str:
        found = decide_extension(settings, publisher, request_id, grant=False, reason=reason)
        return f"declined request {request_id} of {found.app_id} ({found.account_id})\n"

    sys.stdout.write(_run_publishing(act))


T = TypeVar("T")


def _run_action(act: Callable[[Settings], T]) -> T:
    """An operator's action with its errors as one line and exit status 1."""
    from cli.plan_actions import ActionError
    from cli.usage_command import StoreBusyError
    from consumers.clickhouse import ClickHouseError
    from pipeline.infra.publish import PublishError

    try:
        return act(load_settings())
    except (ActionError, StoreBusyError, ClickHouseError, PublishError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)


def _run_publishing(act: Callable[[Settings, Publisher], T]) -> T:
    """:func:`_run_action` for an action that publishes: one Kafka producer, closed whatever happens."""
    from pipeline.infra.publish import KafkaPublisher

    def with_publisher(settings: Settings) -> T:
        publisher = KafkaPublisher(settings)
        try:
            return act(settings, publisher)
        finally:
            publisher.close()

    return _run_action(with_publisher)


@main.group()
def orders() -> None:
    """The order processor, and operators' word on payments (bank transfers, refunds)."""


@orders.command("process")
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default METERING_METRICS_PORT).")
@click.option("--instance", type=click.IntRange(min=0), default=0, show_default=True, help="This processor's number.")
def orders_process(metrics_port: int | None, instance: int) -> None:
    """Run the order processor: orders, payments, invoice numbers and funds (Kafka transactions)."""
    from pipeline.stream.orders import run_orders

    sys.exit(run_orders(load_settings(), metrics_port, instance))


def _payment_command(status: str, summary: str) -> Callable[..., None]:
    @click.argument("order_id")
    @click.option("--account", required=True, help="The account the order belongs to.")
    @click.option("--reference", default=None, help="The payment's reference (bank transfer id, ...).")
    @click.option("--reason", default=None, help="Why (shown on a failed order).")
    def command(order_id: str, account: str, reference: str | None, reason: str | None) -> None:
        from cli.plan_actions import record_payment

        def act(settings: Settings, publisher: Publisher) -> str:
            record_payment(
                settings,
                publisher,
                account_id=account,
                order_id=order_id,
                status=status,  # type: ignore[arg-type]
                reference=reference,
                reason=reason,
            )
            return f"order {order_id} of {account}: {status} recorded; the order processor applies it\n"

        sys.stdout.write(_run_publishing(act))

    command.__doc__ = summary
    return command


orders.command("paid")(_payment_command("paid", "Record that an order's money arrived: it is invoiced and funded."))
orders.command("failed")(_payment_command("failed", "Record that an order will not be paid: nothing is added."))
orders.command("refund")(
    _payment_command("refunded", "Record a refund of a paid order: a credit note, funds taken back.")
)


@main.command()
def migrate() -> None:
    """Apply the ClickHouse migrations (idempotent; the service also migrates at start-up)."""
    from cli.usage_command import StoreBusyError, migrate_text
    from consumers.clickhouse import ClickHouseError

    try:
        sys.stdout.write(migrate_text(load_settings(), on_wait=_waiting))
    except (StoreBusyError, ClickHouseError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)


@main.command()
def sink() -> None:
    """Run the ClickHouse sink with the usage API and metrics (the process that owns ClickHouse)."""
    import signal
    import threading

    from cli.service import StoreEndpoints, serve_store
    from cli.store_lock import DataDirBusyError, ReaderHold, StoreLock

    settings = load_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    err = Console(stderr=True)

    def ready(endpoints: StoreEndpoints) -> None:
        err.print(f"usage API {endpoints.api}  metrics {endpoints.metrics}  ClickHouse {endpoints.clickhouse_url}")

    try:  # the embedded database is this process's alone, from before it opens it (cli.store_lock)
        owned = (
            StoreLock.acquire(settings.data_dir, "metering sink", on_wait=_waiting)
            if settings.embedded_clickhouse
            else ReaderHold(None)
        )
    except DataDirBusyError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    with owned:
        serve_store(settings, stop, ready)


@main.command()
@click.option("--demo", is_flag=True, help="Also generate realistic live traffic.")
@click.option("--demo-rate", type=click.FloatRange(min=0.1), default=50.0, show_default=True, help="Demo events/s.")
def run(demo: bool, demo_rate: float) -> None:
    """Start everything on this machine (broker, workers, sink, usage API, metrics) until Ctrl-C."""
    from cli.run import run as run_pipeline

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
    from pipeline.infra.settings import SettingsError

    try:
        code = run_notifier(load_settings(), metrics_port)
    except SettingsError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        code = EXIT_BAD_SETTINGS
    sys.exit(code)


@main.command()
@click.option("--account", required=True, help="The account_id claim: whose billing the token opens.")
@click.option("--user", default="local-admin", show_default=True, help="The sub claim (user id).")
@click.option("--role", type=click.Choice(["admin", "member"]), default="admin", show_default=True)
@click.option("--shared", is_flag=True, help="A shared-account user (from another workspace): no Billing.")
@click.option("--ttl", default="8h", show_default=True, help="Lifetime: a number and s, m, h or d (e.g. 30m, 8h, 7d).")
def token(account: str, user: str, role: str, shared: bool, ttl: str) -> None:
    """Print a console token (HS256, this deployment's secret) for local use, demos and tests."""
    from console.token_command import TokenCommandError, token_text

    try:
        sys.stdout.write(token_text(load_settings(), account=account, user=user, role=role, shared=shared, ttl=ttl))
    except TokenCommandError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(EXIT_UNREADABLE)
