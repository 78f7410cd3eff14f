"""`metering usage` and `metering migrate`: read or migrate ClickHouse, wherever it is held.

A ClickHouse server is queried directly. An embedded chDB database can be open in one
process only: when a store process (``metering run``/``sink``) serves, its API answers; while
one starts, the command waits for it (saying so) under the data directory's lock protocol
(``cli.store_lock``); otherwise the database is opened here, under a shared hold that
keeps a starting store out until it is closed. A database locked by a process outside that
protocol is reported with its pid and what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Final, TypeVar

from cli.service import discovery_file, find_running_store, read_discovery, read_token, token_file
from cli.store_client import TIMEOUT_SECONDS, StoreClient, StoreHttpError, StoreUnreachableError
from cli.store_lock import ReaderHold, holder, try_reader_hold
from consumers.clickhouse import ClickHouseUnavailableError, Client, connect, migrate, parse_url
from consumers.clickhouse.client import redact
from consumers.clickhouse.errors import MissingTablesError
from consumers.clickhouse.usage import named_query
from consumers.reports.plans import PlansQuery, plans_query, plans_report
from consumers.reports.usage import UsageParameterError, UsageQuery, usage_query, usage_report
from pipeline.infra.settings import Settings

__all__ = [
    "STORE_WAIT_SECONDS",
    "StoreBusyError",
    "migrate_text",
    "open_client",
    "plans_text",
    "reach_store",
    "running_store",
    "store_client",
    "usage_text",
]

#: How long a command waits for a metering service that is starting on its data directory.
STORE_WAIT_SECONDS: Final = 180.0
_POLL_SECONDS: Final = 0.25
_Query = TypeVar("_Query", UsageQuery, PlansQuery)
OnWait = Callable[[str], None]


class StoreBusyError(RuntimeError):
    """The database is held by a process that cannot be asked; the message says which and what to do."""


def usage_text(
    settings: Settings,
    *,
    start: date | None,
    end: date | None,
    apps: Sequence[str],
    account: str | None,
    by: str,
    tz: str,
    fmt: str,
    on_wait: OnWait | None = None,
) -> str:
    """What `metering usage` prints. Raises UsageParameterError for a bad option (it names it)."""
    query = usage_query(start=start, end=end, apps=apps, account=account, by=by, tz=tz, fmt=fmt)
    return _report(settings, query, usage_report, on_wait)


def plans_text(
    settings: Settings, *, account: str | None, month: str | None, tz: str, fmt: str, on_wait: OnWait | None = None
) -> str:
    """What `metering plans` prints. Raises UsageParameterError for a bad option (it names it)."""
    return _report(settings, plans_query(account=account, month=month, tz=tz, fmt=fmt), plans_report, on_wait)


def _report(
    settings: Settings, query: _Query, report: Callable[[Client, str, _Query], str], on_wait: OnWait | None
) -> str:
    """The running store's answer to ``query`` when it holds the embedded database, else ``report`` here."""
    settings = settings.with_clickhouse_default()
    hold = ReaderHold(None)
    if settings.embedded_clickhouse:
        reached = reach_store(settings, on_wait=on_wait)
        if isinstance(reached, str):
            return _ask(settings, reached, query)
        hold = reached
    with hold:
        client = open_client(settings)
        try:
            try:
                return report(client, settings.clickhouse_database, query)
            except MissingTablesError:
                if not settings.embedded_clickhouse:
                    raise
                # A fresh embedded database no store has started yet (or is about to): its schema is what
                # the store creates first; with it, the answer is the true one, nothing metered yet.
                migrate(client, settings.clickhouse_database)
                return report(client, settings.clickhouse_database, query)
        finally:
            client.close()


def reach_store(
    settings: Settings, *, on_wait: OnWait | None = None, wait_seconds: float = STORE_WAIT_SECONDS
) -> str | ReaderHold:
    """How to read the embedded database now: the running store's API, or a hold to open it here under.

    While a store is starting on the data directory it owns the database: wait until it serves
    (``on_wait`` hears it once), then use its API. StoreBusyError when it has not served within
    ``wait_seconds``; release a returned hold after closing the database.
    """
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        api = running_store(settings)
        if api is not None:
            return api
        hold = try_reader_hold(settings.data_dir)
        if hold is not None:
            return hold
        owner = holder(settings.data_dir)  # None: another command reads the database; its turn ends soon
        if time.monotonic() >= deadline:
            raise StoreBusyError(
                f"the metering service ({owner.describe()}) that holds the data directory {settings.data_dir} did "
                f"not serve within {wait_seconds:.0f} s: its own output says why (or it is still starting); run "
                "this again once it serves"
                if owner is not None
                else f"another command has read the embedded database of {settings.data_dir} for "
                f"{wait_seconds:.0f} s: run this again when it is done"
            )
        if owner is not None and not told and on_wait is not None:
            on_wait(
                f"waiting for the metering service starting on {settings.data_dir} ({owner.describe()}) to serve: "
                "it holds the embedded database"
            )
            told = True
        time.sleep(_POLL_SECONDS)


def migrate_text(settings: Settings, on_wait: OnWait | None = None) -> str:
    """What `metering migrate` prints: the migrations applied now and before, or who applies them."""
    settings = settings.with_clickhouse_default()
    database = settings.clickhouse_database
    hold = ReaderHold(None)
    if settings.embedded_clickhouse:
        reached = reach_store(settings, on_wait=on_wait)
        if isinstance(reached, str):
            return (
                f"the running metering service ({reached}) holds the embedded database "
                f"{parse_url(settings.clickhouse_url).path} and applies migrations when it starts: nothing done "
                "here; restart it to apply new ones\n"
            )
        hold = reached
    with hold:
        client = open_client(settings)
        try:
            now = {m.version for m in migrate(client, database)}
            applied = named_query(client, database, "applied_migrations")
        finally:
            client.close()
    lines = [
        f"database {database} at {redact(settings.clickhouse_url)}: {len(now)} migration(s) applied now, "
        f"{len(applied)} in total"
    ]
    for version, name, _checksum in applied:
        state = "applied now" if int(version) in now else "already applied"
        lines.append(f"  {f'{int(version):03d}_{name}.sql':<40} {state}")
    return "\n".join(lines) + "\n"


def running_store(settings: Settings) -> str | None:
    """The running store's API if it serves the database asked for; StoreBusyError if it serves another.

    Also used by `metering reconcile`, which must go through the same owner.
    """
    api = find_running_store(settings)
    found = read_discovery(settings)
    if api is None or found is None:
        return None
    if found.database != settings.clickhouse_database:
        raise StoreBusyError(
            f"the running metering service (pid {found.pid}, {api}) holds the embedded database and serves "
            f"database {found.database!r}, not {settings.clickhouse_database!r}: set METERING_CLICKHOUSE_DATABASE "
            f"to {found.database!r}, or stop that service"
        )
    return api


def open_client(settings: Settings) -> Client:
    """Open ClickHouse here; an embedded database locked by an unannounced process is a StoreBusyError."""
    try:
        return connect(settings.clickhouse_url, settings.clickhouse_database)
    except ClickHouseUnavailableError as exc:
        if not settings.embedded_clickhouse:
            raise
        path = parse_url(settings.clickhouse_url).path
        raise StoreBusyError(
            f"the embedded database {path} is locked by {_holder(path)}, and no running metering service "
            f"announced itself in {discovery_file(settings)}. If that process is a metering service started with "
            "another METERING_DATA_DIR, run this command with the same one; otherwise stop that process and run "
            "this again (or point METERING_CLICKHOUSE_URL at a ClickHouse server)."
        ) from exc


def _holder(path: str) -> str:
    """``process 123 (metering run)`` from chDB's ``status`` lock file and /proc, as far as they tell."""
    try:
        status = Path(path, "status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "another process"
    pid = next((line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("PID:")), "")
    if not pid.isdigit():
        return "another process"
    try:
        raw = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ")
        command = " ".join(raw.decode(errors="replace").split())
    except OSError:
        command = ""
    if len(command) > 120:
        command = command[:117] + "..."
    return f"process {pid} ({command})" if command else f"process {pid}"


def store_client(settings: Settings, api: str, *, timeout: float = TIMEOUT_SECONDS) -> StoreClient:
    """A client of the running store with its operator token; StoreBusyError if this user cannot read it."""
    token = read_token(settings)
    if token is None:
        raise StoreBusyError(
            f"the running metering service at {api} holds the embedded database, but its operator token "
            f"{token_file(settings)} cannot be read: run this as the OS user that runs the service"
        )
    return StoreClient(api, token, timeout=timeout)


def _ask(settings: Settings, api: str, query: UsageQuery | PlansQuery) -> str:
    path = "/plans" if isinstance(query, PlansQuery) else "/usage"
    try:
        return store_client(settings, api).get_text(path, query.parameters())
    except StoreHttpError as exc:
        if exc.status == 400 and "parameter" in exc.body:
            body = exc.body
            raise UsageParameterError(
                str(body["parameter"]), str(body.get("problem", body.get("error", ""))), str(body.get("fix", ""))
            ) from exc
        raise ClickHouseUnavailableError(
            f"the running metering service at {api} answered {exc.status}: {exc.message}"
        ) from exc
    except StoreUnreachableError as exc:
        raise StoreBusyError(
            f"the running metering service at {api} did not answer ({exc}); if it has just stopped, run this again"
        ) from exc
