"""The store process: ClickHouse, its migrations, the sink, the usage API and the metrics, together.

One process owns the ClickHouse client because an embedded chDB database can be open in one
process only (``metering sink`` and ``metering run`` use this). It announces itself in
``<data_dir>/run/store.json`` while it serves, so ``metering usage`` and ``metering migrate``
in other processes ask it instead of failing on the database lock.

Beside it, ``<data_dir>/run/store.token`` (mode 0600, a fresh random token per start) is the
key to the API's reconcile endpoints: `metering reconcile` run by the same OS user reads it,
and nobody who merely reaches the port can change billing data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from consumers.clickhouse import ClickHouseUnavailableError, SessionStore, connect, migrate
from consumers.clickhouse.client import Client, redact
from consumers.clickhouse.plans import PlanStore
from consumers.plan_sinks import plan_sinks
from consumers.sink import ClickHouseSink
from pipeline.infra import metrics
from pipeline.infra.http import HTTPError, local_get
from pipeline.infra.kafka import KafkaSetupError, ensure_topics, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.stream.orders import ensure_account_topics

if TYPE_CHECKING:
    from console.server import ConsoleServer

__all__ = [
    "StoreEndpoints",
    "discovery_file",
    "find_running_store",
    "read_discovery",
    "read_token",
    "serve_store",
    "token_file",
]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS: Final = 60.0
#: How long the store waits for a process outside the data directory's lock protocol (a script of
#: one's own on chDB, an older `metering usage`) to close the embedded database it has open.
DATABASE_WAIT_SECONDS: Final = 60.0
_ANY_ADDRESS: Final = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class StoreEndpoints:
    """Where a running store process listens; the content of its discovery file."""

    pid: int
    api: str
    metrics: str
    clickhouse_url: str  # password redacted
    database: str


def discovery_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / "store.json"


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / "store.token"


def read_token(settings: Settings) -> str | None:
    """The running store's reconcile token, if this user can read it."""
    try:
        token = token_file(settings).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def serve_store(
    settings: Settings,
    stop: threading.Event,
    on_ready: Callable[[StoreEndpoints], None] | None = None,
    *,
    metrics_port: int | None = None,
) -> None:
    """Connect and migrate ClickHouse, serve the API and metrics, run the sink until ``stop``.

    ``on_ready`` is called once the API and metrics answer, before the sink starts. The
    discovery file exists exactly while the API serves. ``metrics_port`` overrides
    ``settings.metrics_port`` (``metering run`` gives each of its processes its own).
    """
    settings = settings.with_clickhouse_default()
    database = settings.clickhouse_database
    client = _connect_when_free(settings, stop)
    api: ConsoleServer | None = None
    token = secrets.token_urlsafe(32)
    try:
        applied = migrate(client, database)
        log.info(
            "ClickHouse ready",
            extra=fields(url=redact(settings.clickhouse_url), database=database, applied_now=[m.file for m in applied]),
        )
        # the console (console/): billing routes for account admins, operators' routes for the CLI
        from console.app import create_app, store_context  # noqa: PLC0415 - FastAPI loads only where it serves
        from console.billing import close_billing_extras  # noqa: PLC0415
        from console.server import ConsoleServer  # noqa: PLC0415

        app = create_app(store_context(settings, client, database, token))
        api = ConsoleServer(app, settings.api_host, settings.api_port)
        host, port = api.start()
        port_wanted = settings.metrics_port if metrics_port is None else metrics_port
        bound_metrics = _serve_metrics(port_wanted, settings.api_host)
        endpoints = StoreEndpoints(
            pid=os.getpid(),
            api=_url(host, port),
            metrics=_url(settings.api_host, bound_metrics) + "/metrics",
            clickhouse_url=redact(settings.clickhouse_url),
            database=database,
        )
        _write_token(settings, token)
        _write_discovery(settings, endpoints)
        try:
            log.info("store serving", extra=fields(**asdict(endpoints)))
            if on_ready is not None:
                on_ready(endpoints)
            if not _wait_for_broker(settings, stop):
                return
            ensure_topics(settings, [settings.topics.billing_sessions])
            _run_sinks(settings, client, database, stop)
        finally:
            _remove_discovery(settings)
            _remove_token(settings, token)
    finally:
        if api is not None:
            api.stop()
            close_billing_extras(api.app.state.console)
        client.close()


def _connect_when_free(settings: Settings, stop: threading.Event) -> Client:
    """ClickHouse; an embedded database another process has open for a moment is waited for, not a failed start.

    Commands of this project never open it while a store owns the data directory
    (``cli.store_lock``); this covers the others, for ``DATABASE_WAIT_SECONDS``.
    """
    deadline = time.monotonic() + DATABASE_WAIT_SECONDS
    told = False
    while True:
        try:
            return connect(settings.clickhouse_url, settings.clickhouse_database)
        except ClickHouseUnavailableError as exc:
            if not settings.embedded_clickhouse or time.monotonic() >= deadline or stop.is_set():
                raise
            if not told:
                log.warning(
                    "the embedded database is open in another process: waiting for it", extra=fields(error=str(exc))
                )
                told = True
            stop.wait(0.25)


def _run_sinks(settings: Settings, client: Client, database: str, stop: threading.Event) -> None:
    """The billing-sessions sink and the plan sinks (migration 005), each in its thread, until ``stop``.

    A sink that fails stops them all and its error ends the store, as the sessions sink's always
    did: a table that silently stopped filling would be worse than a restart.
    """
    ensure_topics(settings, [settings.topics.plans, settings.topics.transfers])
    ensure_topics(settings, [settings.topics.balance_state], config={"cleanup.policy": "compact"})
    ensure_account_topics(settings)
    sinks = [ClickHouseSink(settings, SessionStore(client, database))]
    sinks += plan_sinks(settings, PlanStore(client, database))
    done = threading.Event()
    failures: list[BaseException] = []

    def run(sink: ClickHouseSink) -> None:
        try:
            sink.run(done)
        except BaseException as exc:
            log.exception("sink failed: the store stops", extra=fields(topic=sink.topic, group=sink.group))
            failures.append(exc)
            done.set()

    threads = [threading.Thread(target=run, args=(s,), name=f"sink-{s.group}", daemon=True) for s in sinks]
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(0.2) and not done.is_set():
            pass
    finally:
        done.set()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def _serve_metrics(port: int, host: str) -> int:
    try:
        return metrics.serve(port, host)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"the metrics endpoint cannot listen on {host}:{port} ({exc.strerror}): set METERING_METRICS_PORT to a "
            "free port (0 picks one)",
        ) from exc


def _wait_for_broker(settings: Settings, stop: threading.Event) -> bool:
    """True once Kafka answers; False if stopped first; KafkaSetupError after BROKER_WAIT_SECONDS."""
    deadline = time.monotonic() + BROKER_WAIT_SECONDS
    while not stop.is_set():
        try:
            wait_for_broker(settings, timeout=min(5.0, max(0.0, deadline - time.monotonic())))
        except KafkaSetupError:
            if time.monotonic() >= deadline:
                raise
            continue
        return True
    return False


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in _ANY_ADDRESS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _write_discovery(settings: Settings, endpoints: StoreEndpoints) -> None:
    path = discovery_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(endpoints), indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _write_token(settings: Settings, token: str) -> None:
    """Write the token readable by this OS user only (created 0600, then moved into place)."""
    path = token_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    os.replace(temporary, path)


def _remove_token(settings: Settings, token: str) -> None:
    """Remove the token file if it is still ours."""
    if read_token(settings) == token:
        with contextlib.suppress(FileNotFoundError):
            token_file(settings).unlink()


def _remove_discovery(settings: Settings) -> None:
    """Remove the file if it is still ours (a newer service may have replaced it)."""
    path = discovery_file(settings)
    found = read_discovery(settings)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_discovery(settings: Settings) -> StoreEndpoints | None:
    """The discovery file's content, or None if there is none or it is not one of ours."""
    try:
        data: Any = json.loads(discovery_file(settings).read_text(encoding="utf-8"))
        return StoreEndpoints(**data)
    except (OSError, ValueError, TypeError):
        return None


def find_running_store(settings: Settings) -> str | None:
    """The API base URL of a store process serving this data directory, if one is up and answering."""
    found = read_discovery(settings)
    if found is None or not pid_alive(found.pid):
        return None
    try:
        response = local_get(f"{found.api}/healthz", timeout=2.0)
    except HTTPError:
        return None
    return found.api if response.status_code == 200 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
