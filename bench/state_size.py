"""The worker's state: memory per open conversation, and bytes on disk per dedupe id (a day at 10,000 events/s).

No broker: realistic traffic (``devtools.traffic``, fixed seed) goes through one
``PartitionMeter`` per partition exactly as the worker feeds it (batches of its partition's
messages, the compiled engine), and each batch's state changes are written, as the worker's
runtime writes them after a commit, to a RocksDB backend per partition (``pipeline.runtime``).

1. **Memory per open conversation**: the Python heap the meters hold (tracemalloc) divided by
   the conversations with a session not yet final, with a dedupe horizon of 0, so that final
   conversations' ids do not count; measured at the end of the traffic, before the partitions
   go idle. The same with the default 7-day horizon gives the memory per dedupe id kept.
2. **Disk per dedupe id**: the RocksDB directories after a full compaction, divided by the
   event ids the state holds (every id of the run: its event time spans hours, within 7 days);
   times 864,000,000 (a day at 10,000 events/s) is a day of dedupe ids.

    .venv/bin/python bench/state_size.py [--events 500000]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from harness import HISTORY_START_MS, environment, write_result
from rich.console import Console

from devtools import traffic
from pipeline.contract.partitioner import partition_of
from pipeline.infra import native
from pipeline.infra.settings import Topics
from pipeline.rules import meter as meter_module
from pipeline.rules.config import IdleTimeouts, RulesConfig
from pipeline.runtime.processor import Record
from pipeline.runtime.state import RocksBackend
from pipeline.stream.partition import PartitionMeter

NAME: Final = "state_size"
PARTITIONS: Final = 6
BATCH: Final = 5000
DAY_AT_10K: Final = 10_000 * 86_400
TOPICS: Final = Topics()


def messages(count: int, seed: int) -> list[Record]:
    out = []
    offsets: dict[tuple[str, int], int] = {}
    for event in traffic.events(HISTORY_START_MS, count, seed=seed):
        topic = TOPICS.of_type(event["type"])
        key = event["app_id"] if topic == TOPICS.alerts else event["conversation_id"]
        p = partition_of(key.encode(), PARTITIONS)
        offset = offsets.get((topic, p), 0)
        offsets[(topic, p)] = offset + 1
        out.append(Record(topic, p, offset, traffic.encode(event)))
    return out


def meters(config: RulesConfig) -> dict[tuple[str, int], PartitionMeter]:
    timeouts = IdleTimeouts(config)
    out = {}
    for p in range(PARTITIONS):
        out[("c", p)] = PartitionMeter(
            p, PARTITIONS, config, timeouts, conversation_topics=(TOPICS.turns, TOPICS.transfers)
        )
        out[("a", p)] = PartitionMeter(p, PARTITIONS, config, timeouts, alert_topics=(TOPICS.alerts,))
    return out


def feed(records: list[Record], ms: dict[tuple[str, int], PartitionMeter], sink: Any = None) -> None:
    now_ms = int(time.time() * 1000)
    for start in range(0, len(records), BATCH):
        groups: dict[tuple[str, int], list[Record]] = {}
        for r in records[start : start + BATCH]:
            groups.setdefault(("a" if r.topic == TOPICS.alerts else "c", r.partition), []).append(r)
        for key, group in groups.items():
            result = ms[key].process(group, now_ms, 0, lagging=())
            if sink is not None:
                sink(key, result.changes)


def memory(records: list[Record], config: RulesConfig) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    ms = meters(config)
    feed(records, ms)
    gc.collect()
    heap, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    conversations = [c for m in ms.values() for c in m.meter.conversations.values()]
    open_ = sum(1 for c in conversations if c.events)
    buffered = sum(len(c.events) for c in conversations)
    ids = sum(len(c.seen) for c in conversations) + sum(len(m.meter.alerts_seen) for m in ms.values())
    return {
        "heap_bytes": heap,
        "open_conversations": open_,
        "conversations": len(conversations),
        "buffered_events": buffered,
        "dedupe_ids": ids,
        "bytes_per_open_conversation": heap / max(1, open_),
    }


def disk(records: list[Record], config: RulesConfig, directory: Path) -> dict[str, float]:
    ms = meters(config)
    backends = {key: RocksBackend(directory / f"{key[0]}-{key[1]}") for key in ms}
    offsets = dict.fromkeys(ms, 0)

    def write(key: tuple[str, int], changes: dict[str, bytes | None]) -> None:
        offsets[key] += len(changes)
        backends[key].write({f"{key[1]}\x1e{k}".encode(): v for k, v in changes.items()}, offsets[key])

    feed(records, ms, write)
    for backend in backends.values():
        backend._db.compact_range(None, None)
        backend.close()
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    ids = sum(len(c.seen) for m in ms.values() for c in m.meter.conversations.values())
    ids += sum(len(m.meter.alerts_seen) for m in ms.values())
    return {
        "disk_bytes": size,
        "dedupe_ids": ids,
        "bytes_per_dedupe_id": size / max(1, ids),
        "day_at_10000_per_s_gib": size / max(1, ids) * DAY_AT_10K / 2**30,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    console = Console()
    records = messages(args.events, args.seed)
    engine = 'compiled' if native.is_compiled(meter_module) else 'interpreted'
    console.print(f"{len(records):,} events; engine {engine}")
    open_only = memory(records, replace(RulesConfig(), dedupe_horizon_ms=0))
    with_ids = memory(records, RulesConfig())
    ids_memory = (with_ids["heap_bytes"] - open_only["heap_bytes"]) / max(
        1, with_ids["dedupe_ids"] - open_only["dedupe_ids"]
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        on_disk = disk(records, RulesConfig(), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"memory: {open_only['bytes_per_open_conversation']:,.0f} bytes per open conversation "
        f"({open_only['open_conversations']:,} open, {open_only['buffered_events']:,} events buffered, "
        f"{open_only['heap_bytes'] / 2**20:.1f} MiB); with the 7-day horizon {ids_memory:,.0f} bytes per dedupe id "
        f"kept ({with_ids['dedupe_ids']:,} ids, {with_ids['heap_bytes'] / 2**20:.1f} MiB)"
    )
    console.print(
        f"disk (RocksDB, compacted): {on_disk['bytes_per_dedupe_id']:.1f} bytes per dedupe id "
        f"({on_disk['disk_bytes'] / 2**20:.1f} MiB for {on_disk['dedupe_ids']:,} ids): a day at 10,000 events/s "
        f"is {on_disk['day_at_10000_per_s_gib']:,.1f} GiB"
    )
    payload = {
        "benchmark": NAME,
        "environment": environment(),
        "parameters": {"events": args.events, "seed": args.seed, "partitions": PARTITIONS, "batch": BATCH},
        "memory_open_only": open_only,
        "memory_with_7_day_horizon": with_ids,
        "memory_bytes_per_dedupe_id": ids_memory,
        "disk": on_disk,
    }
    console.print(f"wrote {write_result(NAME, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
