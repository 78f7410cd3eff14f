"""Restoring partitions: their inputs' committed offsets, then their changelogs read to the end into stores.

The engine assigns a partition paused and hands it to the :class:`Restorer`, a thread of its
own, so that a long restore neither holds a rebalance callback nor stops the partitions already
running; the engine builds the processor and resumes the inputs once the restore is done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.infra.kafka import KafkaSetupError, consumer_config
from pipeline.infra.logs import fields
from pipeline.infra.retry import Backoff, retrying
from pipeline.infra.settings import Settings
from pipeline.runtime.processor import Topology
from pipeline.runtime.state import Backend, PartitionStore

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_SECONDS: Final = 600.0
#: How long an assignment waits for the previous owner's open transaction to be resolved.
STABLE_OFFSETS_SECONDS: Final = 300.0
_EVERY_HALF_SECOND: Final = Backoff(initial=0.5, maximum=0.5, jitter=0.0)
#: Changes written to a backend at once while restoring.
CHUNK: Final = 10_000


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 60.0) -> tuple[int, int]:
    """Low and high (last stable, read committed) offsets; retried while a new topic's leader is elected."""
    asking = retrying(
        "reading watermark offsets", transient=KafkaException, seconds=timeout, backoff=_EVERY_HALF_SECOND, topic=topic
    )
    try:
        low, high = asking(consumer.get_watermark_offsets, TopicPartition(topic, partition), timeout=10)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"cannot read the offsets of {topic} partition {partition} ({exc.args[0]}): check the brokers"
        ) from exc
    return int(low), int(high)


def reader(settings: Settings, name: str) -> Consumer:
    """A group-less, read_committed consumer that reports the end of each partition."""
    return Consumer(
        consumer_config(
            settings,
            f"{settings.app_id}-{name}",
            **{"enable.partition.eof": True, "fetch.message.max.bytes": 16 << 20},
        )
    )


def restore(settings: Settings, backends: Mapping[tuple[str, int], Backend]) -> dict[tuple[str, int], int]:  # noqa: PLR0912 - the restore loop: assign, poll, each end condition of a partition
    """Bring each ``(changelog topic, partition)``'s backend up to the changelog's end; records read per partition.

    A backend resumes from its own changelog offset (a RocksDB store kept on disk), or from the
    beginning. One that claims to be past the end of the log (the topic was recreated) is wiped.
    Aborted transactions' records are never read (read_committed), so state written by a batch
    whose transaction aborted cannot reach a store.
    """
    counts = dict.fromkeys(backends, 0)
    if not backends:
        return counts
    consumer = reader(settings, "restore")
    try:
        starts: dict[tuple[str, int], int] = {}
        for (topic, partition), backend in backends.items():
            low, high = watermarks(consumer, topic, partition)
            start = backend.changelog_offset
            if start > high:
                log.warning(
                    "local state is ahead of its changelog (the topic was recreated?): restoring it from the beginning",
                    extra=fields(topic=topic, partition=partition, local_offset=start, end=high),
                )
                backend.wipe()
                start = 0
            if max(start, low) < high:
                starts[(topic, partition)] = max(start, low)
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        pending: dict[tuple[str, int], dict[bytes, bytes | None]] = {tp: {} for tp in starts}
        last: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + RESTORE_TIMEOUT_SECONDS
        while starts:
            if time.monotonic() > deadline:
                raise KafkaSetupError(
                    f"could not read changelog partitions {sorted(starts)} to the end within "
                    f"{RESTORE_TIMEOUT_SECONDS:.0f} s: check the brokers"
                )
            for m in consumer.consume(5000, timeout=1.0):
                tp = (m.topic() or "", m.partition() or 0)
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if tp in starts:
                            end = m.offset() or 0
                            backends[tp].write(pending.pop(tp), max(end, last.get(tp, -1) + 1))
                            del starts[tp]
                        continue
                    raise KafkaException(error)
                key = m.key()
                if key is None or tp not in pending:
                    continue
                chunk = pending[tp]
                chunk[key] = m.value()
                last[tp] = m.offset() or 0
                counts[tp] += 1
                if len(chunk) >= CHUNK:
                    backends[tp].write(chunk, last[tp] + 1)
                    pending[tp] = {}
    finally:
        consumer.close()
    return counts


def committed_offsets(consumer: Consumer, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
    """The group's committed offsets of ``tps`` (the log start where none), once they are stable.

    A read_committed consumer asks for stable offsets: while the previous owner of a partition
    has a transaction open with offsets in it, the answer waits (or fails, and is asked again)
    until that transaction is committed or aborted. Only then is the changelog read, so that it
    holds whatever that transaction wrote.
    """
    asking = retrying(
        "waiting for stable committed offsets",
        transient=KafkaException,
        seconds=STABLE_OFFSETS_SECONDS,
        backoff=_EVERY_HALF_SECOND,
        level=logging.INFO,  # expected while the previous owner's transaction is open
    )
    found = asking(consumer.committed, tps, timeout=30)
    out = {}
    for tp in found:
        offset = tp.offset
        if offset < 0:
            offset, _ = watermarks(consumer, tp.topic, tp.partition)
        out[(tp.topic, tp.partition)] = offset
    return out


Key = tuple[str, int]


@dataclass
class RestoreJob:
    """Partitions assigned together, restored together: their offsets, stores, and how far each changelog was."""

    wanted: list[tuple[Topology, int]]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    stores: dict[Key, PartitionStore] = field(default_factory=dict)
    records: dict[Key, int] = field(default_factory=dict)
    error: BaseException | None = None
    #: Revoked while restoring: their stores are closed, never adopted.
    cancelled: set[Key] = field(default_factory=set)
    finished: bool = False

    def keys(self) -> list[Key]:
        return [(topology.name, number) for topology, number in self.wanted]


class Restorer:
    """A thread that restores assigned partitions one job at a time (a partition's RocksDB is opened by one job
    at a time: a job revoked mid-way closes its stores before the next starts)."""

    def __init__(self, settings: Settings, group: str, backend: Callable[[Topology, int], Backend]) -> None:
        self.settings = settings
        self.group = group
        self._backend = backend
        self._jobs: queue.Queue[RestoreJob | None] = queue.Queue()
        self._done: queue.Queue[RestoreJob] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="restore", daemon=True)
        self._thread.start()

    def submit(self, job: RestoreJob) -> None:
        self._jobs.put(job)

    def cancel(self, job: RestoreJob, key: Key) -> None:
        """``key`` was revoked: its store is closed, now if the job is done, else by the restorer when it is."""
        with self._lock:
            job.cancelled.add(key)
            store = job.stores.pop(key, None) if job.finished else None
        if store is not None:
            store.backend.close()

    def finished(self) -> list[RestoreJob]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        offsets: Consumer | None = None
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                if offsets is None:
                    offsets = offsets_reader(self.settings, self.group)
                try:
                    self._restore(job, offsets)
                except Exception as exc:  # the engine raises it: the process ends and is restarted
                    job.error = exc
                with self._lock:
                    job.finished = True
                    for key in job.cancelled:
                        store = job.stores.pop(key, None)
                        if store is not None:
                            store.backend.close()
                self._done.put(job)
        finally:
            if offsets is not None:
                offsets.close()

    def _restore(self, job: RestoreJob, offsets: Consumer) -> None:
        wanted = [(t, n) for t, n in job.wanted if (t.name, n) not in job.cancelled]
        tps = [TopicPartition(topic, n) for t, n in wanted for topic in t.inputs]
        job.committed = committed_offsets(offsets, tps) if tps else {}
        backends: dict[tuple[str, int], Backend] = {}
        for topology, number in wanted:
            with self._lock:
                if (topology.name, number) in job.cancelled:
                    continue
                store = job.stores[(topology.name, number)] = PartitionStore(self._backend(topology, number))
            backends[(topology.changelog, number)] = store.backend
        counts = restore(self.settings, backends)
        for topology, number in wanted:
            job.records[(topology.name, number)] = counts.get((topology.changelog, number), 0)


def offsets_reader(settings: Settings, group: str) -> Consumer:
    """A consumer of ``group`` that never joins it: it only asks for the group's committed offsets (stable)."""
    return Consumer(consumer_config(settings, group))
