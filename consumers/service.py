"""The store process: ClickHouse, its migrations, the sink, the usage API and the metrics, together.

One process owns the ClickHouse client because an embedded chDB database can be open in one
process only (``metering sink`` and ``metering run`` use this). It announces itself in
``<data_dir>/run/store.json`` while it serves, so ``metering usage`` and ``metering migrate``
in other processes ask it instead of failing on the database lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from consumers.clickhouse import SessionStore, connect, migrate
from consumers.clickhouse.client import redact
from consumers.sink import ClickHouseSink
from consumers.usage_api import UsageApi
from pipeline import metrics
from pipeline.kafka import KafkaSetupError, ensure_topics, wait_for_broker
from pipeline.logs import fields
from pipeline.settings import Settings

__all__ = ["LOCAL_OPENER", "StoreEndpoints", "discovery_file", "find_running_store", "read_discovery", "serve_store"]

log = logging.getLogger(__name__)

BROKER_WAIT_SECONDS: Final = 60.0
_ANY_ADDRESS: Final = frozenset({"", "0.0.0.0", "::"})
#: Local calls must not go through an HTTP proxy from the environment.
LOCAL_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
    client = connect(settings.clickhouse_url, database)
    api: UsageApi | None = None
    try:
        applied = migrate(client, database)
        log.info(
            "ClickHouse ready",
            extra=fields(url=redact(settings.clickhouse_url), database=database, applied_now=[m.file for m in applied]),
        )
        api = UsageApi(client, database, settings.api_host, settings.api_port)
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
        _write_discovery(settings, endpoints)
        try:
            log.info("store serving", extra=fields(**asdict(endpoints)))
            if on_ready is not None:
                on_ready(endpoints)
            if not _wait_for_broker(settings, stop):
                return
            ensure_topics(settings, [settings.topics.billing_sessions])
            ClickHouseSink(settings, SessionStore(client, database)).run(stop)
        finally:
            _remove_discovery(settings)
    finally:
        if api is not None:
            api.stop()
        client.close()


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
        with LOCAL_OPENER.open(f"{found.api}/healthz", timeout=2.0) as response:
            return found.api if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
