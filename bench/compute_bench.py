"""`metering compute` on a realistic file of 1,000,000 events: events/s on one core, peak memory.

Generates the file once (bench/data, git-ignored) with pipeline.traffic: conversations on six
channels with idle gaps, transfers (some left open), end-of-conversation turns, test and bot-only
sessions, alerts, 1 % producer duplicates and a few seconds of arrival jitter. Each run is a
fresh `metering compute` process pinned to one CPU; the figures are the median of the runs.

    .venv/bin/python bench/compute_bench.py [--events 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline import traffic

ROOT = Path(__file__).resolve().parents[1]
T0_MS = 1_793_527_200_000  # 2026-11-01T10:00:00Z


def generate(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for event in traffic.events(T0_MS, count, seed=7):
            f.write(traffic.encode(event) + b"\n")
    tmp.rename(path)


def run_once(path: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stdout of one `metering compute` on one core."""
    command = [sys.executable, "-m", "pipeline", "compute", "--events", str(path)]
    if hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", "0", *command]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024, done.stdout.decode()


def engine() -> str:
    """How `metering compute` runs here: "compiled" (make setup) or "interpreted" (see pipeline/native.py)."""
    done = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.ENGINE)"], capture_output=True, check=True, text=True
    )
    return done.stdout.strip()


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
    size_mib = path.stat().st_size / 2**20
    mode = engine()
    if mode != "compiled":
        console.print("[yellow]the rules engine runs interpreted here (about half as fast): `make setup` compiles it")
    runs = []
    outputs = set()
    for i in range(args.runs):
        seconds, peak_mib, out = run_once(path)
        outputs.add(out)
        runs.append({"seconds": seconds, "events_per_second": args.events / seconds, "peak_rss_mib": peak_mib})
        rate = args.events / seconds
        console.print(f"run {i + 1}: {seconds:.2f} s, {rate:,.0f} events/s, peak RSS {peak_mib:.0f} MiB")
    assert len(outputs) == 1, "runs disagree: the result must be deterministic"
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    table = Table(title=f"metering compute, {args.events:,} events ({size_mib:.0f} MiB), one core, {mode} engine")
    for column in ("median events/s", "median seconds", "peak RSS (MiB)", "usage rows"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{median['events_per_second']:,.0f}",
        f"{median['seconds']:.2f}",
        f"{max(r['peak_rss_mib'] for r in runs):.0f}",
        str(len(outputs.pop().splitlines()) - 1),
    )
    console.print(table)
    result = {"events": args.events, "file_mib": round(size_mib, 1), "engine": mode, "runs": runs, "median": median}
    out = ROOT / "bench" / "results" / "compute.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
