"""What the fault scenarios drive and how they check the result: real processes, exact comparisons.

- :class:`StoreProcess` runs the store (``python -m cli sink``: sink, usage API, chDB) as a
  process of its own, with its own chDB directory, so that it can be SIGKILLed and given
  failpoints (``pipeline/infra/failpoints.py``); :class:`MeteringRun` runs the whole stack
  (``metering run``: broker, workers, store) and kills all of it at once.
- :class:`WorkerPool` is the integration tests' ``Workers`` (``python -m cli worker``
  children) with their metrics, memory and a supervisor that restarts a worker that exited.
- :class:`Replay` produces events (or any bytes) from a thread, paced if asked, as a platform
  producer would: idempotent, keyed as docs/events.md says, retried by librdkafka.
- :func:`check_exact` is the verdict every scenario ends with: usage through the store's API
  (what `metering usage --by day --format csv` prints) equal to ``metering compute`` line for
  line, then, the store stopped, ClickHouse read by a subprocess (chDB opens one directory per
  process): the billing session ids equal to the rules engine's over the same events, and
  each id stored once (see :func:`assert_same_sessions` for which count detects what).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from cli.main import main
from cli.service import StoreEndpoints, pid_alive, read_discovery, read_token
from devtools import traffic
from pipeline.contract.decode import decode_event
from pipeline.contract.events import AgentTransfer, AlertDelivered, ConversationTurn, Rejection, format_ms
from pipeline.infra.kafka import ensure_topics, partition_of, producer_config
from pipeline.infra.settings import Settings
from pipeline.rules.config import RulesConfig
from pipeline.rules.meter import Meter
from pipeline.stream.worker import changelog_topics
from tests.integration.conftest import Workers
from tests.support import T0, wait_until

ROOT: Final = Path(__file__).resolve().parents[2]
#: calls to the stack on this machine never go through a proxy from the environment
LOCAL_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: Four conversations a minute: a few thousand events span hours of event time, so sessions
#: become final all through a replay (not only when the partitions go idle at its end).
SHAPE: Final = traffic.TrafficShape(conversations_per_minute=4.0)

#: (topic, key, value): one Kafka message as a producer sends it.
Outgoing = tuple[str, bytes | None, bytes]


# -- traffic and the expected result ---------------------------------------------------------


def traffic_lines(count: int, seed: int, shape: traffic.TrafficShape = SHAPE, start_ms: int = T0) -> list[bytes]:
    """``count`` realistic events as JSON lines, in arrival order (time order plus jitter)."""
    return [traffic.encode(ev) for ev in traffic.events(start_ms, count, seed=seed, shape=shape)]


def write_lines(path: Path, lines: Iterable[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def computed(path: Path, tz: str = "UTC") -> str:
    """``metering compute --events path`` (CSV per account, app and day)."""
    result = CliRunner().invoke(main, ["compute", "--events", str(path), "--timezone", tz])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def expected_sessions(lines: Iterable[bytes]) -> dict[str, str]:
    """``{billing_session_id: kind}`` of the valid events: the rules engine over them in time order, then the end.

    The stream bills exactly this for every arrival order within the allowed lateness (R9).
    """
    now_ms = int(time.time() * 1000)
    events = []
    for line in lines:
        decoded = decode_event(line, now_ms)
        if not isinstance(decoded, Rejection):
            assert isinstance(decoded[1], ConversationTurn | AgentTransfer | AlertDelivered), decoded
            events.append(decoded)
    events.sort(key=lambda te: te[0])
    meter = Meter(RulesConfig())
    for t, event in events:
        meter.apply(t, event)  # type: ignore[arg-type]
    meter.finish()
    sessions, late = meter.drain()
    assert not late, "events in time order are never late"
    out = {s.billing_session_id: s.kind for s in sessions}
    assert len(out) == len(sessions), "billing session ids are unique"
    return out


def event_ids(lines: Iterable[bytes]) -> list[tuple[str, str]]:
    """``(app_id, event_id)`` of each line, in order (the deduplication key, R1)."""
    out = []
    for line in lines:
        doc = json.loads(line)
        out.append((doc["app_id"], doc["event_id"]))
    return out


def occurred_ms(line: bytes) -> int:
    """An event line's ``occurred_at`` in epoch milliseconds."""
    decoded = decode_event(line, 2**60)
    assert not isinstance(decoded, Rejection), decoded
    return decoded[0]


def clock_closers(settings: Settings, at_ms: int) -> list[bytes]:
    """Test events at ``at_ms`` on every partition of every input topic: they move each partition's clock, bill nothing.

    A replay that must not rely on idle partitions (a scenario whose pauses would otherwise
    make the wall clock the partition clock, R9) ends with these, so every session before
    ``at_ms`` becomes final by event time. Test conversations and test alerts are never
    billed (R2), so ``metering compute`` prints the same with or without them.
    """
    turns: dict[int, bytes] = {}
    alerts: dict[int, bytes] = {}
    i = 0
    while len(turns) < settings.partitions or len(alerts) < settings.partitions:
        i += 1
        key = f"closer-{i}"
        p = partition_of(key.encode(), settings.partitions)
        base = {"event_id": f"{key}-e", "occurred_at": format_ms(at_ms), "account_id": "closers", "is_test": True}
        if p not in turns:
            turn = {**base, "type": "conversation_turn", "app_id": "closer-app", "conversation_id": key}
            turns[p] = json.dumps({**turn, "user_id": "u", "channel": "web", "speaker": "user"}).encode()
        if p not in alerts:
            alert = {**base, "type": "alert_delivered", "app_id": key, "user_id": "u", "alert_id": "a"}
            alerts[p] = json.dumps(alert).encode()
    return [*turns.values(), *alerts.values()]


def ensure_pipeline_topics(settings: Settings) -> None:
    """Every topic of a pipeline on a broker of the test's own, as `metering run` creates them."""
    topics = settings.topics
    ensure_topics(settings, [*topics.all])
    ensure_topics(settings, changelog_topics(settings), config={"cleanup.policy": "compact"})


# -- producing -----------------------------------------------------------------------------


def keyed(settings: Settings, lines: Iterable[bytes]) -> list[Outgoing]:
    """Event lines as a platform producer sends them: to their type's topic, keyed as docs/events.md says."""
    out: list[Outgoing] = []
    for line in lines:
        doc = json.loads(line)
        key = doc["conversation_id"] if doc["type"] in ("conversation_turn", "agent_transfer") else doc["app_id"]
        out.append((settings.topics.of_type(doc["type"]), key.encode(), line))
    return out


class Replay:
    """Send messages from a thread, ``rate`` a second (all at once if None), and wait for every acknowledgement.

    librdkafka retries by itself while the broker is away (idempotent producer: a retry is
    never written twice); :meth:`join` fails if a message was not acknowledged.
    """

    def __init__(
        self, settings: Settings, messages: Sequence[Outgoing], rate: float | None = None, **overrides: Any
    ) -> None:
        self.messages = messages
        self.rate = rate
        self.sent = 0
        self.failures: list[str] = []
        self._producer = Producer(producer_config(settings, **overrides))
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._done = threading.Event()

    def start(self) -> Replay:
        self._thread.start()
        return self

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for i, (topic, key, value) in enumerate(self.messages):
                if self.rate is not None:
                    due = started + i / self.rate
                    while (wait := due - time.monotonic()) > 0:
                        self._producer.poll(min(wait, 0.05))
                while True:
                    try:
                        self._producer.produce(topic, value, key, on_delivery=self._delivered)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
                self.sent += 1
                if i % 500 == 0:
                    self._producer.poll(0)
        finally:
            self._done.set()

    @property
    def finished_sending(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the producer did not finish sending in time"
        left = self._producer.flush(timeout)
        assert left == 0, f"{left} messages not acknowledged within {timeout:.0f} s"
        assert not self.failures, f"{len(self.failures)} messages failed: {self.failures[:3]}"


def produce_all(settings: Settings, messages: Sequence[Outgoing], **overrides: Any) -> None:
    Replay(settings, messages, **overrides).start().join()


# -- reading topics ------------------------------------------------------------------------


def topic_count(settings: Settings, topic: str) -> int:
    """Messages in ``topic`` (high minus low watermark over its partitions)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"count-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            high - low
            for low, high in (consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions)
        )
    finally:
        consumer.close()


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic`` (the next offset to read), by partition."""
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: tp.offset for tp in reader.committed(tps, timeout=10) if tp.offset >= 0}
    finally:
        reader.close()


def read_topic(settings: Settings, topic: str, timeout: float = 60.0) -> list[bytes]:
    """Every message value of ``topic``, up to the high watermarks as they are now."""
    return [value for values in read_partitions(settings, topic, timeout).values() for value in values]


def read_partitions(settings: Settings, topic: str, timeout: float = 60.0) -> dict[int, list[bytes]]:
    """Every committed message value of ``topic`` by partition, in log order, up to the ends as they are now.

    Read committed, as every consumer of the pipeline reads: a transactional topic's last offsets
    may be transaction markers, so a partition is read when its end is reached.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 4 << 20,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low])
        left = {p: high for p, (low, high) in ends.items() if high > low}
        out: dict[int, list[bytes]] = {p: [] for p in partitions}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    if (message.offset() or 0) >= left.get(message.partition() or 0, 0):
                        left.pop(message.partition() or 0, None)
                    continue
                assert error is None, error
                p, offset = message.partition(), message.offset()
                if p in left and offset is not None and offset < left[p]:
                    out[p].append(message.value() or b"")
                    if offset + 1 >= left[p]:
                        del left[p]
        assert not left, f"could not read {topic} to its end in {timeout:.0f} s: {left}"
        return out
    finally:
        consumer.close()


def assert_logged_as_sent(settings: Settings, messages: Sequence[Outgoing]) -> None:
    """Each input partition holds exactly the messages sent to it, in the order sent.

    The precondition of a scenario: a producer that reordered its input (a retried batch
    overtaken by the next) makes events truly late, and the pipeline would rightly not bill them.
    """
    sent: dict[tuple[str, int], list[bytes]] = {}
    for topic, key, value in messages:
        assert key is not None, "every scenario message is keyed"
        sent.setdefault((topic, partition_of(key, settings.partitions)), []).append(value)
    for topic in sorted({topic for topic, _ in sent}):
        logged = read_partitions(settings, topic)
        for partition, values in logged.items():
            expected = sent.get((topic, partition), [])
            assert values == expected, (
                f"{topic}[{partition}] holds {len(values)} messages, {len(expected)} were sent"
                + ("" if len(values) != len(expected) else ": the same, in another order (the producer reordered them)")
            )


# -- metrics and memory ---------------------------------------------------------------------


def scrape(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` with these labels at ``url`` (a /metrics page)."""
    with LOCAL_OPENER.open(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class RssSampler:
    """The peak resident memory of processes while it runs, sampled every 0.1 s from a thread."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.peak = 0.0
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self._pids():
                try:
                    self.peak = max(self.peak, rss_mib(pid))
                except (OSError, AssertionError):  # exited between the listing and the read
                    continue


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class WorkerPool(Workers):
    """``Workers`` plus each worker's /metrics, its memory, and a supervisor like `metering run`'s.

    ``processes`` holds every worker ever started (worker ``i`` logs to ``worker-i.log``);
    ``current`` the ones in service, a restarted worker taking the place of the one that exited.
    """

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(settings, log_dir)
        self.current: list[subprocess.Popen[bytes]] = []
        self.exits: list[int] = []
        self._supervisor: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, count: int = 1, **extra_env: str) -> list[subprocess.Popen[bytes]]:
        started = super().start(count, **extra_env)
        self.current.extend(started)
        return started

    def start_instance(self, instance: int, **extra_env: str) -> subprocess.Popen[bytes]:
        """``metering worker --instance N``: a stable transactional id and group membership, as `metering run` gives."""
        process = self.spawn("--instance", str(instance), **extra_env)
        self.current.append(process)
        return process

    def replace(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Start a worker in the place of ``process`` (which has exited or been killed)."""
        (new,) = super().start(1)
        self.current[self.current.index(process)] = new
        return new

    def index(self, process: subprocess.Popen[bytes]) -> int:
        return self.processes.index(process)

    def metrics_url(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
        """The /metrics URL ``process`` announced in its log."""
        return self.announced_url(process, timeout) + "/metrics"

    def supervise(self) -> None:
        """From now on, restart a worker that exits by itself, as `metering run` and orchestrators do."""

        def loop() -> None:
            while not self._stop.wait(0.5):
                for process in list(self.current):
                    code = process.poll()
                    if code is not None:
                        self.exits.append(code)
                        self.replace(process)

        self._supervisor = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._supervisor.start()

    def close(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        super().close()


# -- the store, in a process of its own ------------------------------------------------------


def api_usage(settings: Settings, tz: str = "UTC") -> str | None:
    """What `metering usage --by day --format csv` prints, asked from the running store; None if none runs.

    Never opens the database here: the test process has chDB open on another directory.
    """
    found = read_discovery(settings)
    if found is None or not pid_alive(found.pid):
        return None
    query = urlencode({"by": "day", "timezone": tz, "format": "csv"})
    token = read_token(settings)  # the operators' routes take the store's operator token
    request = urllib.request.Request(f"{found.api}/usage?{query}", headers={"Authorization": f"Bearer {token}"})
    try:
        with LOCAL_OPENER.open(request, timeout=30) as response:
            return str(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError):
        return None


def wait_serving(
    settings: Settings,
    process: subprocess.Popen[bytes],
    logs: Callable[[], str],
    name: str,
    *,
    timeout: float,
    every: float,
) -> StoreEndpoints:
    """Wait until ``process`` (still alive) wrote the discovery file and its usage API answers; its endpoints."""

    def serving() -> bool:
        assert process.poll() is None, f"{name} exited with {process.returncode}:\n{logs()}"
        found = read_discovery(settings)
        return found is not None and found.pid == process.pid and api_usage(settings) is not None

    wait_until(serving, timeout, f"{name} to serve", every=every)
    endpoints = read_discovery(settings)
    assert endpoints is not None
    return endpoints


@dataclass(frozen=True)
class Stored:
    """What a stopped store's ClickHouse holds (see chdb_read.py for each figure)."""

    rows: int
    ids: int
    final: int
    versions: int
    sessions: dict[str, str] = field(default_factory=dict)


def read_stored(settings: Settings) -> Stored:
    """The billing sessions in the (stopped) store's chDB directory, read by a subprocess."""
    directory = settings.clickhouse_url.removeprefix("chdb://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults.chdb_read", directory, settings.clickhouse_database],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    return Stored(**data)


class StoreProcess:
    """The store as production runs it alone: ``python -m cli sink`` (sink, usage API, metrics, chDB)."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        assert settings.clickhouse_url.startswith("chdb://"), "the store process owns an embedded chDB"
        self.settings = settings
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"store-{self.starts}.log"

    def start(self, failpoints: str = "", timeout: float = 90.0) -> StoreEndpoints:
        self.starts += 1
        env = {**os.environ, **self.settings.to_env(), "METERING_LOG_FORMAT": "json", "METERING_FAILPOINTS": failpoints}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "sink"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return wait_serving(self.settings, self.process, self.logs, "the store process", timeout=timeout, every=0.2)

    @property
    def endpoints(self) -> StoreEndpoints:
        found = read_discovery(self.settings)
        assert found is not None
        assert self.process is not None
        assert found.pid == self.process.pid, "the discovery file names another process"
        return found

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.endpoints.metrics, name, **labels)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if the process still runs after ``timeout`` (the caller shows the logs)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the sink finishes the batch in hand, commits, and the process exits 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        assert code == 0, f"the store exited with {code}:\n{self.logs()}"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-chars:] for p in sorted(self.log_dir.glob("store-*.log")))


class MeteringRun:
    """``metering run`` in a session of its own: broker, workers, store; :meth:`kill` SIGKILLs all of them.

    ``own_broker``: run without METERING_KAFKA_BOOTSTRAP, as a user does: the data directory's own
    broker (``settings.local_kafka_port`` if free), which the other commands find there.
    """

    def __init__(self, settings: Settings, log_dir: Path, *, own_broker: bool = False) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.own_broker = own_broker
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        """The environment of the run, and of a command run beside it with the same settings."""
        env = {**os.environ, **self.settings.to_env(), "METERING_LOG_FORMAT": "json"}
        env.pop("METERING_FAILPOINTS", None)
        if self.own_broker:
            env.pop("METERING_KAFKA_BOOTSTRAP", None)
        return env

    def launch(self) -> subprocess.Popen[bytes]:
        """Start ``metering run`` without waiting for it."""
        self.starts += 1
        with (self.log_dir / f"run-{self.starts}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "run"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers share its process group; the broker has its own session
            )
        return self.process

    def start(self, timeout: float = 180.0) -> StoreEndpoints:
        self.launch()
        return self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 180.0) -> StoreEndpoints:
        assert self.process is not None
        return wait_serving(self.settings, self.process, self.logs, "metering run", timeout=timeout, every=0.5)

    def broker_pid(self) -> int | None:
        """The pid of the broker the run started, if it started one (it uses a cluster that answers otherwise)."""
        try:
            return int((self.settings.data_dir / "kafka" / "broker.pid").read_text().strip())
        except FileNotFoundError:
            return None

    def kill(self, *, broker: bool = True) -> list[int]:
        """SIGKILL the broker, the run process and its workers, all at once, as a power cut would; their pids.

        ``broker=False`` kills the run's process group only, as ``kill -9 -- -<pid>`` does: the broker,
        in a session of its own, must then stop by itself.
        """
        assert self.process is not None
        broker_pid = self.broker_pid()
        pids = [*([broker_pid] if broker_pid is not None else []), *_group(self.process.pid)]
        if broker and broker_pid is not None:
            os.kill(broker_pid, signal.SIGKILL)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        wait_until(lambda: not any(_alive(pid) for pid in pids), 90, "every killed process to be gone", every=0.1)
        return pids

    def stop(self, timeout: float = 120.0) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        assert code == 0, f"metering run exited with {code}:\n{self.logs()}"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def logs(self, chars: int = 6000) -> str:
        files = sorted(self.log_dir.glob("run-*.log")) + sorted((self.settings.data_dir / "logs").glob("worker-*.log"))
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-chars:] for p in files)


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- the verdict -----------------------------------------------------------------------------


def wait_for_usage(
    settings: Settings, expected: str, timeout: float, diagnostics: Callable[[], str], tz: str = "UTC"
) -> None:
    """Until the store's usage equals ``expected`` (compute's CSV) line for line."""
    last = [""]

    def same() -> bool:
        last[0] = api_usage(settings, tz) or ""
        return last[0] == expected

    try:
        wait_until(same, timeout, f"usage in {tz} to equal compute", every=1.0)
    except AssertionError:
        print(f"expected:\n{expected}\ngot:\n{last[0]}\n{_diff(expected, last[0])}")
        print(_side_outputs(settings))
        print(diagnostics())
        raise


def _side_outputs(settings: Settings) -> str:
    """What went to the late and dead-letter topics: where a mismatch usually starts."""
    lines = []
    for topic in (settings.topics.late, settings.topics.dlq):
        try:
            values = read_topic(settings, topic, timeout=10)
        except Exception as exc:  # diagnostics only: never hide the failure being reported
            lines.append(f"{topic}: unreadable ({exc})")
            continue
        lines.append(f"{topic}: {len(values)} messages")
        lines.extend(f"  {v[:300]!r}" for v in values[:10])
    return "\n".join(lines)


def _diff(expected: str, got: str) -> str:
    want, have = set(expected.splitlines()), set(got.splitlines())
    return (
        "only in compute:\n"
        + "\n".join(sorted(want - have))
        + "\nonly in ClickHouse:\n"
        + "\n".join(sorted(have - want))
    )


def assert_same_sessions(stored: Stored, expected: dict[str, str]) -> None:
    """The ids in ClickHouse are exactly the expected ones, each stored once: none lost, none doubled.

    A session lost is missing from the ids; a session doubled under another id is extra; one
    doubled under its own id is either under two sorting keys (``final > ids``) or stored with
    two contents (``versions > ids``, e.g. two start times, so two usage buckets). Physical
    re-inserts of the same row (``rows > ids``) are the at-least-once design and merge away.
    """
    missing = sorted(expected.keys() - stored.sessions.keys())
    extra = sorted(stored.sessions.keys() - expected.keys())
    assert not missing, f"{len(missing)} billing sessions lost (e.g. {missing[:3]})"
    assert not extra, f"{len(extra)} billing sessions not expected, i.e. counted under another id (e.g. {extra[:3]})"
    assert stored.final == stored.ids, f"{stored.final} rows after FINAL for {stored.ids} ids: an id under two keys"
    assert stored.versions == stored.ids, f"{stored.versions} row contents for {stored.ids} ids: an id stored twice"
    assert stored.sessions == expected, "every billing session has the expected kind"


def check_exact(
    settings: Settings,
    accepted: Sequence[bytes],
    tmp_path: Path,
    *,
    stop_store: Callable[[], None],
    diagnostics: Callable[[], str],
    timeout: float = 120.0,
) -> Stored:
    """The verdict: usage == compute over ``accepted`` (line for line), then, the store stopped, ids == the engine's."""
    path = write_lines(tmp_path / f"accepted-{uuid.uuid4().hex[:6]}.jsonl", accepted)
    expected = computed(path)
    assert len(expected.splitlines()) > 5, "the scenario bills something on several app-days"
    wait_for_usage(settings, expected, timeout, diagnostics)
    stop_store()
    stored = read_stored(settings)
    assert_same_sessions(stored, expected_sessions(accepted))
    print(f"verdict: {stored.ids} billing sessions, as compute; {stored.rows - stored.ids} re-inserted rows merge away")
    return stored


def seeded_moments(seed: int, count: int, low: float, high: float) -> list[float]:
    """``count`` sorted random moments in [low, high) seconds, from ``seed``."""
    rng = random.Random(seed)
    return sorted(rng.uniform(low, high) for _ in range(count))
