"""The faust-streaming application: agents feed partition meters, tables keep their state.

Per batch (``take_events``), in this order, which is what makes at-least-once safe:

1. each partition's messages go through its ``PartitionMeter`` (no I/O);
2. billing sessions, late events and dead letters are produced and the producer is flushed:
   they are on the brokers before anything says they were emitted;
3. the state changes are written to the table, i.e. to its changelog topic, and the batch
   waits until the brokers have acknowledged every one of them;
4. faust acks the batch, and only then may its commit cover the batch's input offsets.

A crash after 2 replays the batch against the old state and emits the same records with the
same ids (the sink and the balance keep one); a crash after 3 replays it against the new
state, where every event is a duplicate. Nothing is lost, and nothing is counted twice.
(faust's own commit does not wait for the changelog: its producer buffer's flush gives up
after 0.1 s without a send, so step 3 waits itself, and a write that fails ends the worker.)

Idle partitions: a timer produces one tick per partition to the ticks topic, which the
agents read with the input topics, so idle finalization happens in the agent with the
partition's state at hand (faust tables are only writable from a partition's event). A tick
is also when an agent checks that no input record was fetched and then dropped by faust.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, NoReturn

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from faust.streams import _current_event  # faust keeps the partition to write tables to here
from faust.types import TP, EventT, StreamT, TableT

from pipeline import failpoints, metrics
from pipeline.events import BillingSessionRecord, DeadLetter, LateRecord
from pipeline.kafka import producer_config
from pipeline.logs import fields
from pipeline.records import encode
from pipeline.rules.config import SECOND, IdleTimeouts
from pipeline.settings import Settings
from pipeline.stream.continuity import OffsetGuard, Progress, Verdict
from pipeline.stream.partition import BatchResult, Message, PartitionMeter
from pipeline.stream.plans import PlanFeed

log = logging.getLogger(__name__)

TICK_KEY: Final = b"tick"
#: An input partition with records in the log and a position unmoved this long is read by the
#: worker itself from the log: faust fetched the records and dropped them.
HOLE_SECONDS: Final = 5.0
#: Most records read at once for such a partition; the next tick reads on if need be.
TAIL_READ_MAX: Final = 10_000
#: An input partition that even so has not moved for this long, outside rebalances: restart.
STALL_SECONDS: Final = 30.0
EXIT_BATCH_FAILED: Final = 70
#: How long a batch waits for the broker to answer an offsets lookup before it fails.
BROKER_WAIT_SECONDS: Final = 120.0

StateTable = TableT[bytes, bytes]


class ChangelogNotDurable(RuntimeError):
    """A state change was not acknowledged by the brokers: the batch must not be committed."""


class DroppedByConsumer(Exception):
    """The ``worker.delivered`` failpoint: the record is lost as faust loses fetched records."""


class Refetched:
    """An input record read from the log by the worker itself, where faust skipped it."""

    __slots__ = ("message", "value")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.value = message.value


Delivered = EventT[bytes] | Refetched


TABLES: Final = ("conversations", "alerts")


def changelog_topics(settings: Settings) -> list[str]:
    """faust's names for the tables' changelogs; created up front so faust never races for them."""
    return [f"{settings.app_id}-{table}-changelog" for table in TABLES]


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


class MeteringApp:
    """Builds the faust app for ``settings`` and holds the per-partition meters of this worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        topics = settings.topics
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(settings.kafka_bootstrap),
            store="rocksdb://" if settings.state_store == "rocksdb" else "memory://",
            datadir=str(settings.data_dir / "worker"),
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            broker_max_poll_records=max(settings.batch_size, 500),
            stream_buffer_maxsize=max(2 * settings.batch_size, 4096),
            broker_commit_interval=1.0,
            broker_session_timeout=15.0,
            broker_heartbeat_interval=3.0,
            table_cleanup_interval=3600.0,
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "partitions": settings.partitions}
        self.conversations = self.app.Table("conversations", **raw)
        self.alerts = self.app.Table("alerts", **raw)
        self.conversation_topic = self.app.topic(topics.turns, topics.transfers, topics.ticks)
        self.alert_topic = self.app.topic(topics.alerts, topics.ticks)
        self.timeouts = IdleTimeouts(settings.rules)
        self.plans = PlanFeed(settings)
        self._meters: dict[tuple[str, int], PartitionMeter] = {}
        self._producer: Producer | None = None
        self._guard = OffsetGuard()
        #: Since when each input partition's position has not moved: the agents' view (holes at
        #: the end of the log) and the timer's (stalls), which a batch in hand resets.
        self._unmoved = Progress()
        self._stalled = Progress()
        #: Agents with a batch being processed: a slow batch (a broker away) is no stall.
        self._in_hand: set[str] = set()
        self._guard_faust_gaps()
        self._offsets_reader: Consumer | None = None
        #: Changelog sends of the batch in hand, per table: awaited before the batch ends.
        self._changelog_sends: dict[str, list[asyncio.Future[Any]]] = {kind: [] for kind in TABLES}
        for kind, table in (("conversations", self.conversations), ("alerts", self.alerts)):
            self._track_changelog(kind, table)
        self.app.agent(self.conversation_topic, name="conversations")(self._conversation_agent)
        self.app.agent(self.alert_topic, name="alerts")(self._alert_agent)
        self.app.timer(interval=self.tick_interval, name="ticks")(self._tick)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    @property
    def tick_interval(self) -> float:
        return max(0.2, min(5.0, self.settings.idle_partition_seconds / 3))

    # -- lifecycle -----------------------------------------------------------------------

    def _outputs(self) -> Producer:
        """The output producer and the plan feed start with the first batch or tick, not before."""
        if self._producer is None:
            config = producer_config(self.settings, **{"client.id": f"{self.settings.app_id}-outputs"})
            self._producer = Producer(config)
            self.plans.start()
            s = self.settings
            log.info("worker started", extra=fields(group=s.app_id, store=s.state_store, partitions=s.partitions))
        return self._producer

    def close(self) -> None:
        self.plans.stop()
        if self._producer is not None:
            self._producer.flush(30)

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Meters are rebuilt from the tables after a rebalance; the tables are the truth."""
        self._meters.clear()
        self._guard.forget_all()
        self._unmoved.forget_all()
        self._stalled.forget_all()

    # -- agents --------------------------------------------------------------------------

    async def _conversation_agent(self, stream: StreamT[bytes]) -> None:
        batches = stream.take_events(self.settings.batch_size, within=self.settings.batch_seconds)  # type: ignore[attr-defined]
        async for events in batches:
            await self._guarded("conversations", self.conversations, events)

    async def _alert_agent(self, stream: StreamT[bytes]) -> None:
        batches = stream.take_events(self.settings.batch_size, within=self.settings.batch_seconds)  # type: ignore[attr-defined]
        async for events in batches:
            await self._guarded("alerts", self.alerts, events)

    async def _guarded(self, kind: str, table: StateTable, events: Sequence[EventT[bytes]]) -> None:
        """Run a batch so that faust acks it only once it is done.

        faust's ``take_events`` acks the batch when its generator closes, for whatever reason.
        So a shutdown waits for the batch in hand (SIGTERM: finish it, then commit), and a batch
        that fails ends the process at once, before anything can commit it: the worker restarts
        from the last commit and never skips a batch.
        """
        batch = asyncio.ensure_future(self._process(kind, table, events))
        self._in_hand.add(kind)
        try:
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            log.info("stopping: finishing the batch in hand", extra=fields(kind=kind, events=len(events)))
            await self._finish(batch, kind)
            raise
        except Exception:
            _die(kind)
        finally:
            self._in_hand.discard(kind)

    async def _finish(self, batch: asyncio.Future[None], kind: str) -> None:
        try:
            await batch
        except Exception:
            _die(kind)

    async def _process(self, kind: str, table: StateTable, events: Sequence[EventT[bytes]]) -> None:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        skew_ms = int(self.settings.max_clock_skew_seconds * SECOND)
        by_partition: dict[int, list[Delivered]] = defaultdict(list)
        for event in await self._continuous(events):
            by_partition[event.message.partition].append(event)
        results: list[tuple[EventT[bytes], PartitionMeter, BatchResult]] = []
        for partition, group in by_partition.items():
            meter = self._meter(kind, table, partition)
            last = _last_from_faust(group)
            for change in self.plans.drain_for(meter):
                results.append((last, meter, change))
            ticks = [e for e in group if not isinstance(e, Refetched) and e.message.topic == self.settings.topics.ticks]
            delivered = [*group, *await self._dropped_tail(kind, partition)] if ticks else group
            messages = [_message(e) for e in delivered if e.message.topic != self.settings.topics.ticks]
            lagging = await self._lagging(kind, partition, before=delivered)
            if messages:
                results.append((last, meter, meter.process(messages, now_ms, skew_ms, lagging=lagging)))
            if ticks and kind == "conversations":
                results.append((ticks[-1], meter, await self._idle_tick(meter, partition, ticks)))
        await self._emit([r for _, _, r in results])
        for event, _, result in results:
            self._persist(table, event, result)
        await self._changelog_durable(kind)
        self._observe(kind, [r for _, _, r in results], len(events), time.perf_counter() - started)

    async def _idle_tick(self, meter: PartitionMeter, partition: int, ticks: Sequence[Delivered]) -> BatchResult:
        """A conversation partition's ticks: idle with nothing waiting, its clock follows the wall clock (R9)."""
        backlog = bool(await self._lagging("conversations", partition))
        tick_ms = max(_tick_ms(e.value) for e in ticks)
        was_idle = meter.meter.partition.idle
        result = meter.idle_tick(tick_ms, int(self.settings.idle_partition_seconds * SECOND), backlog=backlog)
        if meter.meter.partition.idle and not was_idle:
            log.debug("partition idle: its clock follows the wall clock", extra=fields(partition=partition))
        return result

    async def _lagging(self, kind: str, partition: int, before: Sequence[Delivered] = ()) -> list[str]:
        """Input topics of the partition with messages in the log not yet metered (``before`` the batch).

        The consumer's position is no measure: faust fetches ahead of what the agent has
        processed. What counts is the next offset to meter (``_positions``).
        """
        first_in_batch: dict[str, int] = {}
        for e in before:
            if e.message.partition == partition:
                first_in_batch.setdefault(e.message.topic, e.message.offset)
        lagging = []
        for topic, (position, highwater) in (await self._positions(kind, partition)).items():
            done = min(position, first_in_batch.get(topic, position))
            if highwater is None or highwater > done:
                lagging.append(topic)
        return lagging

    async def _positions(self, kind: str, partition: int) -> dict[str, tuple[int, int | None]]:
        """Per input topic of the partition: the next offset to meter and the log end faust knows.

        Before the first message since the assignment, the next offset is the group's
        committed one; the guard starts from it, as it would on that first message.
        """
        topics = self._input_topics(kind)
        unknown = [t for t in topics if not self._guard.knows(t, partition)]
        if unknown:
            committed = await asyncio.get_running_loop().run_in_executor(None, self._committed, unknown, partition)
            for topic in unknown:
                if not self._guard.knows(topic, partition):
                    self._guard.start(topic, partition, committed[topic])
        out: dict[str, tuple[int, int | None]] = {}
        for topic in topics:
            done = self._guard.expected(topic, partition)
            assert done is not None
            out[topic] = (done, _highwater_or_none(self.app.consumer, topic, partition))
        return out

    async def _waiting(self, kind: str, partition: int) -> list[tuple[str, int, int]]:
        """``(topic, next offset to meter, log end)`` of the partition's inputs with records waiting."""
        positions = await self._positions(kind, partition)
        return [(t, done, end) for t, (done, end) in positions.items() if end is not None and end > done]

    async def _dropped_tail(self, kind: str, partition: int) -> list[Delivered]:
        """Records of the partition's inputs that faust fetched and never delivered, read from the log.

        faust can drop fetched records (a flow suspended, a partition not yet active) and
        fetch on from after them; with no later record to reveal the hole, the partition would
        wait forever. A partition whose position has not moved for ``HOLE_SECONDS`` while the
        log holds more is read from the log here: records faust still delivers later are
        already metered (the guard drops them), so reading too early costs only the read.
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        out: list[Delivered] = []
        for topic, done, highwater in await self._waiting(kind, partition):
            if self._unmoved.unmoved_for(topic, partition, done, now) < HOLE_SECONDS:
                continue
            end = min(highwater, done + TAIL_READ_MAX)
            records = await loop.run_in_executor(None, self._read_range, topic, partition, done, end)
            if records is None:
                continue  # the stall check restarts the worker if this goes on
            log.warning(
                "input records fetched by the consumer and not delivered: read from the log and metered in order",
                extra=fields(topic=topic, partition=partition, first=done, last=end - 1, records=len(records)),
            )
            metrics.OFFSETS_REFETCHED.labels(topic).inc(len(records))
            self._guard.read_up_to(topic, partition, end)
            await self._faust_add_gap(TP(topic, partition), done, end - 1)
            out.extend(records)
        return out

    def _input_topics(self, kind: str) -> tuple[str, ...]:
        topics = self.settings.topics
        return (topics.turns, topics.transfers) if kind == "conversations" else (topics.alerts,)

    def _committed(self, topics: list[str], partition: int) -> dict[str, int]:
        """The group's committed offsets (the log start where none), waiting out a broker that is away.

        A coordinator that moves or a broker that restarts is an outage to wait for, not a
        reason to fail the batch: the worker would only restart and ask again.
        """
        deadline = time.monotonic() + BROKER_WAIT_SECONDS
        pause = 0.5
        while True:
            try:
                return self._committed_once(topics, partition)
            except KafkaException as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "broker not answering for committed offsets: retrying",
                    extra=fields(partition=partition, error=str(exc), retry_in_s=pause),
                )
                time.sleep(pause)
                pause = min(2 * pause, 10.0)

    def _committed_once(self, topics: list[str], partition: int) -> dict[str, int]:
        if not topics:
            return {}
        if self._offsets_reader is None:
            self._offsets_reader = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": self.settings.app_id,
                    "enable.auto.commit": False,
                    **self.settings.kafka_config,
                }
            )
        tps = self._offsets_reader.committed([TopicPartition(t, partition) for t in topics], timeout=10)
        out = {}
        for tp in tps:
            if tp.offset >= 0:
                out[tp.topic] = tp.offset
            else:
                low, _ = self._offsets_reader.get_watermark_offsets(tp, timeout=10)
                out[tp.topic] = low
        return out

    async def _continuous(self, events: Sequence[EventT[bytes]]) -> list[Delivered]:
        """The batch's events with every input offset in order: holes are read from the log.

        faust can skip offsets when it suspends flow for a rebalance (``continuity``). The
        records it skipped are read here straight from the partition and metered before the
        message that revealed the hole, so the partition is metered in log order, exactly once.
        """
        loop = asyncio.get_running_loop()
        out: list[Delivered] = []
        for event in events:
            m = event.message
            if m.topic == self.settings.topics.ticks:
                out.append(event)
                continue
            try:
                failpoints.hit("worker.delivered", DroppedByConsumer)
            except DroppedByConsumer:
                continue  # tests: as if faust had fetched the record and dropped it
            if not self._guard.knows(m.topic, m.partition):
                start = await loop.run_in_executor(None, self._committed, [m.topic], m.partition)
                self._guard.start(m.topic, m.partition, start[m.topic])
            decision = self._guard.admit(m.topic, m.partition, m.offset)
            if decision.verdict is Verdict.ACCEPT:
                out.append(event)
            elif decision.verdict is Verdict.JUMP:
                skipped = await loop.run_in_executor(
                    None, self._read_range, m.topic, m.partition, decision.expected, m.offset
                )
                if skipped is None:
                    _restart(m.topic, m.partition, decision.expected, m.offset)
                log.warning(
                    "input offsets skipped by the consumer (rebalance): read from the log and metered in order",
                    extra=fields(
                        topic=m.topic,
                        partition=m.partition,
                        first=decision.expected,
                        last=m.offset - 1,
                        records=len(skipped),
                    ),
                )
                metrics.OFFSETS_REFETCHED.labels(m.topic).inc(len(skipped))
                out.extend(skipped)
                self._guard.hole_is_empty(m.topic, m.partition, m.offset)
                await self._faust_add_gap(TP(m.topic, m.partition), decision.expected, m.offset - 1)
                out.append(event)
        return out

    def _read_range(self, topic: str, partition: int, first: int, end: int) -> list[Delivered] | None:
        """The records of the log with offsets in [first, end), or None if they cannot be read now."""
        if first >= end:
            return []
        reader = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"{self.settings.app_id}-gap-read",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **self.settings.kafka_config,
            }
        )
        records: list[Delivered] = []
        try:
            reader.assign([TopicPartition(topic, partition, first)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for message in reader.consume(1000, timeout=1.0):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF and (message.offset() or 0) >= end:
                            return records  # the rest of the range is transaction markers
                        continue
                    offset = message.offset() or 0
                    if offset >= end:
                        return records
                    records.append(Refetched(Message(topic, partition, offset, message.value() or b"")))
                    if offset + 1 >= end:
                        return records
            return None
        finally:
            reader.close()

    def _guard_faust_gaps(self) -> None:
        """faust fills "gaps" it created itself and commits over them; input gaps are ours to confirm."""
        consumer: Any = self.app.consumer  # a private hook of faust's Consumer
        original = consumer._add_gap
        inputs = {self.settings.topics.turns, self.settings.topics.transfers, self.settings.topics.alerts}

        async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
            if tp.topic not in inputs:
                await original(tp, offset_from, offset_to)

        consumer._add_gap = add_gap
        self._faust_add_gap = original

    def _meter(self, kind: str, table: StateTable, partition: int) -> PartitionMeter:
        meter = self._meters.get((kind, partition))
        if meter is None:
            topics = self.settings.topics
            meter = PartitionMeter(
                partition,
                self.settings.partitions,
                self.settings.rules,
                self.timeouts,
                conversation_topics=(topics.turns, topics.transfers) if kind == "conversations" else (),
                alert_topics=(topics.alerts,) if kind == "alerts" else (),
            )
            meter.restore(_partition_items(table, partition))
            self._meters[(kind, partition)] = meter
            log.info(
                "partition meter loaded",
                extra=fields(kind=kind, partition=partition, conversations=len(meter.meter.conversations)),
            )
        return meter

    # -- outputs and state ---------------------------------------------------------------

    async def _emit(self, results: Iterable[BatchResult]) -> None:
        """Produce every output record of the batch and wait until the brokers have all of them."""
        producer = self._outputs()
        topics = self.settings.topics
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")

        count = 0
        for result in results:
            for session in result.sessions:
                _produce(producer, topics.billing_sessions, session.app_id, session, delivered)
            for late in result.late:
                _produce(producer, topics.late, late.app_id, late, delivered)
            for dead in result.dead:
                _produce(producer, topics.dlq, None, dead, delivered)
            count += len(result.sessions) + len(result.late) + len(result.dead)
            if count > 50_000:
                producer.poll(0)
                count = 0
        remaining = await asyncio.get_running_loop().run_in_executor(None, producer.flush, 60.0)
        if remaining or failures:
            raise RuntimeError(
                f"could not deliver {remaining or len(failures)} output records ({'; '.join(failures[:3])}): "
                "the batch will be processed again after restart; check the brokers"
            )

    def _track_changelog(self, kind: str, table: StateTable) -> None:
        """Keep the future of every changelog send of ``table`` (faust drops it in ``__setitem__``)."""
        send = table.send_changelog
        pending = self._changelog_sends[kind]

        def send_changelog(*args: Any, **kwargs: Any) -> Any:
            sent = send(*args, **kwargs)
            pending.append(sent)
            return sent

        table.send_changelog = send_changelog  # type: ignore[method-assign]

    async def _changelog_durable(self, kind: str) -> None:
        """Wait until the brokers have every state change of the batch; raise if one failed."""
        pending = self._changelog_sends[kind]
        sends, pending[:] = list(pending), []
        if not sends:
            return
        _, waiting = await asyncio.wait(sends, timeout=BROKER_WAIT_SECONDS)
        failures = [
            "cancelled" if f.cancelled() else str(f.exception())
            for f in sends
            if f.done() and (f.cancelled() or f.exception() is not None)
        ]
        failpoints.hit("worker.changelog", ChangelogNotDurable)
        if waiting or failures:
            raise ChangelogNotDurable(
                f"{len(waiting)} state changes unacknowledged after {BROKER_WAIT_SECONDS:.0f} s, "
                f"{len(failures)} failed ({'; '.join(failures[:3])}): the batch will be processed "
                "again after restart from the last commit; check the brokers"
            )

    def _persist(self, table: StateTable, event: EventT[bytes], result: BatchResult) -> None:
        prefix = f"{event.message.partition}\x1e"
        with _in_partition_of(event):
            for key, value in result.changes.items():
                table_key = (prefix + key).encode()
                if value is None:
                    table.pop(table_key, None)
                else:
                    table[table_key] = value

    def _observe(self, kind: str, results: Sequence[BatchResult], size: int, seconds: float) -> None:
        metrics.WORKER_BATCH_EVENTS.observe(size)
        metrics.WORKER_BATCH_SECONDS.observe(seconds)
        for r in results:
            for topic, n in r.received.items():
                metrics.EVENTS_RECEIVED.labels(topic).inc(n)
            for (topic, code), n in r.invalid.items():
                metrics.EVENTS_INVALID.labels(topic, code).inc(n)
            for topic, n in r.duplicates.items():
                metrics.EVENTS_DUPLICATE.labels(topic).inc(n)
            for topic, n in r.late_by_topic.items():
                metrics.EVENTS_LATE.labels(topic).inc(n)
            s = r.stats
            for result, n in (
                ("billable", s.sessions_billable),
                ("non_interactive", s.sessions_non_interactive),
                ("test", s.sessions_test),
            ):
                if n:
                    metrics.CONVERSATION_SESSIONS.labels(result).inc(n)
            for k, n in (("usage", s.usage_sessions), ("voice", s.voice_sessions), ("alert", s.alert_sessions)):
                if n:
                    metrics.BILLING_SESSIONS.labels(k).inc(n)
            for anomaly, n in (
                ("ended_without_start", s.transfers_ended_without_start),
                ("started_while_open", s.transfers_started_while_open),
                ("left_open", s.transfers_left_open),
            ):
                if n:
                    metrics.TRANSFER_ANOMALIES.labels(anomaly).inc(n)

    # -- ticks ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        """One tick per partition: lets idle partitions follow the wall clock (R9)."""
        producer = self._outputs()
        now_ms = int(time.time() * 1000)
        value = str(now_ms).encode()
        for partition in range(self.settings.partitions):
            producer.produce(self.settings.topics.ticks, value, TICK_KEY, partition=partition)
        producer.poll(0)
        self._observe_meters(now_ms)
        await self._check_progress()

    async def _check_progress(self) -> None:
        """Restart in place if an input partition with records waiting has not moved for a while.

        The agents read records faust dropped from the log themselves (``_dropped_tail``); if
        faust stops delivering altogether, ticks included, a restart from the last commit
        (nothing lost) is the known cure.
        """
        now = time.monotonic()
        if self.app.rebalancing or self.app.in_recovery:
            self._stalled.forget_all()
            return
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
        for kind in TABLES:
            if kind in self._in_hand:
                self._stalled.forget(self._input_topics(kind))
                continue
            partitions = sorted({p for t, p in assigned if t in self._input_topics(kind)})
            for partition in partitions:
                for topic, done, highwater in await self._waiting(kind, partition):
                    stalled_for = self._stalled.unmoved_for(topic, partition, done, now)
                    if stalled_for >= STALL_SECONDS:
                        _restart_stalled(topic, partition, highwater - done, stalled_for)

    def _observe_meters(self, now_ms: int) -> None:
        for (kind, partition), meter in list(self._meters.items()):
            if kind != "conversations":
                continue
            m = meter.meter
            metrics.OPEN_CONVERSATIONS.labels(str(partition)).set(m.open_conversations)
            clock = m.partition.clock
            if clock > 0:
                metrics.PARTITION_CLOCK_DELAY.labels(str(partition)).set(max(0.0, (now_ms - clock) / 1000))
        consumer = self.app.consumer
        for (topic, partition), expected in self._guard.positions().items():
            try:
                highwater = consumer.highwater(TP(topic, partition))
            except (KeyError, AssertionError, AttributeError):  # not assigned (any more)
                continue
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(self.settings.app_id, topic, str(partition)).set(
                    max(0, highwater - expected)
                )


def _restart(topic: str, partition: int, expected: int, got: int) -> NoReturn:
    """Skipped input offsets could not be read from the log: start again from the last commit."""
    log.warning(
        "input offsets skipped by the consumer and not readable now: restarting from the last commit",
        extra=fields(topic=topic, partition=partition, expected=expected, got=got),
    )
    _exec_again()


def _exec_again() -> NoReturn:
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "pipeline", *sys.argv[1:]])


def _restart_stalled(topic: str, partition: int, waiting: int, seconds: float) -> NoReturn:
    log.warning(
        "input partition not moving while records wait in the log: restarting from the last commit",
        extra=fields(topic=topic, partition=partition, waiting=waiting, seconds=round(seconds, 1)),
    )
    _exec_again()


def _die(kind: str) -> NoReturn:
    log.exception(
        "batch failed: the worker exits without committing it and restarts from its last commit",
        extra=fields(kind=kind),
    )
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


def _last_from_faust(group: Sequence[Delivered]) -> EventT[bytes]:
    """The partition's last event delivered by faust: table writes need its context.

    A refetched record is always followed by the faust event that revealed its hole.
    """
    for event in reversed(group):
        if not isinstance(event, Refetched):
            return event
    raise AssertionError("a batch group holds at least one event delivered by faust")


def _highwater_or_none(consumer: Any, topic: str, partition: int) -> int | None:
    try:
        return consumer.highwater(TP(topic, partition))  # type: ignore[no-any-return]
    except (KeyError, AssertionError, AttributeError):
        return None


def _message(event: Delivered) -> Message:
    if isinstance(event, Refetched):
        return event.message
    m = event.message
    value = event.value if isinstance(event.value, bytes) else b""
    return Message(m.topic, m.partition, m.offset, value)


def _tick_ms(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return int(time.time() * 1000)


def _produce(
    producer: Producer,
    topic: str,
    key: str | None,
    record: BillingSessionRecord | LateRecord | DeadLetter,
    on_delivery: Any,
) -> None:
    payload = encode(record)
    while True:
        try:
            producer.produce(topic, payload, key.encode() if key else None, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def _partition_items(table: StateTable, partition: int) -> Iterator[tuple[str, bytes]]:
    prefix = f"{partition}\x1e".encode()
    for key, value in list(table.data.items()):
        if isinstance(key, bytes) and key.startswith(prefix) and value is not None:
            yield key[len(prefix) :].decode(), value


@contextmanager
def _in_partition_of(event: EventT[bytes]) -> Iterator[None]:
    """Table writes go to the changelog partition of the current event: make it ``event``."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
