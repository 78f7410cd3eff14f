"""The stream runtime on the real broker, with a processor small enough to check by hand.

``Counter`` counts the messages of each key: its state is the count per key, and for each
message it outputs ``key=count``. Exactly once means: the outputs (read committed) are
``k=1..n`` for every key, once each, and the state restored from the changelog is the counts.
Each test runs the runtime in this process (a thread) so it can look into the stores.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.infra import failpoints
from pipeline.infra.settings import Settings
from pipeline.runtime import Effects, PartitionStore, Record, RuntimeConfig, StreamRuntime, Topology
from pipeline.runtime.restore import restore
from pipeline.runtime.state import MemoryBackend, RocksBackend
from tests.support import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 3


class Counter:
    def __init__(self, store: PartitionStore, opened: list[int], partition: int) -> None:
        self.store = store
        opened.append(partition)

    def process(self, records: Sequence[Record], now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        for r in records:
            key = r.key or b""
            count = int(self.store.get(key) or b"0") + 1
            self.store.put(key, str(count).encode())
            effects.produce(OUT[0], key, b"%s=%d" % (key, count))

    def tick(self, now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        pass

    def close(self) -> None:
        pass


OUT = [""]


@pytest.fixture
def topics(settings: Settings, create_topics: Callable[[dict[str, int]], None]) -> tuple[str, str, str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = (f"in-{suffix}", f"side-{suffix}", f"out-{suffix}", f"changelog-{suffix}")
    create_topics(dict.fromkeys(names, PARTITIONS))
    OUT[0] = names[2]
    return names


def runtime(
    settings: Settings,
    topics: tuple[str, str, str, str],
    store: str,
    opened: list[int],
    *,
    transaction_seconds: float = 1.0,
    batches: list[int] | None = None,
) -> StreamRuntime:
    """A Counter runtime (``transaction_seconds=0``: a transaction per batch); ``batches`` gets each batch's size."""
    source, side, _, changelog = topics

    def open_partition(partition: int, s: PartitionStore, now_ms: int) -> Counter:
        return Counter(s, opened, partition)

    config = RuntimeConfig(
        group=f"{settings.app_id}-counter",
        transactional_id=f"{settings.app_id}-counter-0",
        static_member=False,
        store=store,
        state_dir=settings.data_dir / "counter-state",
        batch_size=50,
        batch_seconds=0.2,
        tick_seconds=1.0,
        role="counter",
        transaction_seconds=transaction_seconds,
    )
    on_batch = None if batches is None else (lambda events, seconds: batches.append(events))
    return StreamRuntime(
        settings, config, [Topology("counter", (source, side), changelog, open_partition)], on_batch=on_batch
    )


class Running:
    def __init__(self, rt: StreamRuntime) -> None:
        self.runtime = rt
        self.stop = threading.Event()
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.runtime.run(self.stop)
        except BaseException as exc:
            self.error.append(exc)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def send(settings: Settings, topic: str, keys: list[str]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for key in keys:
        producer.produce(topic, b"x", key.encode(), partition=hash(key) % PARTITIONS)
    assert producer.flush(30) == 0


def committed_values(settings: Settings, topic: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        ended: set[int] = set()
        while len(ended) < PARTITIONS:
            for m in consumer.consume(500, 2.0):
                if m.error() is None:
                    out.append(m.value() or b"")
                else:
                    ended.add(m.partition() or 0)
    finally:
        consumer.close()
    return out


def expected(keys: list[str]) -> list[bytes]:
    counts: dict[str, int] = {}
    out = []
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
        out.append(f"{key}={counts[key]}".encode())
    return out


KEYS = [f"k{i % 7}" for i in range(400)]


@pytest.fixture
def no_failpoints() -> Iterator[None]:
    yield
    failpoints._points = None


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_aborted_transactions_leave_no_output_and_no_state_and_the_batch_is_done_again(
    settings: Settings, topics: tuple[str, str, str, str], store: str, no_failpoints: None
) -> None:
    """Commits fail between produce and commit for 2 s from the 3rd: each aborts, the batch is written again from
    what its processors produced (nothing is processed again, no processor is rebuilt), and counts once."""
    settings = replace(settings, data_dir=settings.data_dir / store)
    source, side, out, changelog = topics
    failpoints._points = failpoints.parse("counter.before_commit=fail:2@3")
    send(settings, source, KEYS[:200])
    opened: list[int] = []
    rt = runtime(settings, topics, store, opened, transaction_seconds=0.0)  # a transaction per batch
    with Running(rt) as running:
        wait_until(lambda: rt.committed_batches >= 3, 60, "commits after the aborts")
        send(settings, side, KEYS[200:])
        wait_until(lambda: len(committed_values(settings, out)) >= len(KEYS), 60, "every output committed")
        assert not running.error
    values = committed_values(settings, out)
    assert sorted(values) == sorted(expected(KEYS[:200] + KEYS[200:])), "each output once, none of an aborted batch"
    assert rt.aborts >= 1, "transactions aborted"
    assert sorted(opened) == list(range(PARTITIONS)), "no processor was rebuilt: the aborted batches were written again"
    backends = {(changelog, p): MemoryBackend() for p in range(PARTITIONS)}
    restore(settings, backends)
    state = {k: v for b in backends.values() for k, v in b.items()}
    assert state == {k.encode(): str(KEYS.count(k)).encode() for k in set(KEYS)}, "the changelog holds committed counts"


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_a_transaction_of_several_batches_reads_its_own_state_and_aborts_as_a_whole(
    settings: Settings, topics: tuple[str, str, str, str], store: str, no_failpoints: None
) -> None:
    """A backlog is read in transactions of several batches: each batch counts on from the state the previous
    ones left uncommitted; the first transaction's commit fails for 1 s, and all of its batches are written
    again, once, from what is in hand."""
    settings = replace(settings, data_dir=settings.data_dir / store)
    source, _, out, changelog = topics
    failpoints._points = failpoints.parse("counter.before_commit=fail:1")
    send(settings, source, KEYS)
    opened: list[int] = []
    batches: list[int] = []
    rt = runtime(settings, topics, store, opened, transaction_seconds=30.0, batches=batches)
    with Running(rt) as running:
        wait_until(lambda: len(committed_values(settings, out)) >= len(KEYS), 60, "every output committed")
        assert not running.error
    assert sorted(committed_values(settings, out)) == sorted(expected(KEYS)), "each output once, counted on"
    assert rt.aborts >= 1, "the first commit failed"
    assert sum(batches) == len(KEYS)
    assert len([b for b in batches if b]) > rt.committed_batches, "transactions held several batches"
    assert sorted(opened) == list(range(PARTITIONS)), "no processor was rebuilt"
    backends = {(changelog, p): MemoryBackend() for p in range(PARTITIONS)}
    restore(settings, backends)
    state = {k: v for b in backends.values() for k, v in b.items()}
    assert state == {k.encode(): str(KEYS.count(k)).encode() for k in set(KEYS)}, "the changelog holds the counts"


def test_a_rocksdb_store_resumes_from_its_own_offset_and_holds_only_committed_state(
    settings: Settings, topics: tuple[str, str, str, str], no_failpoints: None
) -> None:
    """Restarted on the same state directory, the store reads only the changelog's tail; an aborted batch's
    state is never written to it."""
    source, _, out, _ = topics
    send(settings, source, KEYS[:100])
    opened: list[int] = []
    rt = runtime(settings, topics, "rocksdb", opened)
    with Running(rt):
        wait_until(lambda: len(committed_values(settings, out)) >= 100, 60, "the first outputs")
    failpoints._points = failpoints.parse("counter.before_commit=fail:3600")
    send(settings, source, KEYS[100:150])
    rt = runtime(settings, topics, "rocksdb", opened)
    with Running(rt):
        wait_until(lambda: rt.aborts >= 3, 60, "aborted transactions")
    on_disk = {}
    for p in range(PARTITIONS):
        backend = RocksBackend(settings.data_dir / "counter-state" / "counter" / str(p))
        items = dict(backend.items())
        assert backend.changelog_offset > 0 or not items, "a store with state knows how far into the changelog it is"
        on_disk.update(items)
        backend.close()
    assert on_disk == {k.encode(): str(KEYS[:100].count(k)).encode() for k in set(KEYS[:100])}, (
        "only what committed reached the disk"
    )
    failpoints._points = None
    rt = runtime(settings, topics, "rocksdb", opened)
    with Running(rt):
        wait_until(lambda: len(committed_values(settings, out)) >= 150, 60, "the batch done again")
    assert sorted(committed_values(settings, out)) == sorted(expected(KEYS[:150]))
