"""What both pipeline benchmarks share: one local broker, fresh topics per run, child processes,
readings of /proc and of the processes' /metrics, order statistics and the result file.

The benchmarks run on a small shared machine, so every figure is the median of several runs
and the raw runs are printed and saved next to it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from devtools.local_kafka import LocalKafka, LocalKafkaError, free_port
from pipeline.contract.decode import to_ms
from pipeline.infra.settings import Settings, Topics
from pipeline.stream.worker import changelog_topics

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS_DIR: Final = ROOT / "bench" / "results"
#: Historical traffic starts here (the integration tests' T0): far enough back to be all past.
HISTORY_START_MS: Final = to_ms(datetime(2026, 11, 1, 10, 0, tzinfo=UTC))
PARTITIONS: Final = 6
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
#: No HTTP proxy from the environment for calls to our own processes.
_LOCAL: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A run could not be measured; the message says what went wrong and where to look."""


# -- broker and topics ---------------------------------------------------------------------


def start_broker(directory: Path, console: Console) -> LocalKafka:
    broker = LocalKafka(directory, heap_mb=512)
    try:
        broker.ensure_jars()
        started = time.monotonic()
        broker.start(timeout=120)
    except LocalKafkaError as exc:
        raise BenchError(f"the local Kafka broker did not start: {exc}") from exc
    console.print(f"Kafka broker up on {broker.bootstrap} (pid {broker.pid}) in {time.monotonic() - started:.1f} s")
    return broker


class Workspace:
    """One invocation's temporary directory and the broker started in it, for :func:`run_in_workspace`."""

    def __init__(self, tmp: Path, console: Console) -> None:
        self.tmp = tmp
        self.console = console
        self.broker: LocalKafka | None = None

    def start_broker(self) -> LocalKafka:
        self.broker = start_broker(self.tmp / "kafka", self.console)
        return self.broker


def run_in_workspace(prefix: str, keep_files: bool, console: Console, measure: Callable[[Workspace], None]) -> int:
    """Run ``measure`` in a fresh temporary directory; the exit status (1 on :class:`BenchError`).

    The broker always stops; the files go only after a good run (kept after a failure, to read the logs).
    """
    workspace = Workspace(Path(tempfile.mkdtemp(prefix=prefix)), console)
    ok = False
    try:
        measure(workspace)
        ok = True
        return 0
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}", highlight=False)
        console.print(f"files kept in {workspace.tmp}")
        return 1
    finally:
        if workspace.broker is not None:
            workspace.broker.stop()
        if ok and not keep_files:
            shutil.rmtree(workspace.tmp, ignore_errors=True)
        elif ok:
            console.print(f"files kept in {workspace.tmp}")


def fresh_settings(base: Settings, data_dir: Path) -> Settings:
    """``base`` with uuid-named topics, consumer groups and database: nothing is shared between runs."""
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"{value}-{suffix}" for name, value in vars(Topics()).items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    return replace(
        base,
        data_dir=data_dir,
        topics=topics,
        partitions=PARTITIONS,
        app_id=f"bench-{suffix}",
        clickhouse_database=f"bench_{suffix}",
    )


def create_topics(broker: LocalKafka, settings: Settings) -> None:
    """Every topic of the run, co-partitioned, before any process starts (as `metering run` does)."""
    topics = settings.topics
    broker.create_topics(dict.fromkeys(topics.all, settings.partitions))
    changelogs = dict.fromkeys(changelog_topics(settings), settings.partitions)
    broker.create_topics(changelogs, config={"cleanup.policy": "compact"})


# -- child processes -----------------------------------------------------------------------


def child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "METERING_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}


def start_worker(settings: Settings, log_path: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    """One `python -m cli worker`, as production runs it."""
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--metrics-port", str(metrics_port)],
            env=child_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    finally:
        log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
    """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


# -- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (its threads included), or None if it is gone."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def peak_rss_mib(pid: int | None) -> float | None:
    """VmHWM: the peak resident set of a live process, in MiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user/nice
    return total - idle, total


# -- /metrics -------------------------------------------------------------------------------


def scrape(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Samples of a /metrics page summed over their labels (name -> value); None if it does not answer."""
    try:
        with _LOCAL.open(url, timeout=timeout) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


# -- statistics and output ------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of ``values`` (numpy's default method)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 2, *, thousands: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty.strip() else "")


def environment() -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.machine(),
    }


def write_result(name: str, payload: Mapping[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpu: Mapping[str, float | None]
    machine: tuple[int, int]


def cpu_shares(a: Snapshot, b: Snapshot) -> dict[str, float | None]:
    """CPU share of each process between two snapshots (1.0 = one core busy), and "machine": all cores busy."""
    seconds = b.at - a.at
    out: dict[str, float | None] = {}
    for name, end in b.cpu.items():
        start = a.cpu.get(name)
        out[name] = None if end is None or start is None or seconds <= 0 else (end - start) / seconds
    busy = b.machine[0] - a.machine[0]
    total = b.machine[1] - a.machine[1]
    out["machine"] = busy / total if total > 0 else None
    return out


@dataclass
class Sampler:
    """CPU seconds of a set of processes since it was made, and snapshots to compare two moments."""

    pids: Mapping[str, int | None]

    def __post_init__(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.last = dict(self._start)

    def read(self) -> None:
        """Remember the latest CPU reading of each live process (a process that exited keeps its last one)."""
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                self.last[name] = value

    def cpu(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, start in self._start.items():
            end = self.last.get(name)
            out[name] = None if end is None else end - (start or 0.0)
        return out

    def snapshot(self) -> Snapshot:
        """The latest readings, to compare with another snapshot (call ``read`` first)."""
        return Snapshot(time.monotonic(), dict(self.last), machine_jiffies())
