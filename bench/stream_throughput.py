"""Sustained throughput of the stream workers: a pre-filled input topic to rows visible in ClickHouse.

Per run, on one local broker (fresh uuid-named topics and groups per run):

1. the historical events of ``devtools.traffic`` (fixed seed) are produced to the input topics
   (not timed; the expected usage comes from ``metering compute`` on the same file, once);
2. the store (``python -m cli sink``: sink, usage API, metrics, its own embedded chDB) is
   started and waits until its consumer has its partitions;
3. the worker process(es) start: the clock starts, and stops when ClickHouse holds exactly the
   expected billing sessions (the sink's row counter reaches the expected count, then the
   usage API's per-app per-day CSV must equal `metering compute`'s, line for line).

The store runs in its own process, as in production: the benchmark process only polls
/metrics and /proc four times a second, so it takes nothing from the worker's interpreter.
`idle_partition_seconds` is 2, so the sessions still open when the input is exhausted are
finalized 2 s after it, as at the end of a replay.

Reported per run: events/s end to end (N / seconds from worker start to all rows visible, and
from the worker's first output record), events/s of the worker alone (from its first batch
processed, ``metering_worker_batch_events``, to every event committed,
``metering_events_received_total``), worker CPU seconds and
peak RSS, and the CPU the sink and the broker used meanwhile. With py-spy available, one more
run (not in the medians) is profiled and its self time summarised by where it goes.

    .venv/bin/python bench/stream_throughput.py [--runs 3] [--events 200000] [--workers 1]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from harness import HISTORY_START_MS as START_MS
from harness import (
    ROOT,
    BenchError,
    Sampler,
    Snapshot,
    Workspace,
    child_env,
    cpu_shares,
    create_topics,
    environment,
    fmt,
    free_ports,
    fresh_settings,
    log_tail,
    median,
    peak_rss_mib,
    run_in_workspace,
    scrape,
    start_worker,
    stop_process,
    write_result,
)
from rich.console import Console
from rich.table import Table

from cli.service import find_running_store, read_discovery
from cli.usage_command import usage_text
from devtools import traffic
from devtools.local_kafka import LocalKafka
from devtools.produce import produce
from pipeline.compute import compute
from pipeline.contract.decode import to_ms
from pipeline.infra.report import render
from pipeline.infra.settings import Settings
from pipeline.rules.config import RulesConfig

NAME: Final = "stream_throughput"
SAMPLE_EVERY: Final = 0.25  # the sink's and the workers' /metrics
PY_SPY: Final = ROOT / ".venv" / "bin" / "py-spy"
PROFILE_RATE: Final = 100


@dataclass(frozen=True)
class Expected:
    events: int
    sessions: int
    by_kind: dict[str, int]
    csv: str
    event_hours: float


@dataclass
class Run:
    index: int
    workers: int
    profiled: bool
    produce_seconds: float
    #: From worker start (Popen) to ...
    first_batch_seconds: float | None = None  # ... the first sample with events metered
    first_output_seconds: float | None = None  # ... the Kafka timestamp of the first billing session
    first_emitted_seconds: float | None = None  # ... the first sample of the worker's emitted counter above 0
    input_done_seconds: float | None = None  # ... the first sample with every event metered
    visible_seconds: float = 0.0  # ... ClickHouse holding exactly the expected sessions
    events_per_s: float = 0.0  # N / visible_seconds
    events_per_s_from_first_output: float | None = None
    #: from the workers' own counters: first batch processed to last transaction committed
    worker_events_per_s: float | None = None
    #: the same per second of worker CPU (first to last batch): what a worker does with a core of its own
    worker_events_per_cpu_s: float | None = None
    worker_cpu_seconds: float | None = None  # whole process life until all rows were visible
    worker_peak_rss_mib: float | None = None
    sink_cpu_seconds: float | None = None
    broker_cpu_seconds: float | None = None
    #: CPU shares while the workers metered (first to last batch with input): 1.0 = one core; machine: all cores.
    metering_worker_cpu: float | None = None
    metering_sink_cpu: float | None = None
    metering_broker_cpu: float | None = None
    metering_machine_busy: float | None = None
    metering_other_cpu: float | None = None  # cores busy with anything else (this benchmark included)
    worker_batches: int | None = None
    worker_mean_batch_events: float | None = None
    worker_mean_batch_seconds: float | None = None
    sessions: int = 0
    verified: bool = False
    received_timeline: list[tuple[float, float]] = field(default_factory=list)
    #: (seconds, events processed): the batch histogram's sum, counted when a batch is processed, not committed
    processed_timeline: list[tuple[float, float]] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured runs (median reported)")
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--workers", type=int, default=1, help="worker processes in the group")
    parser.add_argument("--seed", type=int, default=7, help="traffic seed")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one extra run under py-spy (default: if .venv/bin/py-spy exists)",
    )
    parser.add_argument("--profile-seconds", type=int, default=20, help="py-spy duration")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a run after this many seconds")
    parser.add_argument("--keep-files", action="store_true", help="keep the temporary directory (logs, profile)")
    args = parser.parse_args()
    if args.runs < 1 or args.events < 1 or args.workers < 1:
        parser.error("--runs, --events and --workers must be at least 1")
    profile = PY_SPY.exists() if args.profile is None else args.profile
    if profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy at {PY_SPY}")

    console = Console()

    def measure(workspace: Workspace) -> None:
        path = workspace.tmp / "events.jsonl"
        expected = prepare(path, args.events, args.seed, console)
        broker = workspace.start_broker()
        plan = Plan(broker, workspace.tmp, path, expected, args.workers, args.timeout, console, args.keep_files)
        runs = [run_once(plan, i) for i in range(1, args.runs + 1)]
        profile_run: Run | None = None
        profile_summary: dict[str, Any] | None = None
        if profile:
            out = workspace.tmp / "profile.txt"
            profile_run = run_once(plan, 0, (out, args.profile_seconds))
            profile_summary = summarize_profile(out, args.profile_seconds)
        report(plan, args, runs, profile_run, profile_summary)

    return run_in_workspace("bench-throughput-", args.keep_files, console, measure)


# -- preparation ---------------------------------------------------------------------------


def prepare(path: Path, count: int, seed: int, console: Console) -> Expected:
    """Write the events and meter them offline, as `metering compute` does."""
    started = time.monotonic()
    stamps: list[str] = []
    with path.open("wb") as f:
        for event in traffic.events(START_MS, count, seed=seed):
            f.write(traffic.encode(event) + b"\n")
            stamps.append(event["occurred_at"])
    invalid: list[str] = []
    result = compute(
        path,
        ZoneInfo("UTC"),
        RulesConfig(),
        now_ms=int(time.time() * 1000),
        on_invalid=lambda lineno, reason: invalid.append(f"line {lineno}: {reason}"),
    )
    if invalid:
        raise BenchError(f"the generated traffic has invalid lines: {invalid[:3]}")
    s = result.stats
    by_kind = {"usage": s.usage_sessions, "voice": s.voice_sessions, "alert": s.alert_sessions}
    expected = Expected(
        events=count,
        sessions=sum(by_kind.values()),
        by_kind=by_kind,
        csv=render(*result.report(), "csv"),
        event_hours=(_ms(max(stamps)) - _ms(min(stamps))) / 3_600_000,
    )
    console.print(
        f"{count:,} events (seed {seed}, {expected.event_hours:.1f} h of event time) -> {expected.sessions:,} "
        f"billing sessions {by_kind} by `metering compute`; prepared in {time.monotonic() - started:.1f} s"
    )
    return expected


def _ms(stamp: str) -> int:
    return to_ms(datetime.fromisoformat(stamp.replace("Z", "+00:00")))


# -- one run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every run of one invocation shares."""

    broker: LocalKafka
    tmp: Path
    path: Path
    expected: Expected
    workers: int
    timeout: float
    console: Console
    keep_files: bool


def run_once(plan: Plan, index: int, profile: tuple[Path, int] | None = None) -> Run:  # noqa: PLR0912, PLR0915 - one measured scenario read top to bottom: start, drive, measure, stop
    """One measured run; with ``profile`` (output, seconds), py-spy records worker 0 from its first batch."""
    broker, tmp, path, expected = plan.broker, plan.tmp, plan.path, plan.expected
    workers, timeout, console = plan.workers, plan.timeout, plan.console
    label = "profiled run" if profile else f"run {index}"
    run_dir = tmp / f"run-{index}"
    base = Settings(
        kafka_bootstrap=broker.bootstrap,
        idle_partition_seconds=2.0,
        api_port=0,
        metrics_port=free_ports(1)[0],
        log_level="INFO",
    )
    settings = fresh_settings(base, run_dir)
    create_topics(broker, settings)

    produced = produce(settings, path)
    if produced.failed or produced.unconfirmed or produced.sent != expected.events:
        raise BenchError(f"{label}: producing the events failed: {produced.errors[:3]} (sent {produced.sent:,})")

    store_log = run_dir / "store.log"
    worker_logs = [run_dir / f"worker-{w}.log" for w in range(workers)]
    store = _start_store(settings, store_log)
    procs: list[subprocess.Popen[bytes]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        sink_metrics = _wait_for_store(settings, store, store_log)
        ports = free_ports(workers)
        started = time.monotonic()
        started_wall = time.time()
        procs = [start_worker(settings, log, port) for log, port in zip(worker_logs, ports, strict=True)]
        sampler = Sampler(
            {
                **{f"worker{w}": p.pid for w, p in enumerate(procs)},
                "sink": store.pid,
                "broker": broker.pid,
                "bench": os.getpid(),
            }
        )
        run = Run(index=index, workers=workers, profiled=profile is not None, produce_seconds=produced.seconds)
        deadline = started + timeout
        rows_reached: float | None = None
        last_check = 0.0
        peaks: dict[int, float] = {}
        first_batch: Snapshot | None = None
        input_done: Snapshot | None = None
        samples = 0
        received = processed = 0.0
        rows = 0.0
        while True:
            time.sleep(SAMPLE_EVERY)
            now = time.monotonic() - started
            for w, p in enumerate(procs):
                if p.poll() is not None:
                    raise BenchError(
                        f"{label}: worker {w} exited with status {p.returncode}:\n{log_tail(worker_logs[w])}"
                    )
            if store.poll() is not None:
                raise BenchError(f"{label}: the store exited with status {store.returncode}:\n{log_tail(store_log)}")
            sampler.read()
            for p in procs:
                peaks[p.pid] = max(peaks.get(p.pid, 0.0), peak_rss_mib(p.pid) or 0.0)
            samples += 1
            if received < expected.events:  # every 0.25 s: a scrape costs the worker a little
                scraped = [scrape(f"http://127.0.0.1:{port}/metrics") or {} for port in ports]
                received = sum(m.get("metering_events_received_total", 0.0) for m in scraped)
                emitted = sum(m.get("metering_billing_sessions_emitted_total", 0.0) for m in scraped)
                processed = sum(m.get("metering_worker_batch_events_sum", 0.0) for m in scraped)
                run.received_timeline.append((round(now, 3), received))
                run.processed_timeline.append((round(now, 3), processed))
                if emitted > 0 and run.first_emitted_seconds is None:
                    run.first_emitted_seconds = now
            if processed > 0 and run.first_batch_seconds is None:
                run.first_batch_seconds = now
                first_batch = sampler.snapshot()
                if profile is not None:
                    spy = _start_profiler(procs[0].pid, profile, run_dir)
            if received >= expected.events and run.input_done_seconds is None:
                run.input_done_seconds = now
                input_done = sampler.snapshot()
            rows = _metric(sink_metrics, "metering_sink_rows_total")
            if rows >= expected.sessions and (rows_reached is None or now - last_check >= 1.0):
                rows_reached = now if rows_reached is None else rows_reached
                last_check = now
                got = _usage_csv(settings)
                if got == expected.csv:
                    run.visible_seconds = now
                    run.sessions = _sessions(got)
                    run.verified = True
                    break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{label}: after {timeout:.0f} s, the worker(s) metered {received:,.0f} of {expected.events:,} "
                    f"events and the sink wrote {rows:,.0f} of {expected.sessions:,} sessions"
                    + ("; the usage in ClickHouse differs from `metering compute`" if rows_reached else "")
                    + f"\nworker log:\n{log_tail(worker_logs[0])}\nstore log:\n{log_tail(store_log)}"
                )
        sampler.read()
        cpu = sampler.cpu()
        run.events_per_s = expected.events / run.visible_seconds
        worker_cpu = [cpu[f"worker{w}"] for w in range(workers)]
        run.worker_cpu_seconds = sum(c for c in worker_cpu if c is not None)
        run.worker_peak_rss_mib = max(peaks.values()) if peaks else None
        run.sink_cpu_seconds = cpu["sink"]
        run.broker_cpu_seconds = cpu["broker"]
        run.worker_events_per_s = _worker_rate(run.processed_timeline, run.received_timeline, expected.events)
        _batch_stats(run, ports)
        if first_batch is not None and input_done is not None:
            shares = cpu_shares(first_batch, input_done)
            run.metering_worker_cpu = sum(shares[f"worker{w}"] or 0.0 for w in range(workers))
            if run.worker_events_per_s and run.metering_worker_cpu:
                run.worker_events_per_cpu_s = run.worker_events_per_s / run.metering_worker_cpu
            run.metering_sink_cpu = shares["sink"]
            run.metering_broker_cpu = shares["broker"]
            run.metering_machine_busy = shares["machine"]
            if run.metering_machine_busy is not None:
                known = run.metering_worker_cpu + sum(shares[k] or 0.0 for k in ("sink", "broker"))
                run.metering_other_cpu = run.metering_machine_busy * (os.cpu_count() or 1) - known
        first_output = _first_output_time(settings)
        if first_output is not None:
            run.first_output_seconds = first_output - started_wall
            run.events_per_s_from_first_output = expected.events / (run.visible_seconds - run.first_output_seconds)
        if spy is not None:
            try:
                spy.wait(timeout=profile[1] + 60 if profile else 60)
            except subprocess.TimeoutExpired:
                spy.kill()
                raise BenchError(f"{label}: py-spy did not finish; see {run_dir / 'py-spy.log'}") from None
            if spy.returncode != 0:
                raise BenchError(f"{label}: py-spy failed:\n{log_tail(run_dir / 'py-spy.log')}")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        for p in procs:
            stop_process(p)
        stop_process(store)
    console.print(
        f"{label}: {run.events_per_s:,.0f} events/s end to end ({run.visible_seconds:.1f} s), worker alone "
        f"{fmt(run.worker_events_per_s, 0, thousands=True)} events/s, worker CPU {fmt(run.worker_cpu_seconds, 1)} s, "
        f"peak RSS {fmt(run.worker_peak_rss_mib, 0)} MiB; {run.sessions:,} sessions verified against compute"
    )
    if not profile and not plan.keep_files:
        shutil.rmtree(run_dir, ignore_errors=True)
    return run


def _start_store(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m cli sink`: its own process, with its own embedded chDB under the run's data dir."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "sink"],
            env=child_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def _wait_for_store(settings: Settings, store: subprocess.Popen[bytes], log_path: Path) -> str:
    """The store's /metrics URL, once its API answers and its sink consumer has partitions."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if store.poll() is not None:
            raise BenchError(f"the store exited with status {store.returncode}:\n{log_tail(log_path)}")
        found = read_discovery(settings)
        if (
            found is not None
            and found.pid == store.pid
            and find_running_store(settings)
            and "partitions assigned" in log_tail(log_path, 100_000)
        ):
            return found.metrics
        time.sleep(0.2)
    raise BenchError(f"the store did not become ready in 90 s:\n{log_tail(log_path)}")


def _metric(url: str, name: str) -> float:
    values = scrape(url)
    return 0.0 if values is None else values.get(name, 0.0)


def _usage_csv(settings: Settings) -> str:
    try:
        return usage_text(settings, start=None, end=None, apps=(), account=None, by="day", tz="UTC", fmt="csv")
    except Exception as exc:  # any failure to read usage ends the run with its reason
        raise BenchError(f"reading usage through the store's API failed: {exc}") from exc


def _sessions(usage_csv: str) -> int:
    """Rows of billing_sessions behind a usage CSV: usage + voice + alert (its billing_sessions column leaves
    voice out, R8)."""
    return sum(
        int(row["usage_sessions"]) + int(row["voice_sessions"]) + int(row["alert_sessions"])
        for row in csv.DictReader(io.StringIO(usage_csv))
    )


def _worker_rate(
    processed: list[tuple[float, float]], received: list[tuple[float, float]], total: int
) -> float | None:
    """Events/s of the worker(s) from the first sample with a batch processed to the first with every event
    committed (``metering_events_received_total`` counts at commit: a transaction holds several batches)."""
    started = next(((t, n) for t, n in processed if n > 0), None)
    done = next((t for t, n in received if n >= total), None)
    if started is None or done is None or done <= started[0]:
        return None
    return (total - min(started[1], total)) / (done - started[0])


def _batch_stats(run: Run, ports: list[int]) -> None:
    batches = events = seconds = 0.0
    for port in ports:
        values = scrape(f"http://127.0.0.1:{port}/metrics") or {}
        batches += values.get("metering_worker_batch_events_count", 0.0)
        events += values.get("metering_worker_batch_events_sum", 0.0)
        seconds += values.get("metering_worker_batch_duration_seconds_sum", 0.0)
    if batches:
        run.worker_batches = int(batches)
        run.worker_mean_batch_events = events / batches
        run.worker_mean_batch_seconds = seconds / batches


def _first_output_time(settings: Settings) -> float | None:
    """Unix time of the first billing session a worker emitted: the earliest Kafka timestamp at offset 0."""
    topic = settings.topics.billing_sessions
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-bench-first",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 15
        while len(seen) < settings.partitions and time.monotonic() < deadline:
            for message in consumer.consume(settings.partitions, timeout=1.0):
                partition = message.partition()
                if message.error() is None and partition is not None and partition not in seen:
                    seen[partition] = message.timestamp()[1]
                    consumer.pause([TopicPartition(topic, partition)])
        return min(seen.values()) / 1000 if seen else None
    finally:
        consumer.close()


# -- profiling -----------------------------------------------------------------------------


def _start_profiler(pid: int, profile: tuple[Path, int], run_dir: Path) -> subprocess.Popen[bytes]:
    out, seconds = profile
    with (run_dir / "py-spy.log").open("ab") as log:
        return subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "-o",
                str(out),
                "-f",
                "raw",
                "--pid",
                str(pid),
                "-d",
                str(seconds),
                "--rate",
                str(PROFILE_RATE),
                "--gil",
                "--threads",
                "--full-filenames",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


#: Self time by the file of the innermost Python frame (C code is charged to the Python frame calling it).
CATEGORIES: Final = (
    ("stream runtime (pipeline.runtime: consume, transactions, changelog)", ("/pipeline/runtime/",)),
    ("metering rules (pipeline.rules)", ("/pipeline/rules/",)),
    (
        "decoding events, encoding records (pipeline.contract.events, pipeline.stream.records)",
        ("/pipeline/contract/events.py", "/pipeline/stream/records.py"),
    ),
    ("worker glue (pipeline.stream)", ("/pipeline/stream/",)),
    ("confluent-kafka calls", ("confluent_kafka",)),
    ("prometheus_client", ("/prometheus_client/",)),
)
#: Where each GIL sample belongs, by the frames on its stack: the first stage that matches takes it.
STAGES: Final = (
    ("the processors (MeterProcessor.process, .tick), of which:", "MeterProcessor.process|MeterProcessor.tick"),
    ("producing outputs and changelog records (StreamRuntime._produce)", "StreamRuntime._produce"),
    ("offsets and commit (StreamRuntime._commit)", "StreamRuntime._commit"),
    ("consume and group by partition (StreamRuntime._step)", "StreamRuntime._step"),
    ("other threads (metrics HTTP, plan feed)", "Thread._bootstrap"),
)
#: Inside the processors (inclusive, as shares of all samples).
PROCESS_PARTS: Final = (
    ("  metering: decode, key check, rules (PartitionMeter.process)", "PartitionMeter.process"),
    ("  outputs and state changes (MeterProcessor._emit)", "MeterProcessor._emit"),
)
OTHER_STAGE: Final = "other (rebalance callbacks, restore, start-up, ...)"


def _category(function: str, frame_file: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in frame_file for n in needles):
            return name
    return "other (stdlib, click, threading, ...)"


def summarize_profile(path: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """py-spy's raw output (--gil --threads) summarised: self time by category and function, inclusive time of
    the stages of a batch, and how much of the wall time some thread held the GIL."""
    if not path.exists():
        raise BenchError(f"py-spy wrote no profile at {path}")
    by_frame: Counter[tuple[str, str]] = Counter()
    by_category: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        by_thread[thread.partition(": ")[2] or thread] += count
        functions = {f.partition(" (")[0] for f in frames}
        function, _, where = frames[-1].partition(" (")
        stage = next((label for label, names in STAGES if functions.intersection(names.split("|"))), None)
        stages[stage or OTHER_STAGE] += count
        for label, names in PROCESS_PARTS:
            if functions.intersection(names.split("|")):
                stages[label] += count
        file = where.rstrip(")").rsplit(":", 1)[0]
        by_frame[(function, _short(file))] += count
        by_category[_category(function, file)] += count
        total += count
    if not total:
        raise BenchError(f"the py-spy profile {path} holds no samples")
    return {
        "samples": total,
        "seconds": seconds,
        "rate_hz": PROFILE_RATE,
        "gil_held_share": min(1.0, total / (PROFILE_RATE * seconds)),
        "threads": [{"thread": t, "share": n / total} for t, n in by_thread.most_common(6)],
        "categories": [{"category": c, "share": n / total} for c, n in by_category.most_common()],
        "stages": [
            {"stage": label, "share": stages[label] / total}
            for label in [
                STAGES[0][0],
                *(p for p, _ in PROCESS_PARTS),
                *(s for s, _ in STAGES[1:]),
                OTHER_STAGE,
            ]
        ],
        "top_self": [{"function": f, "file": file, "share": n / total} for (f, file), n in by_frame.most_common(top)],
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# -- report --------------------------------------------------------------------------------


COLUMNS: Final = (
    ("events/s, worker start to all rows visible", "events_per_s", 0),
    ("events/s, first output to all rows visible", "events_per_s_from_first_output", 0),
    ("events/s of the worker(s) alone (own counter)", "worker_events_per_s", 0),
    ("events per second of worker CPU (own counter / CPU)", "worker_events_per_cpu_s", 0),
    ("s: worker start -> first output record", "first_output_seconds", 1),
    ("s: worker start -> emitted counter > 0", "first_emitted_seconds", 1),
    ("s: worker start -> all input metered", "input_done_seconds", 1),
    ("s: worker start -> all rows visible", "visible_seconds", 1),
    ("worker CPU s (process life)", "worker_cpu_seconds", 1),
    ("worker peak RSS MiB", "worker_peak_rss_mib", 0),
    ("while metering: worker CPU (1 = a core)", "metering_worker_cpu", 2),
    ("while metering: sink CPU", "metering_sink_cpu", 2),
    ("while metering: broker CPU", "metering_broker_cpu", 2),
    ("while metering: machine busy (1 = all cores)", "metering_machine_busy", 2),
    ("while metering: anything else, in cores", "metering_other_cpu", 2),
    ("sink CPU s (whole run)", "sink_cpu_seconds", 1),
    ("broker CPU s (whole run)", "broker_cpu_seconds", 1),
    ("worker batches", "worker_batches", 0),
    ("mean events per batch", "worker_mean_batch_events", 0),
    ("mean batch duration s", "worker_mean_batch_seconds", 3),
    ("produce s (not timed)", "produce_seconds", 1),
)


def report(
    plan: Plan, args: argparse.Namespace, runs: list[Run], profile_run: Run | None, profile: dict[str, Any] | None
) -> None:
    console, expected = plan.console, plan.expected
    table = Table(
        title=f"Stream throughput: {expected.events:,} events -> {expected.sessions:,} billing sessions, "
        f"{args.workers} worker(s), store in its own process"
    )
    table.add_column("")
    for r in runs:
        table.add_column(f"run {r.index}", justify="right")
    table.add_column("median", justify="right", style="bold")
    if profile_run is not None:
        table.add_column("py-spy run", justify="right", style="dim")
    medians = {key: median([getattr(r, key) for r in runs]) for _, key, _ in COLUMNS}
    for title, key, digits in COLUMNS:
        cells = [fmt(getattr(r, key), digits, thousands=True) for r in runs]
        cells.append(fmt(medians[key], digits, thousands=True))
        if profile_run is not None:
            cells.append(fmt(getattr(profile_run, key), digits, thousands=True))
        table.add_row(title, *cells)
    console.print(table)
    console.print(
        "First output = Kafka timestamp of the first billing session emitted. All rows visible = the sink's row "
        "counter reached the expected count and the usage API's CSV equals `metering compute`'s. The worker's own "
        "rate is its metering_events_received_total from its first to its last batch. The py-spy run is not in the "
        "medians."
    )
    if profile is not None:
        _print_profile(console, profile)
    payload = {
        "benchmark": NAME,
        "environment": environment(),
        "parameters": {
            "runs": args.runs,
            "events": args.events,
            "workers": args.workers,
            "seed": args.seed,
            "partitions": 6,
            "idle_partition_seconds": 2.0,
            "batch_size": Settings.batch_size,
            "batch_seconds": Settings.batch_seconds,
            "sink_batch_seconds": Settings.sink_batch_seconds,
            "store": "separate process (python -m cli sink, embedded chDB)",
        },
        "expected": {
            "events": expected.events,
            "sessions": expected.sessions,
            "by_kind": expected.by_kind,
            "event_hours": round(expected.event_hours, 2),
        },
        "median": medians,
        "runs": [_run_json(r) for r in runs],
        "profiled_run": _run_json(profile_run) if profile_run else None,
        "profile": profile,
    }
    name = NAME if args.workers == 1 else f"{NAME}-workers{args.workers}"
    console.print(f"wrote {write_result(name, payload)}")


def _print_profile(console: Console, profile: dict[str, Any]) -> None:
    console.print(
        f"py-spy on worker 0 for {profile['seconds']} s from its first batch, {profile['rate_hz']} Hz, only samples "
        f"of the thread holding the GIL: {profile['samples']:,} samples, so some thread held the GIL "
        f"{profile['gil_held_share']:.0%} of the time; by thread: "
        + ", ".join(f"{t['thread']} {t['share']:.0%}" for t in profile["threads"])
    )
    tables = (
        ("self time by where it is spent", "categories", "category"),
        ("GIL samples by stage (each sample counted once; the indented lines split the first)", "stages", "stage"),
    )
    for title, key, column in tables:
        t = Table(title=title)
        t.add_column(column)
        t.add_column("share of GIL samples", justify="right")
        for row in profile[key]:
            t.add_row(row[column], f"{row['share']:.1%}")
        console.print(t)
    t = Table(title="top self-time functions")
    t.add_column("function")
    t.add_column("file")
    t.add_column("share", justify="right")
    for row in profile["top_self"]:
        t.add_row(row["function"], row["file"], f"{row['share']:.1%}")
    console.print(t)


def _run_json(run: Run) -> dict[str, Any]:
    out = asdict(run)
    out["received_timeline"] = run.received_timeline[:: max(1, len(run.received_timeline) // 60)]
    out["processed_timeline"] = run.processed_timeline[:: max(1, len(run.processed_timeline) // 60)]
    return out


if __name__ == "__main__":
    sys.exit(main())
