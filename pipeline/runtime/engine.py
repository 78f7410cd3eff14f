"""The stream runtime: a consumer group, per-partition processors and Kafka transactions of whole batches.

One loop per process (docs/stream-runtime.md has the whole design). Per batch:

1. ``consume(batch_size, batch_seconds)`` returns up to ``batch_size`` records of the partitions
   in hand (read_committed); they are grouped by partition number and handed, in log order, to
   the partition's processor, which changes its state (pending in its store) and adds output
   records to its :class:`Effects`. Every ``tick_seconds`` each processor also gets a wall-clock
   tick in the same batch (idle partitions finalize on wall time, R9).
2. What the batch writes is kept per partition (a :class:`_Work`): outputs, the state changes as
   records of the topology's compacted changelog (partition ``p`` for partition ``p``), the
   consumed offsets. Its records are sent at once in the open transaction (one is begun if none
   is), so librdkafka delivers them while the next batch is consumed and processed.
3. The transaction commits, with the offsets of all its batches and the group's metadata (a
   member that lost its partitions in a rebalance cannot commit them, KIP-447), when a batch was
   not full (the consumer caught up: no waiting for more), or it is ``transaction_seconds`` old
   or holds ``transaction_records`` records (a backlog is read in few, large transactions: the
   commit's round trips are paid once per transaction, not per batch).
4. Committed: the state changes are written to the stores' backends, the after-commit hooks run.
   Not committed: the transaction is aborted (or, if the producer was fenced or failed fatally,
   a new producer takes the transactional id over) and the *same* records are written again in a
   new transaction, without the partitions that left this process meanwhile. The processors
   already hold the batches' state, so nothing is processed again and nothing is rebuilt: a broker
   outage is waited out with the batches in hand.
5. A zombie (a stale instance whose transactional id and group membership another instance took
   over) stops with :class:`FencedError`.

Assignment: the group assigns the topologies' first input topics (cooperative-sticky, so a
rebalance moves only the partitions that change owner, the others keep running); partition ``p``
of the other input topics follows partition ``p`` of the first. A newly assigned partition is
paused and restored by a thread of its own (``pipeline.runtime.restore``: stable committed
offsets, then the changelog to its end); once restored, its processor is built and its inputs
resume from the committed offsets. A revoked partition's processor is dropped; if the open
transaction holds records of it, that transaction is aborted at once and the other partitions'
batches are written again without it (its new owner does its uncommitted batches again).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from pipeline.infra import metrics
from pipeline.infra.kafka import admin, consumer_config
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.runtime.processor import Effects, PartitionProcessor, Record, Topology
from pipeline.runtime.restore import RestoreJob, Restorer
from pipeline.runtime.state import Backend, MemoryBackend, PartitionStore, RocksBackend
from pipeline.runtime.transactions import StuckCall, Transactor, Write, is_fatal

log = logging.getLogger(__name__)

#: A batch not committed after this long ends the process (its supervisor starts it again): a
#: transactional call librdkafka does not return from must not hold the partitions for ever. A
#: broker outage is waited out within it (the consumer leaves the group after as long anyway).
STALLED_BATCH_SECONDS: Final = 300.0
EXIT_STALLED: Final = 70
LAG_EVERY_SECONDS: Final = 1.0
#: While a backlog is read, a consume that returns nothing for this long means it has been read.
DRY_SECONDS: Final = 0.05
#: How long at most, in a row, a partition's records wait for one of its inputs that is behind (``_in_send_order``).
HOLD_SECONDS: Final = 10.0
#: Records (or bytes of them) a partition holds back at most before the inputs ahead are paused (fetched on
#: from where they stand once released): memory stays bounded whatever the backlog.
HOLD_RECORDS: Final = 100_000
HOLD_BYTES: Final = 4 << 20
#: Held records released in one batch at most (besides ``batch_size`` records): the consumer's queue size.
BATCH_BYTES: Final = 16 << 20
#: A log end the broker gave is trusted for records sent this long before it was asked (producers'
#: clocks may be behind ours).
LOG_END_MARGIN_MS: Final = 2000
#: How often at most the broker is asked the log end of an input the consumer has no end of (an empty partition).
LOG_END_ASK_MS: Final = 200
#: Errors of ``send_offsets_to_transaction`` that the consumer resolves by serving the group
#: (rejoining, revoking): after the abort the consumer is polled before the batch is written again.
GROUP_ERRORS: Final = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)
NOTHING: Final[frozenset[str]] = frozenset()

Key = tuple[str, int]


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


def _split(part: _Partition, held: list[Record], new: list[Record] | None, cut: int | None) -> list[Record]:
    """The records sent up to ``cut`` (each topic's up to its first one after it); the others held in ``part``.

    What was held at a cut no later than this one stays held as it is: only the new records are looked at
    (a hold waiting for an input is not scanned again at every batch).
    """
    if cut is None:
        part.held_bytes, part.held_topics, part.cut = 0, set(), None
        return held + new if held and new else held or new or []
    kept: list[Record] = []
    if held and part.cut is not None and cut <= part.cut:
        records = new or []
        part.held = held
    else:
        records = (held + new if new else held) if held else new or []
        part.held, part.held_bytes, part.held_topics = [], 0, set()
    part.cut = cut
    out, topics = part.held, part.held_topics
    size = 0
    for r in records:  # each topic's records in log order
        if r.topic in topics or r.timestamp > cut:
            topics.add(r.topic)
            out.append(r)
            size += len(r.value)
        else:
            kept.append(r)
    part.held_bytes += size
    return kept


def _offsets(part: _Partition, kept: list[Record], offsets: dict[tuple[str, int], int]) -> None:
    """The offsets the batch commits for ``part``: after its last record kept per input, none without one."""
    last: dict[str, int] = {}
    for r in reversed(kept):
        if r.topic not in last:
            last[r.topic] = r.offset + 1
    for topic in part.topology.inputs:
        tp = (topic, part.number)
        if topic in last:
            offsets[tp] = last[topic]
        else:
            offsets.pop(tp, None)


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
    linger_ms: int = 5
    #: With a backlog (full batches), batches join the open transaction until it is this old ...
    transaction_seconds: float = 1.0
    #: ... or holds this many records or bytes (kept in memory until it commits, to be written again
    #: after an abort); a batch that is not full (caught up) commits at once.
    transaction_records: int = 100_000
    transaction_bytes: int = 8 << 20


class _Partition:
    """A topology's partition in this process: its store, its processor, and where each input is."""

    __slots__ = (
        "cut",
        "ends",
        "given_up",
        "held",
        "held_bytes",
        "held_since",
        "held_topics",
        "key",
        "next",
        "number",
        "ordered",
        "paused",
        "processor",
        "queue",
        "queue_at",
        "queue_first",
        "queue_topics",
        "sent",
        "store",
        "topology",
    )

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
        self.key: Key = (topology.name, number)
        self.store = store
        self.processor = processor
        #: The next offset to process per input topic.
        self.next = next_
        #: Several inputs whose records must meet the processor in the order they were sent (``_in_send_order``).
        self.ordered = len(topology.inputs) > 1 and topology.watch_lag
        #: Records fetched but held back (sent after what an input behind has delivered), each topic in log order.
        self.held: list[Record] = []
        self.held_bytes = 0
        #: The inputs of the held records, and the cut they were held at.
        self.held_topics: set[str] = set()
        self.cut: int | None = None
        #: Released records in the order they were sent, applied a batch at a time from ``queue_at`` on.
        self.queue: list[Record] = []
        self.queue_at = 0
        #: How many records at the queue's head go whole with its first batch (inputs with few records).
        self.queue_first = 0
        self.queue_topics: frozenset[str] = NOTHING
        #: Since when records are held back, or None.
        self.held_since: float | None = None
        #: The Kafka timestamp of the last record delivered per input topic.
        self.sent: dict[str, int] = {}
        #: Where the consumer last reached the end of each input topic (partition EOF).
        self.ends: dict[str, int] = {}
        #: Inputs waited for ``HOLD_SECONDS`` in vain: not waited for again until they deliver a record.
        self.given_up: set[str] = set()
        #: Inputs paused because too many of their records are held back.
        self.paused: list[TopicPartition] = []


class _Work:
    """One partition's share of a batch: what its transaction writes, and what runs once it committed."""

    __slots__ = ("changes", "effects", "offsets", "part")

    def __init__(self, part: _Partition) -> None:
        self.part = part
        self.effects = Effects()
        self.offsets: dict[tuple[str, int], int] = {}
        self.changes: dict[bytes, bytes | None] = {}

    def writes(self) -> bool:
        return bool(self.offsets or self.changes or self.effects.outputs)


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
        self._parts: dict[Key, _Partition] = {}
        self._restoring: dict[Key, RestoreJob] = {}
        #: Records consumed while the batch in hand was being committed again: the next batch's.
        self._stash: list[Message] = []
        #: Log ends the broker gave: (topic, partition) -> (last stable offset, wall ms it was asked at).
        self._log_end: dict[tuple[str, int], tuple[int, int]] = {}
        self._on_batch = on_batch
        self._on_abort = on_abort
        self.consumer: Consumer | None = None
        self.transactor = Transactor(
            settings,
            transactional_id=config.transactional_id,
            role=config.role,
            transaction_timeout_ms=config.transaction_timeout_ms,
            max_record_bytes=config.max_record_bytes,
            linger_ms=config.linger_ms,
        )
        self._restorer: Restorer | None = None
        self.committed_batches = 0
        self.aborts = 0
        self._next_tick = 0.0
        self._lag_observed_at = 0.0
        self._admin: AdminClient | None = None
        self._batch_started: float | None = None
        #: The works of the open transaction (batches processed, their records sent, not committed yet).
        self._works: list[_Work] = []
        self._records_in_hand = 0
        self._bytes_in_hand = 0
        #: A Kafka transaction is open (records of ``_works`` sent in it).
        self._in_transaction = False
        #: Sending records into the open transaction failed: it is aborted and written again at commit.
        self._send_failed: KafkaException | StuckCall | None = None
        self._consumer_errors_logged_at = 0.0
        self._heartbeat_ms = 3000
        self._stop = threading.Event()
        #: Records of a released hold wait for the next batch (``_in_send_order``): it consumes nothing new.
        self._deferred = False

    # -- life cycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        c, s = self.config, self.settings
        self.transactor.open()  # fences an older instance with this id and aborts its transaction
        self._restorer = Restorer(s, c.group, self._backend)
        config = consumer_config(s, c.group, **{"client.id": c.transactional_id, "enable.partition.eof": True})
        config.setdefault("session.timeout.ms", 15000)
        config.setdefault("fetch.message.max.bytes", 4 << 20)
        config.setdefault("queued.max.messages.kbytes", BATCH_BYTES >> 10)  # prefetched records: bounded memory
        # Once that is full, librdkafka's next fetch waits fetch.queue.backoff.ms (1 s by default): with a
        # backlog the worker then drained the queue and waited for the fetch half of its time.
        config.setdefault("fetch.queue.backoff.ms", 10)
        if c.static_member:
            config["group.instance.id"] = c.transactional_id
        self._heartbeat_ms = int(config.get("heartbeat.interval.ms", 3000))
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            sorted(self._by_leader), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            f"{c.role} started",
            extra=fields(group=c.group, transactional_id=c.transactional_id, store=c.store),
        )
        self._stop = stop
        done = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(done,), name="watchdog", daemon=True)
        watchdog.start()
        clean = False
        try:
            while not stop.is_set():
                self._step()
            if self._works:
                self._finish(time.perf_counter(), 0)
            clean = True
        finally:
            done.set()
            self._close(clean)

    def _close(self, clean: bool) -> None:
        """Leave the group and close the stores; the producer is flushed after a clean stop (everything is
        committed), purged otherwise (a fenced or failed process has nothing it may deliver)."""
        if self.consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.consumer.close()  # revokes (cooperative): processors and stores are closed
        if self._restorer is not None:
            self._restorer.close()
        for key in list(self._parts):
            self._drop(key)
        self.transactor.close(flush=clean)

    def _watch(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            started = self._batch_started
            if started is not None and time.monotonic() - started > STALLED_BATCH_SECONDS:
                log.error(
                    "a batch has not committed in time: the process exits without it and starts again from the "
                    "last commit",
                    extra=fields(role=self.config.role, seconds=STALLED_BATCH_SECONDS),
                )
                logging.shutdown()
                os._exit(EXIT_STALLED)

    # -- one batch -------------------------------------------------------------------------

    def _step(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        self._adopt()
        if self._stash:
            messages, self._stash = self._stash, []
            full = False
        elif self._deferred:
            messages, full = [], True  # records of a released hold first, then more of the log
        else:
            messages = self._consume()
            full = len(messages) >= self.config.batch_size
        now_ms = int(time.time() * 1000)
        groups, offsets, ends = self._group(messages)
        monotonic = time.monotonic()
        ends = self._in_send_order(groups, offsets, ends, monotonic)
        tick = monotonic >= self._next_tick
        if tick:
            self._next_tick = monotonic + self.config.tick_seconds
        self._observe_lag(monotonic)
        started = time.perf_counter()
        if groups or tick:
            if self._batch_started is None:
                self._batch_started = monotonic
            works = self._process(groups, offsets, now_ms, tick)
            self._at_end(ends)  # after the batch: the records before an end are in it
            self._send(works)
        else:
            self._at_end(ends)
        if self._works and (not full or self._due(monotonic)):
            self._finish(started, sum(len(g) for g in groups.values()))
        elif self._on_batch is not None and groups:
            self._on_batch(sum(len(g) for g in groups.values()), time.perf_counter() - started)

    def _consume(self) -> list[Message]:
        """Up to ``batch_size`` records, waiting for them at most ``batch_seconds``.

        While a backlog is read into the open transaction, the batch goes as soon as the prefetched
        records run dry (nothing for ``DRY_SECONDS``): the end of a backlog commits at once rather
        than after waiting ``batch_seconds`` for records that are not there.
        """
        consumer = self.consumer
        assert consumer is not None
        size, seconds = self.config.batch_size, self.config.batch_seconds
        if not self._works:
            return consumer.consume(size, timeout=seconds)
        deadline = time.monotonic() + seconds
        messages = consumer.consume(size, timeout=min(DRY_SECONDS, seconds))
        while len(messages) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = consumer.consume(size - len(messages), timeout=min(DRY_SECONDS, remaining))
            if not more:
                break
            messages.extend(more)
        return messages

    def _due(self, monotonic: float) -> bool:
        """The open transaction ends now: old or large enough, stopping, failed, or a partition of it left."""
        c = self.config
        started = self._batch_started
        return (
            (started is not None and monotonic - started >= c.transaction_seconds)
            or self._records_in_hand >= c.transaction_records
            or self._bytes_in_hand >= c.transaction_bytes
            or self._stop.is_set()
            or self._send_failed is not None
            or any(self._parts.get(w.part.key) is not w.part for w in self._works)
        )

    def _finish(self, started: float, events: int) -> None:
        """Commit the open transaction, then run the after-commit hooks of what it held."""
        try:
            committed = self._commit()
        finally:
            self._batch_started = None
        for work in committed:
            for hook in work.effects.on_commit:
                hook()
        if self._on_batch is not None and events:
            self._on_batch(events, time.perf_counter() - started)

    def _group(
        self, messages: list[Message]
    ) -> tuple[dict[Key, list[Record]], dict[tuple[str, int], int], list[tuple[str, int, int]]]:
        """Records by partition key (only partitions in hand), the next offset per input partition, partition ends.

        A batch comes in runs of one topic partition: what a record needs to know of its partition
        is looked up once per run.
        """
        groups: dict[Key, list[Record]] = {}
        offsets: dict[tuple[str, int], int] = {}
        ends: list[tuple[str, int, int]] = []
        by_input = self._by_input
        parts = self._parts
        run_topic = ""
        run_partition = -1
        key: Key = ("", -1)
        group: list[Record] | None = None
        ours = False
        floor = 0
        last = -1
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.append((m.topic() or "", m.partition() or 0, m.offset() or 0))
                else:
                    self._consumer_error(error)
                continue
            topic: str = m.topic()  # type: ignore[assignment]
            partition: int = m.partition()  # type: ignore[assignment]
            offset: int = m.offset()  # type: ignore[assignment]
            if partition != run_partition or topic != run_topic:
                if last >= 0:
                    offsets[(run_topic, run_partition)] = last + 1
                run_topic, run_partition, last = topic, partition, -1
                key = (by_input[topic].name, partition)
                part = parts.get(key)
                ours = part is not None
                floor = part.next[topic] if part is not None else 0
                group = groups.get(key)
            if not ours or offset < floor:
                continue  # not ours any more (or still restoring: fetched again once resumed), or fetched twice
            if group is None:
                group = groups[key] = []
            group.append(Record(topic, partition, offset, m.value() or b"", key=m.key(), timestamp=m.timestamp()[1]))
            last = offset
        if last >= 0:
            offsets[(run_topic, run_partition)] = last + 1
        return groups, offsets, ends

    def _in_send_order(
        self,
        groups: dict[Key, list[Record]],
        offsets: dict[tuple[str, int], int],
        ends: list[tuple[str, int, int]],
        monotonic: float,
    ) -> list[tuple[str, int, int]]:
        """Hold back, in memory, a partition's records sent after the last record delivered of an input that
        is behind (has records in the log not delivered yet, or has not been fetched at all).

        The inputs are fetched apart: right after an assignment or with a backlog, one can come far
        ahead of the other. Applied at once, its late events would meet a clock that has not seen
        the other input's records sent before them, and what is late would depend on fetch timing.
        Held back, the records meet the processor in the order they were sent (``_merged``), as
        ``metering compute`` meets them. Held records are not in the batch's offsets: a crash
        fetches them again. For ``HOLD_SECONDS`` in a row at most (an input whose log end the
        consumer has wrong must not stop the other); beyond ``HOLD_RECORDS`` the inputs ahead are
        paused. Returns the partition ends that may be applied (none of an input with held records).
        """
        budget = [self.config.batch_size, BATCH_BYTES]  # what released holds may still add to this batch
        self._deferred = False
        for topic, partition, offset in ends:
            topology = self._by_input.get(topic)
            part = None if topology is None else self._parts.get((topology.name, partition))
            if part is not None and part.ordered:
                part.ends[topic] = offset
        self._ask_unfetched_ends(groups)
        holding: set[tuple[str, int]] = set()
        reached_ends: list[tuple[str, int, int]] = []
        for key, part in self._parts.items():
            if not part.ordered:
                continue
            new = groups.get(key)
            if new is None and not part.held and not part.queue:
                continue
            released = bool(part.held or part.queue)
            kept = self._next_records(part, new, budget, monotonic)
            _offsets(part, kept, offsets)
            if kept:
                groups[key] = kept
            else:
                groups.pop(key, None)
            waiting = part.held_topics.union(part.queue_topics) if part.queue else part.held_topics
            holding.update((t, part.number) for t in waiting)
            if released:
                # an end reached while records of its input were held applies once none is
                reached_ends.extend((t, part.number, o) for t, o in part.ends.items() if t not in waiting)
        if holding:
            ends = [e for e in ends if (e[0], e[1]) not in holding]
        return ends + reached_ends if reached_ends else ends

    def _cut(self, part: _Partition, records: list[Record], monotonic: float) -> int | None:
        """The Kafka timestamp records of ``part`` may reach in this batch (None: any): the last sent of each
        input behind that has delivered; none of an input waited for ``HOLD_SECONDS`` in vain."""
        consumer = self.consumer
        assert consumer is not None
        number = part.number
        after: dict[str, int] = {}
        for r in reversed(records):
            if r.topic not in after:
                after[r.topic] = r.offset + 1
                part.sent[r.topic] = r.timestamp
                if len(after) == len(part.topology.inputs):
                    break
        cut: int | None = None
        behind: list[str] = []
        for topic in part.topology.inputs:
            delivered = after.get(topic, part.next[topic])
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, number), cached=True)
            end = part.ends.get(topic, -1)
            if (0 <= high <= delivered) or end >= max(high, delivered):
                part.given_up.discard(topic)
                continue  # every record of it is in hand
            if topic in part.given_up:
                if topic not in after:
                    continue  # waited for in vain: not again before it delivers
                part.given_up.discard(topic)
            behind.append(topic)
            reached = part.sent.get(topic, -1)
            asked = self._log_end.get((topic, number)) if high < 0 and end < 0 else None
            if asked is not None and asked[0] <= delivered:
                reached = max(reached, asked[1])  # all of it was in hand when the broker was asked
            cut = reached if cut is None else min(cut, reached)
        if cut is not None and part.held_since is not None and monotonic - part.held_since > HOLD_SECONDS:
            log.warning(
                "an input of a partition stayed behind: its other inputs' records go on without waiting for it",
                extra=fields(role=self.config.role, topology=part.topology.name, partition=number, inputs=behind),
            )
            part.given_up.update(behind)
            return None
        return cut

    def _pause_or_resume(self, part: _Partition, monotonic: float) -> None:
        consumer = self.consumer
        assert consumer is not None
        if part.held:
            if part.held_since is None:
                part.held_since = monotonic
            self._pause_ahead(part)
            return
        part.held_since = None
        if part.paused:
            with contextlib.suppress(KafkaException):
                consumer.resume(part.paused)
            part.paused = []

    def _next_records(
        self, part: _Partition, new: list[Record] | None, budget: list[int], monotonic: float
    ) -> list[Record]:
        """What ``part``'s processor gets in this batch: released records first, then what no input behind
        waits for; the others stay held."""
        if part.queue:  # records released before go first; what is new waits behind them
            if new:
                part.held.extend(new)
                part.held_topics.update(r.topic for r in new)
                part.cut = None  # not held at any cut: looked at whole once the queue is done
            return self._from_queue(part, budget)
        held, part.held = part.held, []
        records = (held + new if new else held) if held else new
        assert records is not None
        kept = _split(part, held, new, self._cut(part, records, monotonic))
        self._pause_or_resume(part, monotonic)
        if held and kept:
            self._queue(part, kept)
            return self._from_queue(part, budget)
        return kept

    def _queue(self, part: _Partition, released: list[Record]) -> None:
        """Released all at once, a long hold would be one huge batch: it goes a batch at a time, the earliest
        sent first, while no more is consumed (``_step``). An input with few records in it goes with the first
        batch: one left for later would count as lagging and hold the clock back for every batch of the other."""
        counts: dict[str, int] = {}
        for r in released:
            counts[r.topic] = counts.get(r.topic, 0) + 1
        few = {t for t, n in counts.items() if n <= self.config.batch_size // 10}
        if few and len(few) < len(counts):
            whole = [r for r in released if r.topic in few]
            part.queue = whole + _merged([r for r in released if r.topic not in few])
            part.queue_first = len(whole)
        else:
            part.queue = _merged(released)
            part.queue_first = 0
        part.queue_at = 0
        part.queue_topics = frozenset(counts)

    def _from_queue(self, part: _Partition, budget: list[int]) -> list[Record]:
        """The next batch of released records: ``budget`` records and bytes (at least one record per batch)."""
        queue, start = part.queue, part.queue_at
        records_left, bytes_left = budget
        first = part.queue_first if start == 0 else 0
        end = min(len(queue), start + first + records_left)
        size = 0
        stop = end
        for i in range(start, end):
            size += len(queue[i].value)
            if size > bytes_left and i >= start + first:
                stop = i
                break
        if stop == start and records_left == self.config.batch_size:
            stop = start + 1  # one record at least per batch
        chunk = queue[start:stop]
        budget[0] = max(0, records_left - len(chunk))
        budget[1] = max(0, bytes_left - size)
        if stop >= len(queue):
            part.queue, part.queue_at, part.queue_topics = [], 0, NOTHING
        else:
            part.queue_at = stop
            self._deferred = True
        return chunk

    def _ask_unfetched_ends(self, groups: dict[Key, list[Record]]) -> None:
        """Ask the broker the log ends of inputs the consumer knows nothing of (an empty partition reports neither
        a log end nor its end to the consumer), for partitions with records to apply; at most every
        ``LOG_END_ASK_MS``."""
        consumer = self.consumer
        assert consumer is not None
        now_ms = int(time.time() * 1000)
        ask: list[tuple[str, int]] = []
        for key, part in self._parts.items():
            if not part.ordered or (not part.held and key not in groups):
                continue
            for topic in part.topology.inputs:
                tp = (topic, part.number)
                if topic in part.ends or consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1] >= 0:
                    continue
                known = self._log_end.get(tp)
                if known is None or now_ms - known[1] >= LOG_END_ASK_MS:
                    ask.append(tp)
        for topic, number in ask:
            asked = int(time.time() * 1000)
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=5, cached=False)
            except KafkaException as exc:
                log.warning("log end not known: the input counts as behind", extra=fields(error=str(exc)))
                continue
            self._log_end[(topic, number)] = (high, asked)

    def _pause_ahead(self, part: _Partition) -> None:
        """Past ``HOLD_RECORDS`` or ``HOLD_BYTES`` held, stop fetching the inputs they come from (their position
        stays after the last record delivered: resumed, they go on from there)."""
        consumer = self.consumer
        assert consumer is not None
        if part.paused or (len(part.held) < HOLD_RECORDS and part.held_bytes < HOLD_BYTES):
            return
        part.paused = [TopicPartition(t, part.number) for t in {r.topic for r in part.held}]
        with contextlib.suppress(KafkaException):
            consumer.pause(part.paused)

    def _consumer_error(self, error: KafkaError) -> None:
        """A fatal consumer error stops the process; the others (a broker away) are the client's to recover from."""
        if error.fatal() or error.code() == KafkaError._FATAL:
            raise FencedError(
                f"the {self.config.role}'s consumer failed fatally ({error}): another instance "
                f"({self.config.transactional_id}) took over its group membership; this one stops"
            )
        now = time.monotonic()
        if now - self._consumer_errors_logged_at >= 10.0:
            self._consumer_errors_logged_at = now
            log.warning("consumer error: the client retries", extra=fields(role=self.config.role, error=str(error)))

    def _process(
        self, groups: dict[Key, list[Record]], offsets: dict[tuple[str, int], int], now_ms: int, tick: bool
    ) -> list[_Work]:
        """Hand each partition its records (and the tick): what each writes, its state changes taken from its store."""
        works: dict[Key, _Work] = {}
        lagging = self._lagging(groups)
        by_input = self._by_input
        for key, records in groups.items():
            part = self._parts[key]
            work = works[key] = _Work(part)
            ordered = _merged(records) if len(part.topology.inputs) > 1 else records
            waiting = lagging.get(key, NOTHING)
            part.processor.process(ordered, now_ms, waiting, work.effects)
        for (topic, partition), offset in offsets.items():
            work = works[(by_input[topic].name, partition)]
            work.offsets[(topic, partition)] = offset
            work.part.next[topic] = offset
        if tick:
            lagging = self._lagging_now()
            for key, part in self._parts.items():
                work = works.get(key) or works.setdefault(key, _Work(part))
                part.processor.tick(now_ms, lagging.get(key, NOTHING), work.effects)
        for work in works.values():
            if work.part.store.pending:
                work.changes = work.part.store.take_pending()
        return list(works.values())

    # -- the transaction -------------------------------------------------------------------

    def _send(self, works: list[_Work]) -> None:
        """Add a batch's works to the open transaction (opened here if none is) and send their records.

        librdkafka delivers them while the next batch is consumed and processed, so that the commit
        finds little left to flush. A failure is kept for :meth:`_commit`, which aborts and writes
        the whole transaction again.
        """
        self._works.extend(works)
        writing = [w for w in works if w.writes()]
        if not writing or self._send_failed is not None:
            return
        for w in writing:
            outputs, changes = w.effects.outputs, w.changes
            self._records_in_hand += len(outputs) + len(changes)
            self._bytes_in_hand += sum(len(value) for _, _, value in outputs)
            self._bytes_in_hand += sum(len(value) for value in changes.values() if value is not None)
        changelogs = {(w.part.topology.changelog, w.part.number) for w in writing if w.changes}
        try:
            if not self._in_transaction:
                self.transactor.begin()
                self._in_transaction = True
            self.transactor.produce(self._writes(writing), changelogs)
        except KafkaException as exc:
            self._send_failed = exc

    def _commit(self) -> list[_Work]:  # noqa: PLR0912 - every way a transaction ends, in one retry loop
        """Commit the open transaction, or abort it and write its works again until they commit; the works
        committed (those of partitions still in hand)."""
        attempt = 0
        error: KafkaException | StuckCall | None = self._send_failed
        self._send_failed = None
        try:
            while True:
                live = [w for w in self._works if self._parts.get(w.part.key) is w.part]
                if error is None and self._in_transaction and len(live) < len(self._works):
                    # records of a partition that left are in the transaction: never committed
                    log.info(
                        "a partition left during the transaction: it is written again without it",
                        extra=fields(role=self.config.role),
                    )
                    self.aborts += 1
                    if self._on_abort is not None:
                        self._on_abort()
                    self._in_transaction = False
                    if not self.transactor.abort():
                        self._renew()
                    continue
                if error is not None:
                    attempt += 1
                    self._in_transaction = False
                    self._recover(error, attempt)
                    error = None
                    if self._stop.is_set():
                        log.warning("stopping with a batch not committed: it is done again from the last commit")
                        return []
                    continue
                if not any(w.writes() for w in live):
                    return live
                consumer = self.consumer
                assert consumer is not None
                offsets = [TopicPartition(t, p, o) for w in live for (t, p), o in w.offsets.items()]
                try:
                    if self._in_transaction:
                        ends = self.transactor.commit(offsets, consumer.consumer_group_metadata)
                    else:
                        changelogs = {(w.part.topology.changelog, w.part.number) for w in live if w.changes}
                        ends = self.transactor.write(
                            self._writes(live), offsets, consumer.consumer_group_metadata, changelogs
                        )
                except (KafkaException, StuckCall) as exc:
                    error = exc
                    continue
                self._in_transaction = False
                stores = {}
                for w in live:
                    if w.changes:
                        part = w.part
                        part.store.backend.write(w.changes, ends.get((part.topology.changelog, part.number), 0))
                        stores[part.key] = part.store
                for store in stores.values():
                    store.committed()
                self.committed_batches += 1
                return live
        finally:
            self._works = []
            self._records_in_hand = self._bytes_in_hand = 0

    @staticmethod
    def _writes(works: list[_Work]) -> Iterator[Write]:
        for w in works:
            for topic, key, value in w.effects.outputs:
                yield topic, key, value, None
            if w.changes:
                changelog, number = w.part.topology.changelog, w.part.number
                for name, change in w.changes.items():
                    yield changelog, name, change, number

    def _recover(self, exc: KafkaException | StuckCall, attempt: int) -> None:
        """After a failed transaction: abort it, or renew a producer that cannot go on (unless we are a zombie)."""
        error = exc.args[0] if isinstance(exc, KafkaException) else None
        if isinstance(exc, KafkaException) and not isinstance(error, KafkaError):
            raise exc
        self.aborts += 1
        if self._on_abort is not None:
            self._on_abort()
        if error is None or is_fatal(error):
            log.warning(
                "the transactional producer failed: a new one takes its transactional id over and the batch is "
                "written again",
                extra=fields(role=self.config.role, error=str(exc)),
            )
            self._renew()
        else:
            log.warning(
                "transaction aborted: the batch is written again in a new transaction",
                extra=fields(role=self.config.role, error=str(error), attempt=attempt),
            )
            if not self.transactor.abort():
                self._renew()
            if error.code() in GROUP_ERRORS:
                self._serve_consumer(0.5)
        if attempt > 1:
            time.sleep(min(5.0, 0.05 * 2**attempt))

    def _renew(self) -> None:
        """A new producer for the transactional id, unless another instance has it (and our group membership)."""
        if self.config.static_member:
            # A successor started with our instance number fenced our producer and takes our static
            # membership: our consumer hears of it at its next heartbeat. A producer fenced by the
            # coordinator (a transaction that outlived its timeout in a broker outage) hears nothing.
            self._serve_consumer(max(2.0, 3 * self._heartbeat_ms / 1000))
        log.info("a new producer takes the transactional id over", extra=fields(role=self.config.role))
        while True:
            try:
                self.transactor.renew()
                return
            except StuckCall as exc:
                log.warning("the new producer is stuck too: another", extra=fields(error=str(exc)))
            except KafkaException as exc:
                if is_fatal(exc.args[0]):
                    raise FencedError(f"the {self.config.role} cannot take its transactional id: {exc}") from exc
                log.warning("a new producer failed: another", extra=fields(error=str(exc)))
            time.sleep(1.0)

    def _serve_consumer(self, seconds: float) -> None:
        """Poll the consumer (rebalance callbacks, fatal errors) without processing: records go to the stash."""
        consumer = self.consumer
        assert consumer is not None
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for m in consumer.consume(self.config.batch_size, min(remaining, 0.5)):
                error = m.error()
                if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
                    self._consumer_error(error)
                self._stash.append(m)

    # -- what is waiting in the inputs --------------------------------------------------------

    def _lagging(self, groups: dict[Key, list[Record]]) -> dict[Key, frozenset[str]]:
        """Per partition of this batch, the input topics with records not processed before it.

        The consumer's cached log ends are those of its last fetch of each partition, which may be
        older than records it already returned from another topic: a partition of several inputs
        that knows nothing newer of one of them would let the other's event time run ahead of
        records already in the log. So an input the cache calls caught up counts as caught up only
        if the broker said so after this batch's records were sent (one request for all that need
        it: with a backlog read from the log, one at the start serves every batch).
        """
        consumer = self.consumer
        assert consumer is not None
        out: dict[Key, set[str]] = {}
        unsure: list[tuple[Key, str]] = []
        for key, records in groups.items():
            part = self._parts[key]
            topology = part.topology
            if not topology.watch_lag:
                continue
            lagging, caught_up = self._cached_lag(part)
            out[key] = lagging
            if len(topology.inputs) < 2 or not caught_up:
                continue
            newest = max(r.timestamp for r in records)
            for topic in caught_up:
                known = self._log_end.get((topic, part.number))
                if known is not None and known[0] > part.next.get(topic, 0):
                    lagging.add(topic)
                elif known is None or known[1] < newest + LOG_END_MARGIN_MS:
                    unsure.append((key, topic))
        self._ask_log_ends(unsure, out)
        return {key: frozenset(topics) for key, topics in out.items()}

    def _lagging_now(self) -> dict[Key, frozenset[str]]:
        """Per partition in hand, the inputs with records not processed yet, as the broker has them now (ticks decide
        idleness on it)."""
        out: dict[Key, set[str]] = {}
        unsure: list[tuple[Key, str]] = []
        for key, part in self._parts.items():
            if not part.topology.watch_lag:
                continue
            lagging, caught_up = self._cached_lag(part)
            out[key] = lagging
            unsure.extend((key, topic) for topic in caught_up)
        self._ask_log_ends(unsure, out)
        return {key: frozenset(topics) for key, topics in out.items()}

    def _cached_lag(self, part: _Partition) -> tuple[set[str], list[str]]:
        """Input topics whose log holds records not processed yet by the consumer's last fetch (unknown: assumed
        to), and the others: caught up as far as that fetch knew."""
        consumer = self.consumer
        assert consumer is not None
        lagging, caught_up = set(), []
        for topic in part.topology.inputs:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, part.number), cached=True)
            if high < 0 or high > part.next.get(topic, 0):
                lagging.add(topic)
            else:
                caught_up.append(topic)
        return lagging, caught_up

    def _ask_log_ends(self, unsure: list[tuple[Key, str]], out: dict[Key, set[str]]) -> None:
        if not unsure:
            return
        ends = self._log_ends([(topic, key[1]) for key, topic in unsure])
        for key, topic in unsure:
            end = ends.get((topic, key[1]))
            if end is None or end > self._parts[key].next.get(topic, 0):
                out[key].add(topic)

    def _log_ends(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The last stable offsets of ``tps`` as the broker has them now (one request); none on error (then
        every input counts as lagging: a partition does not go idle while the broker cannot say)."""
        if self._admin is None:
            self._admin = admin(self.settings)
        asked = int(time.time() * 1000)
        try:
            futures = self._admin.list_offsets(
                {TopicPartition(t, p): OffsetSpec.latest() for t, p in tps},  # type: ignore[no-untyped-call]
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=10,
            )
            ends = {(tp.topic, tp.partition): f.result(timeout=15).offset for tp, f in futures.items()}
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            # A new client next time: after a broker restart this one may keep stale leader epochs for good.
            self._admin = None
            log.warning("log ends not known: inputs counted as lagging", extra=fields(error=str(exc)))
            return {}
        for tp, end in ends.items():
            self._log_end[tp] = (end, asked)
        return ends

    def _at_end(self, ends: list[tuple[str, int, int]]) -> None:
        """The consumer reached the end of these input partitions: nothing waits there (transaction markers
        included). Applied once the batch that came with them is processed."""
        for topic, partition, offset in ends:
            topology = self._by_input.get(topic)
            part = None if topology is None else self._parts.get((topology.name, partition))
            if part is not None and offset > part.next.get(topic, 0):
                part.next[topic] = offset

    # -- assignment ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign the new partitions paused; the restorer brings their state, ``_adopt`` resumes them."""
        wanted = [(self._by_leader[tp.topic], tp.partition) for tp in partitions if tp.topic in self._by_leader]
        tps = [TopicPartition(topic, p) for t, p in wanted for topic in t.inputs]
        consumer.incremental_assign(tps)
        if not wanted:
            return
        consumer.pause(tps)
        job = RestoreJob(wanted)
        for key in job.keys():  # noqa: SIM118 - RestoreJob is no mapping
            self._restoring[key] = job
        assert self._restorer is not None
        self._restorer.submit(job)
        log.info(
            "partitions assigned: restoring",
            extra=fields(role=self.config.role, partitions=sorted({p for _, p in wanted})),
        )

    def _adopt(self) -> None:
        """Build the processors of restored partitions and resume their inputs from the committed offsets."""
        assert self._restorer is not None
        consumer = self.consumer
        assert consumer is not None
        for job in self._restorer.finished():
            if job.error is not None:
                raise job.error
            now_ms = int(time.time() * 1000)
            resumed: list[TopicPartition] = []
            for topology, number in job.wanted:
                key = (topology.name, number)
                store = job.stores.pop(key, None)
                if self._restoring.get(key) is not job:  # revoked meanwhile
                    if store is not None:
                        store.backend.close()
                    continue
                del self._restoring[key]
                assert store is not None
                processor = topology.open(number, store, now_ms)
                store.backend.loaded()
                next_ = {topic: job.committed[(topic, number)] for topic in topology.inputs}
                self._parts[key] = _Partition(topology, number, store, processor, next_)
                for topic, offset in next_.items():
                    with contextlib.suppress(KafkaException):  # not fetched yet: it starts at the committed offset
                        consumer.seek(TopicPartition(topic, number, offset))
                    resumed.append(TopicPartition(topic, number))
                log.info(
                    "partition restored",
                    extra=fields(
                        role=self.config.role,
                        topology=topology.name,
                        partition=number,
                        changelog_records=job.records.get(key, 0),
                    ),
                )
            if resumed:
                consumer.resume(resumed)

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
            key = (topology.name, tp.partition)
            job = self._restoring.pop(key, None)
            if job is not None:
                assert self._restorer is not None
                self._restorer.cancel(job, key)
            self._drop(key)
            tps.extend(TopicPartition(topic, tp.partition) for topic in topology.inputs)
        if not tps:
            return
        gone = {(tp.topic, tp.partition) for tp in tps}
        self._stash = [m for m in self._stash if (m.topic(), m.partition()) not in gone]
        log.info(
            f"partitions {why}",
            extra=fields(role=self.config.role, partitions=sorted({tp.partition for tp in partitions})),
        )
        with contextlib.suppress(KafkaException):
            consumer.incremental_unassign(tps)

    def _drop(self, key: Key) -> None:
        part = self._parts.pop(key, None)
        if part is None:
            return
        part.processor.close()
        part.store.backend.close()
        for topic in part.topology.inputs:
            self._log_end.pop((topic, part.number), None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.config.group, topic, str(part.number))

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
