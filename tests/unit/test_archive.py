"""The worker's on-disk archive of final conversations and alert ids (``pipeline.stream.archive``).

A meter with an archive must bill exactly what one without does (same sessions, same
duplicates and late events), hold only open conversations in memory, and be rebuilt from its
store mid-stream without a difference. The store here is a real RocksDB backend in a temporary
directory, written after each batch as the runtime writes it after a commit.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools import traffic
from pipeline.contract.partitioner import partition_of
from pipeline.infra.settings import Topics
from pipeline.rules.config import IdleTimeouts, RulesConfig
from pipeline.runtime.processor import Record
from pipeline.runtime.state import PartitionStore, RocksBackend
from pipeline.stream.archive import StoreArchive
from pipeline.stream.partition import PartitionMeter
from tests.support import T0

TOPICS = Topics()
PARTITIONS = 2
P = 1
PREFIX = f"{P}\x1e"
CONFIG = RulesConfig(dedupe_horizon_ms=2 * 3600 * 1000)  # short: entries expire within the run


def records(count: int, seed: int) -> list[Record]:
    out = []
    offsets: dict[str, int] = {}
    for event in traffic.events(T0, count, seed=seed):
        topic = TOPICS.of_type(event["type"])
        key = event["app_id"] if topic == TOPICS.alerts else event["conversation_id"]
        if partition_of(key.encode(), PARTITIONS) != P:
            continue
        offsets[topic] = offsets.get(topic, 0) + 1
        out.append(Record(topic, P, offsets[topic], traffic.encode(event)))
    # every event a second time, later: copies of archived conversations and alerts
    return out + [Record(r.topic, P, r.offset + 10**6, r.value) for r in out[: len(out) // 3]]


def meter(store: PartitionStore | None) -> PartitionMeter:
    return PartitionMeter(
        P,
        PARTITIONS,
        CONFIG,
        IdleTimeouts(CONFIG),
        conversation_topics=(TOPICS.turns, TOPICS.transfers),
        alert_topics=(TOPICS.alerts,),
        archive=None if store is None else StoreArchive(store, PREFIX),
    )


def commit(store: PartitionStore, changes: dict[str, bytes | None]) -> None:
    for key, value in changes.items():
        if value is None:
            store.delete((PREFIX + key).encode())
        else:
            store.put((PREFIX + key).encode(), value)
    store.backend.write(store.take_pending(), 0)


def restored(store: PartitionStore) -> PartitionMeter:
    m = meter(store)
    prefix = PREFIX.encode()
    items = [*store.range(prefix + b"a", prefix + b"b"), *store.range(prefix + b"c", prefix + b"d")]
    clock = store.get(prefix + b"p")
    if clock is not None:
        items.append((prefix + b"p", clock))
    m.restore((k[len(prefix) :].decode(), v) for k, v in items)
    return m


def run(batches: list[list[Record]], store: PartitionStore | None, restart_at: int = -1) -> tuple[list[str], int, int]:
    now = int(time.time() * 1000)
    m = meter(store)
    ids: list[str] = []
    duplicates = late = 0
    for i, batch in enumerate(batches):
        if i == restart_at:
            assert store is not None
            m = restored(store)
        result = m.process(batch, now, 0)
        ids.extend(s.billing_session_id for s in result.sessions)
        duplicates += sum(result.duplicates.values())
        late += len(result.late)
        if store is not None:
            commit(store, result.changes)
    final = m.idle_tick(now, 0, backlog=False)
    ids.extend(s.billing_session_id for s in final.sessions)
    return sorted(ids), duplicates, late


@pytest.fixture
def store(tmp_path: Path) -> PartitionStore:
    return PartitionStore(RocksBackend(tmp_path / "p1"))


@pytest.mark.parametrize("restart_at", [-1, 3])
def test_a_meter_with_an_archive_bills_exactly_what_one_in_memory_does(store: PartitionStore, restart_at: int) -> None:
    rs = records(4000, seed=5)
    batches = [rs[i : i + 300] for i in range(0, len(rs), 300)]
    expected = run(batches, None)
    assert expected[1] > 100, "the copies are recognised as duplicates"
    assert run(batches, store, restart_at) == expected


def test_final_conversations_and_alert_ids_leave_memory_and_expire_from_disk(store: PartitionStore) -> None:
    rs = records(4000, seed=6)
    m = meter(store)
    now = int(time.time() * 1000)
    for i in range(0, len(rs), 300):
        commit(store, m.process(rs[i : i + 300], now, 0).changes)
    in_memory = m.meter.conversations.values()
    assert all(c.events for c in in_memory), "only conversations with a session not yet final stay in memory"
    assert not m.meter.alerts_seen
    archived = [k for k, _ in store.backend.items() if k.startswith(f"{PREFIX}z".encode())]
    index = [k for k, _ in store.backend.items() if k.startswith(f"{PREFIX}x".encode())]
    assert archived, "final conversations and alert ids are on disk"
    assert len(index) == len(archived), "each archived entry has its one expiry index entry"
    oldest = min(int(k.split(b"\x1f")[1]) for k in index)
    m.meter.partition.high_water = oldest - 1
    store.put(b"unrelated", b"")
    StoreArchive(store, PREFIX).expire(oldest + 1)
    store.backend.write(store.take_pending(), 0)
    left = [k for k, _ in store.backend.items() if k.startswith(f"{PREFIX}x".encode())]
    assert len(left) < len(index), "entries past their expiry are forgotten"
    assert all(int(k.split(b"\x1f")[1]) >= oldest + 1 for k in left)
