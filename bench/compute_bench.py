"""`metering compute` on a realistic file of 1,000,000 events: events/s on one core, peak memory.

Generates the files once (bench/data, git-ignored) with devtools.traffic: conversations on six
channels with idle gaps, transfers (some left open), end-of-conversation turns, test and bot-only
sessions, alerts, 1 % producer duplicates and a few seconds of arrival jitter; then the same
events with 2 % of them re-sent up to 300 lines later (an export of an at-least-once pipeline:
many copies come after their conversation session is final), which must be metered in the same
single pass. Each run is a fresh `metering compute` process pinned to one CPU; the figures are the
median of the runs, per file.

    .venv/bin/python bench/compute_bench.py [--events 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from devtools import traffic

ROOT = Path(__file__).resolve().parents[1]
T0_MS = 1_793_527_200_000  # 2026-11-01T10:00:00Z


def generate(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for event in traffic.events(T0_MS, count, seed=7):
            f.write(traffic.encode(event) + b"\n")
    tmp.rename(path)


def with_resent_copies(source: Path, path: Path) -> None:
    """``source`` with 2 % of its lines re-sent up to 300 lines later."""
    tmp = path.with_suffix(".tmp")
    with source.open("rb") as f, tmp.open("wb") as out:
        lines = (line.rstrip(b"\n") for line in f)
        out.writelines(line + b"\n" for line in traffic.with_resent_copies(lines, share=0.02, within=300, seed=13))
    tmp.rename(path)


def run_once(path: Path) -> tuple[float, float, float, str, str]:
    """Wall seconds, CPU seconds, peak RSS in MiB, stdout and stderr of one `metering compute` on one core.

    CPU seconds (user + system) beside wall: on a shared machine the wall time counts the other
    processes' turns on the core, the CPU time only this process's work.
    """
    command = [sys.executable, "-m", "cli", "compute", "--events", str(path)]
    if hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", "0", *command]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # this process's own peak RSS, not the largest so far
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"metering compute failed: {stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout, stderr


def engine() -> str:
    """How `metering compute` runs here: "compiled" (make setup) or "interpreted" (see pipeline/infra/native.py)."""
    done = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.ENGINE)"], capture_output=True, check=True, text=True
    )
    return done.stdout.strip()


def measure(console: Console, path: Path, runs: int) -> dict[str, Any]:
    """``runs`` runs over ``path``: each must give the same rows in one pass (no "metered again")."""
    events = sum(1 for _ in path.open("rb"))
    results = []
    outputs = set()
    for i in range(runs):
        seconds, cpu_seconds, peak_mib, out, err = run_once(path)
        if "metered again" in err:
            raise SystemExit(f"{path.name} was not metered in one pass: {err.strip()}")
        outputs.add(out)
        results.append(
            {
                "seconds": seconds,
                "events_per_second": events / seconds,
                "cpu_seconds": cpu_seconds,
                "events_per_cpu_second": events / cpu_seconds,
                "peak_rss_mib": peak_mib,
            }
        )
        console.print(
            f"{path.name} run {i + 1}: {seconds:.2f} s, {events / seconds:,.0f} events/s; "
            f"{cpu_seconds:.2f} CPU s, {events / cpu_seconds:,.0f} events per CPU second; {peak_mib:.0f} MiB"
        )
    assert len(outputs) == 1, "runs disagree: the result must be deterministic"
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    return {
        "file": path.name,
        "events": events,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "usage_rows": len(outputs.pop().splitlines()) - 1,
        "runs": results,
        "median": median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    path = ROOT / "bench" / "data" / f"events-{args.events}.jsonl"
    if not path.exists():
        with console.status(f"generating {args.events:,} events into {path}"):
            generate(path, args.events)
    resent = path.with_name(f"events-{args.events}-resent.jsonl")
    if not resent.exists():
        with console.status(f"re-sending 2 % of them into {resent}"):
            with_resent_copies(path, resent)
    mode = engine()
    if mode != "compiled":
        console.print("[yellow]the rules engine runs interpreted here (about half as fast): `make setup` compiles it")
    files = [measure(console, p, args.runs) for p in (path, resent)]
    table = Table(title=f"metering compute, one core, {mode} engine")
    table.add_column("file", no_wrap=True)
    for column in ("events", "median events/s", "median events/CPU s", "median seconds", "peak RSS (MiB)", "rows"):
        table.add_column(column, justify="right")
    for f in files:
        table.add_row(
            f["file"],
            f"{f['events']:,}",
            f"{f['median']['events_per_second']:,.0f}",
            f"{f['median']['events_per_cpu_second']:,.0f}",
            f"{f['median']['seconds']:.2f}",
            f"{max(r['peak_rss_mib'] for r in f['runs']):.0f}",
            str(f["usage_rows"]),
        )
    console.print(table)
    result = {**files[0], "engine": mode, "resent": files[1]}
    out = ROOT / "bench" / "results" / "compute.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
