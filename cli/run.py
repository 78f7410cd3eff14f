"""`metering run`: the whole pipeline on one machine, in the foreground, stopped cleanly by a signal.

This process owns its data directory (``cli.store_lock``: taken before anything else, so
a command reading the embedded database never races its start) and the embedded ClickHouse
(sink, usage API, its metrics); the stream workers run as child processes, restarted if they
die. Kafka is ``METERING_KAFKA_BOOTSTRAP`` when it is set; otherwise the data directory's own
broker, a child that dies with this process, found there by the other commands. One line a
minute says what was metered.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from cli.service import StoreEndpoints, serve_store
from cli.store_lock import DataDirBusyError, StoreLock
from devtools.demo import DemoTraffic
from devtools.local_kafka import LocalKafka, free_port, running_broker, stop_running_broker
from pipeline.infra.http import HTTPError, local_get
from pipeline.infra.kafka import ensure_topics
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.stream.worker import changelog_topics

log = logging.getLogger(__name__)

STATUS_EVERY_SECONDS: Final = 60.0
WORKER_RESTART_DELAY: Final = 5.0
LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
#: The account whose admin the one-time console link signs in (the demo traffic's first account).
DEMO_ACCOUNT: Final = "acct-00"


@dataclass
class _Worker:
    index: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    #: the `metering` command line the child runs, and what it is called in messages
    command: tuple[str, ...] = ("worker",)
    name: str = "worker"


@dataclass
class _Totals:
    values: dict[str, float] = field(default_factory=dict)

    def delta(self, now: dict[str, float]) -> dict[str, float]:
        out = {k: v - self.values.get(k, 0.0) for k, v in now.items()}
        self.values = dict(now)
        return out


def run(settings: Settings, *, demo: bool, demo_rate: float, console: Console) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        console.print(f"\n{signal.Signals(signum).name}: stopping (finishing in-flight batches and committing)...")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        owned = StoreLock.acquire(settings.data_dir, "metering run", on_wait=console.print)
    except DataDirBusyError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    with owned:
        return _run(settings, stop, demo=demo, demo_rate=demo_rate, console=console)


def _run(settings: Settings, stop: threading.Event, *, demo: bool, demo_rate: float, console: Console) -> int:
    broker = _broker(settings, console)
    if broker is not None:
        settings = replace(settings, kafka_bootstrap=broker.bootstrap)
    traffic: DemoTraffic | None = None
    workers: list[_Worker] = []
    store_thread: threading.Thread | None = None
    try:
        topics = settings.topics
        ensure_topics(settings, topics.inputs)
        ensure_topics(settings, [topics.billing_sessions, topics.dlq, topics.late, topics.balance_alerts])
        ensure_topics(settings, changelog_topics(settings), config={"cleanup.policy": "compact"})

        ready = threading.Event()
        endpoints: list[StoreEndpoints] = []

        def on_ready(e: StoreEndpoints) -> None:
            endpoints.append(e)
            ready.set()

        store_metrics = _port_or_free(settings.metrics_port)
        store_thread = threading.Thread(
            target=serve_store,
            args=(settings, stop, on_ready),
            kwargs={"metrics_port": store_metrics},
            name="store",
            daemon=True,
        )
        store_thread.start()
        while not ready.wait(0.5):
            if stop.is_set() or not store_thread.is_alive():
                console.print("[red]error:[/] the store (ClickHouse, sink, usage API) did not start; see the log above")
                return 1
        log_dir = settings.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        workers = [
            _Worker(
                i,
                _port_or_free(store_metrics + 1 + i),
                log_dir / f"worker-{i}.log",
                command=("worker", "--instance", str(i)),
            )
            for i in range(settings.workers)
        ]
        workers += _balance_services(settings, store_metrics + 1 + settings.workers, log_dir)
        for w in workers:
            _start_worker(settings, w)
        if demo:
            traffic = DemoTraffic(settings, rate=demo_rate)
            traffic.start()
        _announce(console, settings, endpoints[0], workers, demo=traffic is not None)
        _supervise(settings, stop, workers=workers, store=store_thread, traffic=traffic, console=console)
        return 0
    finally:
        if traffic is not None:
            counts = traffic.stop()
            console.print(f"demo traffic stopped after {counts.sent:,} messages")
        _stop_workers(workers)
        stop.set()
        if store_thread is not None:
            store_thread.join(timeout=60)
        if broker is not None:
            broker.stop()
        console.print("stopped")


def _broker(settings: Settings, console: Console) -> LocalKafka | None:
    """The data directory's own broker, started here; None if METERING_KAFKA_BOOTSTRAP names a cluster that answers.

    A broker already running on the data directory was left by a run that died (this process
    owns the data directory now): it is stopped and started again as this run's child. Another
    process on the preferred port (another data directory's broker, whose cluster this is not)
    is never used: this one listens on a free port then, announced in the data directory.
    """
    directory = settings.data_dir / "kafka"
    if settings.kafka_bootstrap_given:
        if _reachable(settings.kafka_bootstrap):
            console.print(f"Kafka: using the cluster at {settings.kafka_bootstrap} (METERING_KAFKA_BOOTSTRAP)")
            return None
        host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
        if host not in LOOPBACK:
            raise SystemExit(
                f"error: Kafka at {settings.kafka_bootstrap} does not answer; METERING_KAFKA_BOOTSTRAP names a "
                "remote cluster, so no local broker is started: check the address and that the brokers are up"
            )
        broker = LocalKafka(directory, port=int(port))
    else:
        broker = LocalKafka(directory, preferred_port=settings.local_kafka_port)
    left = running_broker(directory)
    if left is not None:
        console.print(
            f"Kafka: the broker of this data directory (pid {left.pid}) was left running by a metering run that "
            "ended without stopping it: stopping it, to start it again as this run's own"
        )
        stop_running_broker(left)
    broker.ensure_jars()
    console.print(f"Kafka: starting this data directory's broker (data in {directory})")
    broker.start(timeout=120)
    preferred = settings.local_kafka_port
    if not settings.kafka_bootstrap_given and broker.port != preferred and _port_or_free(preferred) != preferred:
        console.print(
            f"Kafka: port {preferred} is taken by another process (another data directory's broker, perhaps), "
            f"so this one listens on {broker.bootstrap}; metering produce, usage and the other commands find it "
            f"there with METERING_DATA_DIR={settings.data_dir}"
        )
    else:
        console.print(f"Kafka: listening on {broker.bootstrap}")
    return broker


def _reachable(bootstrap: str) -> bool:
    try:
        probe = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000, "log_level": 0})
        probe.list_topics(timeout=4)
    except KafkaException:
        return False
    return True


def _port_or_free(port: int) -> int:
    if port == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _start_worker(settings: Settings, worker: _Worker) -> None:
    env = dict(os.environ)
    env["METERING_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["METERING_METRICS_PORT"] = str(worker.metrics_port)
    env["METERING_LOG_FORMAT"] = "json"
    out = worker.log_path.open("ab")
    worker.process = subprocess.Popen(
        [sys.executable, "-m", "cli", *worker.command], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    worker.started_at = time.monotonic()
    log.info(
        f"{worker.name} started",
        extra=fields(worker=worker.index, pid=worker.process.pid, log=str(worker.log_path)),
    )


def _balance_services(settings: Settings, first_port: int, log_dir: Path) -> list[_Worker]:
    """The balance and order processors, the alert notifier and the entitlement endpoint, supervised as workers."""
    balance_port = _port_or_free(first_port)
    notify_port = _port_or_free(balance_port + 1)
    orders_port = _port_or_free(notify_port + 1)
    entitlement_port = _port_or_free(settings.entitlement_port)
    index = settings.workers
    return [
        _Worker(index, balance_port, log_dir / "balance.log", command=("balance",), name="balance"),
        _Worker(index + 1, notify_port, log_dir / "notify.log", command=("notify",), name="notifier"),
        _Worker(index + 3, orders_port, log_dir / "orders.log", command=("orders", "process"), name="orders"),
        _Worker(
            index + 2,
            entitlement_port,
            log_dir / "entitlement.log",
            command=("entitlement", "--port", str(entitlement_port)),
            name="entitlement",
        ),
    ]


def _stop_workers(workers: list[_Worker], timeout: float = 45.0) -> None:
    for w in workers:
        if w.process is not None and w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        if w.process is None:
            continue
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop in time: killed", extra=fields(worker=w.index))
            w.process.kill()
            w.process.wait()


def _supervise(
    settings: Settings,
    stop: threading.Event,
    *,
    workers: list[_Worker],
    store: threading.Thread,
    traffic: DemoTraffic | None,
    console: Console,
) -> None:
    totals = _Totals()
    totals.delta(_status(workers))
    next_status = time.monotonic() + STATUS_EVERY_SECONDS
    while not stop.wait(1.0):
        if not store.is_alive():
            console.print("[red]error:[/] the store stopped; stopping the pipeline")
            return
        for w in workers:
            if w.process is not None and w.process.poll() is not None:
                code = w.process.returncode
                if time.monotonic() - w.started_at > WORKER_RESTART_DELAY:
                    w.restarts += 1
                    console.print(
                        f"{w.name} {w.index} exited with status {code}; restarting it "
                        f"(restart {w.restarts}, log {w.log_path})"
                    )
                    _start_worker(settings, w)
        if traffic is not None and traffic.error is not None:
            console.print(f"[yellow]demo traffic stopped:[/] {traffic.error}")
            traffic = None
        if time.monotonic() >= next_status:
            next_status += STATUS_EVERY_SECONDS
            console.print(_status_line(totals.delta(_status(workers))))


def _status(workers: list[_Worker]) -> dict[str, float]:
    """Counters summed over the workers' /metrics, plus the sink's rows from this process."""
    out: dict[str, float] = {"rows": REGISTRY.get_sample_value("metering_sink_rows_total") or 0.0}
    wanted = {
        "metering_events_received": "events",
        "metering_events_invalid": "invalid",
        "metering_events_late": "late",
        "metering_events_duplicate": "duplicates",
    }
    for w in workers:
        try:
            text = local_get(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=2).text
        except HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                name = sample.name.removesuffix("_total")
                if name in wanted:
                    out[wanted[name]] = out.get(wanted[name], 0.0) + sample.value
                elif name == "metering_billing_sessions_emitted":
                    key = f"sessions_{sample.labels.get('kind', '')}"
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def _status_line(d: dict[str, float]) -> str:
    def n(key: str) -> int:
        return int(d.get(key, 0))

    return (
        f"{time.strftime('%H:%M:%S')} last minute: {n('events'):,} events in; billing sessions "
        f"{n('sessions_usage'):,} usage, {n('sessions_voice'):,} voice, {n('sessions_alert'):,} alert; "
        f"{n('rows'):,} rows written to ClickHouse; {n('invalid'):,} invalid, {n('late'):,} late, "
        f"{n('duplicates'):,} duplicates"
    )


def _console_login(settings: Settings, store: StoreEndpoints) -> str:
    """The console's one-time login link for the admin of the demo's first account, or how to get a token."""
    from console import login_link  # noqa: PLC0415 - the console loads only where it is used

    account = DEMO_ACCOUNT
    code = login_link.create(settings.console, settings.data_dir, account_id=account, user="demo-admin")
    if code is None:
        return f"{store.api}/login   (sign in with a token from your identity provider)"
    return f"{store.api}/login?once={code}   (one-time login link: {account}'s admin)"


def _announce(
    console: Console, settings: Settings, store: StoreEndpoints, workers: list[_Worker], *, demo: bool
) -> None:
    console.print("[bold]metering is running[/]" + (" with demo traffic" if demo else ""))
    console.print(f"  console        {_console_login(settings, store)}")
    console.print(f"  console API    {store.api}/api/v1/usage   (a token: metering token --account ACCOUNT)")
    console.print(f"  metrics        {store.metrics}  (sink, API)")
    for w in workers:
        if w.name == "entitlement":
            console.print(f"  entitlement    http://127.0.0.1:{w.metrics_port}/v1/entitlement/{{app_id}}")
        label = f"worker {w.index}" if w.name == "worker" else w.name
        console.print(f"{'':17}http://127.0.0.1:{w.metrics_port}/metrics  ({label}, log {w.log_path})")
    console.print(f"  Kafka          {settings.kafka_bootstrap}")
    console.print(f"  ClickHouse     {store.clickhouse_url} (database {store.database})")
    console.print("  stop with Ctrl-C; a line a minute says what was metered")
