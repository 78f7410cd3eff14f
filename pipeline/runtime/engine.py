"""The stream runtime: a consumer group, per-partition processors and one Kafka transaction per batch.

One loop per process, on one thread (docs/stream-runtime.md has the whole design). Per batch:

1. ``consume(batch_size, batch_seconds)`` returns up to ``batch_size`` records of the assigned
   partitions (read_committed); they are grouped by partition number and handed, in log order,
   to the partition's processor, which changes its state (pending in its store) and adds output
   records to the batch's :class:`Effects`. Every ``tick_seconds`` each processor also gets a
   wall-clock tick in the same batch (idle partitions finalize on wall time, R9).
2. Nothing written: done. Otherwise one transaction: the outputs, every pending state change as a
   record of the topology's compacted changelog (partition ``p`` for partition ``p``), and the
   consumed offsets (``send_offsets_to_transaction``, with the group's metadata: a member that
   lost the partitions in a rebalance cannot commit them, KIP-447).
3. ``commit_transaction``: outputs, state and offsets become visible together, or not at all.
   Only then are the state changes written to the store's backend and the batch's
   after-commit hooks (metrics) run.
4. A transaction that fails with an abortable error is aborted: the processors are dropped,
   their stores keep only committed state, the consumer goes back to the committed offsets and
   the partitions are restored again, so the batch is processed again from scratch. A fatal
   error (another instance took over our transactional id: we are a zombie) stops the process
   with :class:`FencedError`; a crash at any point leaves an open transaction that the broker
   aborts, or that the next instance with the same id aborts at ``init_transactions``.

Assignment: the group assigns the topologies' first input topics (cooperative-sticky, so a
rebalance moves only the partitions that change owner); partition ``p`` of the other input
topics follows partition ``p`` of the first. On assignment the committed offsets are read
(stable: after any pending transaction of the previous owner is resolved), the changelog
partitions are read to their end into the stores, the processors are built from them, and only
then are the input partitions fetched. On revocation the processors are dropped: every batch
before was committed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from pipeline import failpoints, metrics
from pipeline.kafka import admin, consumer_config, producer_config
from pipeline.logs import fields
from pipeline.runtime.processor import Effects, PartitionProcessor, Record, Topology
from pipeline.runtime.restore import restore, watermarks
from pipeline.runtime.state import Backend, MemoryBackend, PartitionStore, RocksBackend
from pipeline.settings import Settings

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS: Final = 5
#: A batch not committed after this long ends the process (its supervisor starts it again): a
#: transaction call that librdkafka does not return from (seen after a broker outage longer than
#: the group session) must not stall the partitions. The open transaction is aborted by the broker.
STALLED_BATCH_SECONDS: Final = 60.0
EXIT_STALLED: Final = 70
LAG_EVERY_SECONDS: Final = 1.0
#: How long an assignment waits for the previous owner's open transaction to be resolved.
STABLE_OFFSETS_SECONDS: Final = 120.0


class FencedError(RuntimeError):
    """Another instance took over this one's transactional id or partitions: this one must stop."""


def _sent(record: Record) -> int:
    return record.timestamp


def _merged(records: list[Record]) -> list[Record]:
    """One partition's records of several input topics in the order they were sent, each topic in log order.

    The inputs are fetched apart, so a batch may hold all of one topic's records before the
    other's; merged by Kafka timestamp (the producer's send time) they come as the producer
    interleaved them, and one topic's event time does not run ahead of the other's.
    """
    by_topic: dict[str, list[Record]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    if len(by_topic) < 2:
        return records
    return list(heapq.merge(*by_topic.values(), key=_sent))


def _abortable(message: str) -> KafkaException:
    """What a failing ``<role>.before_commit`` failpoint raises: an error that aborts the transaction."""
    return KafkaException(KafkaError(KafkaError._STATE, message, txn_requires_abort=True))


@dataclass(frozen=True)
class RuntimeConfig:
    """How one process runs its topologies."""

    group: str
    #: Unique per concurrently running instance; a new instance with the same id fences the old.
    transactional_id: str
    #: Static group membership under the transactional id: a restarted instance gets its partitions back at once.
    static_member: bool
    #: ``memory`` or ``rocksdb``
    store: str
    state_dir: Path
    batch_size: int
    batch_seconds: float
    tick_seconds: float
    #: Names the failpoint ``<role>.before_commit`` and the process in logs.
    role: str
    #: Largest record produced (changelog records of big states): the producer's message.max.bytes.
    max_record_bytes: int = 1 << 20
    transaction_timeout_ms: int = 60_000


class _Partition:
    """A topology's partition in this process: its store, its processor, and where each input is."""

    __slots__ = ("next", "number", "processor", "store", "topology")

    def __init__(
        self,
        topology: Topology,
        number: int,
        store: PartitionStore,
        processor: PartitionProcessor,
        next_: dict[str, int],
    ) -> None:
        self.topology = topology
        self.number = number
        self.store = store
        self.processor = processor
        #: The next offset to process per input topic.
        self.next = next_

    def lagging(self, consumer: Consumer) -> tuple[set[str], list[str]]:
        """Input topics whose log holds records not processed yet, by the consumer's last fetch (unknown: assumed
        to), and the others: caught up as far as that fetch knew."""
        lagging, caught_up = set(), []
        for topic in self.topology.inputs:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, self.number), cached=True)
            if high < 0 or high > self.next.get(topic, 0):
                lagging.add(topic)
            else:
                caught_up.append(topic)
        return lagging, caught_up


class StreamRuntime:
    """Runs ``topologies`` in one consumer group until ``run``'s stop event is set."""

    def __init__(
        self,
        settings: Settings,
        config: RuntimeConfig,
        topologies: Sequence[Topology],
        *,
        on_batch: Callable[[int, float], None] | None = None,
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.topologies = list(topologies)
        self._by_input = {topic: t for t in self.topologies for topic in t.inputs}
        self._by_leader = {t.leader: t for t in self.topologies}
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._on_batch = on_batch
        self._on_abort = on_abort
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.committed_batches = 0
        self._next_tick = 0.0
        self._lag_observed_at = 0.0
        self._admin: AdminClient | None = None

    # -- life cycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        c, s = self.config, self.settings
        self.producer = Producer(
            producer_config(
                s,
                **{
                    "transactional.id": c.transactional_id,
                    "client.id": c.transactional_id,
                    "linger.ms": 5,
                    "transaction.timeout.ms": c.transaction_timeout_ms,
                    "message.max.bytes": c.max_record_bytes,
                },
            )
        )
        self.producer.init_transactions(60)  # fences an older instance with this id and aborts its transaction
        config = consumer_config(s, c.group, **{"client.id": c.transactional_id, "enable.partition.eof": True})
        config.setdefault("session.timeout.ms", 15000)
        config.setdefault("fetch.message.max.bytes", 4 << 20)
        config.setdefault("queued.max.messages.kbytes", 16 << 10)  # prefetched records: bounded memory
        if c.static_member:
            config["group.instance.id"] = c.transactional_id
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            sorted(self._by_leader), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            f"{c.role} started",
            extra=fields(group=c.group, transactional_id=c.transactional_id, store=c.store),
        )
        try:
            while not stop.is_set():
                self._step()
        finally:
            self._close()

    def _close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.close()  # revokes (cooperative): processors and stores are closed
        for key in list(self._parts):
            self._drop(key)
        if self.producer is not None:
            self.producer.flush(10)

    # -- one batch -------------------------------------------------------------------------

    def _step(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        messages = consumer.consume(self.config.batch_size, timeout=self.config.batch_seconds)
        now_ms = int(time.time() * 1000)
        groups: dict[tuple[str, int], list[Record]] = {}
        ends: list[tuple[str, int, int]] = []
        by_input = self._by_input
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.append((m.topic() or "", m.partition() or 0, m.offset() or 0))
                    continue
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise FencedError(
                        f"the {self.config.role}'s consumer failed fatally ({error}): another instance "
                        f"({self.config.transactional_id}) took over its group membership; this one stops"
                    )
                raise KafkaException(error)
            topic = m.topic()
            partition = m.partition()
            assert topic is not None
            assert partition is not None
            key = (by_input[topic].name, partition)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            record = Record(topic, partition, m.offset(), m.value() or b"", key=m.key(), timestamp=m.timestamp()[1])  # type: ignore[arg-type]
            group.append(record)
        monotonic = time.monotonic()
        tick = monotonic >= self._next_tick
        if tick:
            self._next_tick = monotonic + self.config.tick_seconds
        self._observe_lag(monotonic)
        if not groups and not tick:
            self._at_end(ends)
            return
        started = time.perf_counter()
        watchdog = threading.Timer(STALLED_BATCH_SECONDS, self._stalled)
        watchdog.daemon = True
        watchdog.start()
        try:
            wrote = self._transact(groups, now_ms, tick)
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError):
                raise
            if error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
                raise FencedError(
                    f"the {self.config.role}'s transaction failed fatally ({error}): another instance with "
                    f"transactional id {self.config.transactional_id} took over; this one stops"
                ) from exc
            log.warning(
                "transaction aborted: processing again from the last commit",
                extra=fields(role=self.config.role, error=str(error)),
            )
            self._abort_and_rewind()
            return
        finally:
            watchdog.cancel()
        self._at_end(ends)  # after the batch: the records before an end are in it
        if wrote:
            self.committed_batches += 1
        if self._on_batch is not None and groups:
            self._on_batch(sum(len(g) for g in groups.values()), time.perf_counter() - started)

    def _stalled(self) -> None:
        log.error(
            "a batch has not committed in time: the process exits without it and starts again from the last commit",
            extra=fields(role=self.config.role, seconds=STALLED_BATCH_SECONDS),
        )
        logging.shutdown()
        os._exit(EXIT_STALLED)

    def _transact(self, groups: dict[tuple[str, int], list[Record]], now_ms: int, tick: bool) -> bool:
        """Process and commit one batch; False if it wrote nothing (no input, no output, no state change)."""
        producer, consumer = self.producer, self.consumer
        assert producer is not None
        assert consumer is not None
        effects = Effects()
        offsets: dict[tuple[str, int], int] = {}
        keys = [key for key in groups if key in self._parts]  # others are not ours any more
        lagging = self._lagging(keys, everywhere=False)
        for key in keys:
            records = groups[key]
            if len(self._parts[key].topology.inputs) > 1:
                records = _merged(records)
            self._parts[key].processor.process(records, now_ms, lagging[key], effects)
            for r in records:
                offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
        if tick:
            lagging = self._lagging(list(self._parts), everywhere=True)
            for key, part in self._parts.items():
                part.processor.tick(now_ms, lagging[key], effects)
        changes = {key: part.store.take_pending() for key, part in self._parts.items() if part.store.pending}
        if not offsets and not changes and not effects.outputs:
            for hook in effects.on_commit:
                hook()
            return False
        producer.begin_transaction()
        for topic, k, payload in effects.outputs:
            self._produce(topic, k, payload)
        ends: dict[tuple[str, int], int] = {}

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                tp = (msg.topic(), msg.partition())
                ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

        for key, pending in changes.items():
            part = self._parts[key]
            changelog = part.topology.changelog
            for name, value in pending.items():
                self._produce(changelog, name, value, partition=part.number, on_delivery=delivered)
        # Delivered before the offsets: an abort then has nothing in flight to purge (purged sends leave
        # sequence gaps that fail the next transaction until the producer's epoch is bumped).
        producer.flush(60)
        if offsets:
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()], consumer.consumer_group_metadata(), 30
            )
        failpoints.hit(f"{self.config.role}.before_commit", _abortable)
        self._commit()
        producer.poll(0)
        for key, pending in changes.items():
            part = self._parts[key]
            part.store.backend.write(pending, ends.get((part.topology.changelog, part.number), 0))
        for (topic, partition), offset in offsets.items():
            self._parts[(self._by_input[topic].name, partition)].next[topic] = offset
        for hook in effects.on_commit:
            hook()
        return True

    def _lagging(self, keys: list[tuple[str, int]], *, everywhere: bool) -> dict[tuple[str, int], frozenset[str]]:
        """Per partition, the input topics with records not processed before this batch.

        The consumer's cached log ends are those of its last fetch of each partition, which may
        be older than records it already returned from another topic: a partition of several
        inputs that knows nothing newer of one of them would let the other's event time run
        ahead of records already in the log. So an input the cache calls caught up is asked
        for its end from the broker (one request for all of them) wherever that matters: a
        partition of several inputs, or, ``everywhere``, for the ticks that decide idleness.
        """
        consumer = self.consumer
        assert consumer is not None
        out: dict[tuple[str, int], set[str]] = {}
        unsure: list[tuple[tuple[str, int], str]] = []
        for key in keys:
            part = self._parts[key]
            lagging, caught_up = part.lagging(consumer)
            out[key] = lagging
            if everywhere or len(part.topology.inputs) > 1:
                unsure.extend((key, topic) for topic in caught_up)
        if unsure:
            ends = self._log_ends([(topic, key[1]) for key, topic in unsure])
            for key, topic in unsure:
                end = ends.get((topic, key[1]))
                if end is None or end > self._parts[key].next.get(topic, 0):
                    out[key].add(topic)
        return {key: frozenset(topics) for key, topics in out.items()}

    def _log_ends(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The last stable offsets of ``tps`` as the broker has them now (one request); none on error (then
        every input counts as lagging: a partition does not go idle while the broker cannot say)."""
        if self._admin is None:
            self._admin = admin(self.settings)
        try:
            futures = self._admin.list_offsets(
                {TopicPartition(t, p): OffsetSpec.latest() for t, p in tps},  # type: ignore[no-untyped-call]
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=10,
            )
            return {(tp.topic, tp.partition): f.result(timeout=15).offset for tp, f in futures.items()}
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            log.warning("log ends not known: inputs counted as lagging", extra=fields(error=str(exc)))
            return {}

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        producer = self.producer
        assert producer is not None
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                else:
                    producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    def _commit(self) -> None:
        assert self.producer is not None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                self.producer.commit_transaction(60)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or attempt == COMMIT_ATTEMPTS:
                    raise
                log.warning("commit failed, retrying", extra=fields(error=str(error), attempt=attempt))

    def _abort_and_rewind(self) -> None:
        """Drop the batch: abort its transaction, rebuild the processors from committed state, rewind the inputs."""
        producer, consumer = self.producer, self.consumer
        assert producer is not None
        assert consumer is not None
        if self._on_abort is not None:
            self._on_abort()
        try:
            producer.abort_transaction(60)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise FencedError(f"cannot abort the {self.config.role}'s transaction: {exc.args[0]}") from exc
        keys = sorted(self._parts)
        for key in keys:
            part = self._parts[key]
            part.store.discard()
            part.processor.close()
        assignment = consumer.assignment()
        committed = {(tp.topic, tp.partition): tp.offset for tp in self._committed(assignment)}
        for (topic, partition), offset in committed.items():
            consumer.seek(TopicPartition(topic, partition, offset if offset >= 0 else OFFSET_BEGINNING))
        self._open([(self._parts[k].topology, k[1]) for k in keys], committed, reuse=True)

    # -- assignment ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        wanted = [(self._by_leader[tp.topic], tp.partition) for tp in partitions]
        if not wanted:
            consumer.incremental_assign([])
            return
        tps = [TopicPartition(topic, p) for t, p in wanted for topic in t.inputs]
        committed = {(tp.topic, tp.partition): tp.offset for tp in self._committed(tps)}
        self._open(wanted, committed, reuse=False)
        consumer.incremental_assign([TopicPartition(t, p, committed[(t, p)]) for t, p in committed])

    def _committed(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of ``tps`` (the log start where none), once they are stable."""
        consumer = self.consumer
        assert consumer is not None
        deadline = time.monotonic() + STABLE_OFFSETS_SECONDS
        while True:
            try:
                found = consumer.committed(tps, timeout=30)
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for stable committed offsets", extra=fields(error=str(exc.args[0])))
                time.sleep(0.5)
        out = []
        for tp in found:
            offset = tp.offset
            if offset < 0:
                offset, _ = watermarks(consumer, tp.topic, tp.partition)
            out.append(TopicPartition(tp.topic, tp.partition, offset))
        return out

    def _open(
        self, wanted: list[tuple[Topology, int]], committed: dict[tuple[str, int], int], *, reuse: bool
    ) -> None:
        """Restore the stores of ``wanted`` from their changelogs and build their processors."""
        now_ms = int(time.time() * 1000)
        stores: dict[tuple[str, int], PartitionStore] = {}
        for topology, number in wanted:
            old = self._parts.get((topology.name, number))
            if reuse and old is not None:
                store = old.store
                if isinstance(store.backend, MemoryBackend) and not topology.retain:
                    store.backend.wipe()
            else:
                store = PartitionStore(self._backend(topology, number))
            stores[(topology.changelog, number)] = store
        counts = restore(self.settings, {k: s.backend for k, s in stores.items()})
        for topology, number in wanted:
            store = stores[(topology.changelog, number)]
            processor = topology.open(number, store, now_ms)
            store.backend.loaded()
            next_ = {topic: committed.get((topic, number), 0) for topic in topology.inputs}
            self._parts[(topology.name, number)] = _Partition(topology, number, store, processor, next_)
            log.info(
                "partition restored",
                extra=fields(
                    role=self.config.role,
                    topology=topology.name,
                    partition=number,
                    changelog_records=counts[(topology.changelog, number)],
                ),
            )

    def _backend(self, topology: Topology, number: int) -> Backend:
        if self.config.store == "rocksdb":
            return RocksBackend(self.config.state_dir / topology.name / str(number))
        return MemoryBackend(retain=topology.retain)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, "lost")

    def _release(self, consumer: Consumer, partitions: list[TopicPartition], why: str) -> None:
        tps: list[TopicPartition] = []
        for tp in partitions:
            topology = self._by_leader.get(tp.topic)
            if topology is None:
                continue
            self._drop((topology.name, tp.partition))
            tps.extend(TopicPartition(topic, tp.partition) for topic in topology.inputs)
        if tps:
            log.info(
                f"partitions {why}",
                extra=fields(role=self.config.role, partitions=sorted({tp.partition for tp in partitions})),
            )
        with contextlib.suppress(KafkaException):
            consumer.incremental_unassign(tps)

    def _drop(self, key: tuple[str, int]) -> None:
        part = self._parts.pop(key, None)
        if part is None:
            return
        part.processor.close()
        part.store.backend.close()
        for topic in part.topology.inputs:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.config.group, topic, str(part.number))

    def _at_end(self, ends: list[tuple[str, int, int]]) -> None:
        """The consumer reached the end of these input partitions: nothing waits there (transaction markers
        included). Applied once the batch that came with them is processed."""
        for topic, partition, offset in ends:
            topology = self._by_input.get(topic)
            part = None if topology is None else self._parts.get((topology.name, partition))
            if part is not None and offset > part.next.get(topic, 0):
                part.next[topic] = offset

    # -- metrics ---------------------------------------------------------------------------

    def _observe_lag(self, monotonic: float) -> None:
        """Consumer lag of the partitions in hand, once a second (the lag alert covers every processor)."""
        if monotonic - self._lag_observed_at < LAG_EVERY_SECONDS or self.consumer is None:
            return
        self._lag_observed_at = monotonic
        for part in self._parts.values():
            for topic in part.topology.inputs:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, part.number), cached=True)
                if high >= 0:
                    metrics.CONSUMER_LAG.labels(self.config.group, topic, str(part.number)).set(
                        max(0, high - part.next.get(topic, 0))
                    )
