"""The ClickHouse sink: ``billing-sessions`` from Kafka into ClickHouse, offsets committed once durable.

A thin adapter over confluent-kafka and the one-method ``SessionWriter``; every consumer call happens on
the thread running :meth:`ClickHouseSink.run`, so flush, rebalance and shutdown need no lock. The flush
contract, its failure handling and rebalances: docs/sink.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumers.clickhouse.errors import ClickHouseWriteError
from consumers.clickhouse.store import SessionWriter
from pipeline.contract.events import BillingSessionRecord
from pipeline.infra import failpoints
from pipeline.infra.kafka import consumer_config
from pipeline.infra.logs import fields
from pipeline.infra.metrics import (
    CONSUMER_LAG,
    FINAL_TO_QUERYABLE_SECONDS,
    SINK_BATCH_ROWS,
    SINK_FAILURES,
    SINK_INSERT_SECONDS,
    SINK_INVALID,
    SINK_LAST_SUCCESS,
    SINK_ROWS,
)
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings

__all__ = ["Backoff", "ClickHouseSink", "KafkaConsumer", "KafkaMessage", "SinkError", "decode_record"]

log = logging.getLogger(__name__)

_POLL_SECONDS: Final = 0.2  # longest consume() wait: bounds how late stop and rebalances are noticed
_UINT32: Final = 2**32
_TIMESTAMP_NOT_AVAILABLE: Final = 0
_MESSAGE_ERROR_LOG_SECONDS: Final = 30.0
_DECODER: Final = msgspec.json.Decoder(BillingSessionRecord)

RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class KafkaMessage(Protocol):
    """What the sink reads of a message (``confluent_kafka.Message`` has it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> KafkaError | None: ...


class KafkaConsumer(Protocol):
    """The consumer operations the sink uses (``confluent_kafka.Consumer`` has them)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = ...,
        on_revoke: RebalanceCallback | None = ...,
        on_lost: RebalanceCallback | None = ...,
    ) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> Sequence[KafkaMessage]: ...
    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def committed(self, partitions: list[TopicPartition], timeout: float = ...) -> list[TopicPartition]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int]: ...
    def close(self) -> None: ...


ConsumerFactory = Callable[[dict[str, Any]], KafkaConsumer]


class SinkError(RuntimeError):
    """The sink cannot go on (a fatal consumer error, or offsets that would go backwards)."""


def decode_record(value: bytes | None) -> BillingSessionRecord | str:
    """The record in ``value``, or why it is not one (bad input is data, not an exception)."""
    if value is None:
        return "empty message (no value)"
    try:
        record = _DECODER.decode(value)
    except msgspec.ValidationError as exc:
        return f"not a billing session record: {exc}"
    except msgspec.DecodeError as exc:
        return f"not JSON: {exc}"
    return _record_problem(record) or record


def _record_problem(record: BillingSessionRecord) -> str:
    """What ClickHouse would refuse for the whole block: checked here so one record cannot block a partition."""
    for name in ("started_at", "ended_at", "conversation_started_at", "conversation_ended_at"):
        value: datetime | None = getattr(record, name)
        if value is not None and value.tzinfo is None:
            return f"{name} {value.isoformat()} has no time zone offset"
    if not 0 <= record.session_index < _UINT32:
        return f"session_index {record.session_index} is out of range (0 to {_UINT32 - 1})"
    if not record.billing_session_id:
        return "billing_session_id is empty"
    return ""


@dataclass(slots=True)
class _Block:
    """The messages of one partition in a batch: what one insert and one commit offset cover."""

    partition: int
    first: int
    last: int
    records: list[BillingSessionRecord] = field(default_factory=list)
    emitted_at: list[float] = field(default_factory=list)  # Kafka timestamps (s) of the kept records
    ids: set[str] = field(default_factory=set)
    messages: int = 0
    duplicates: int = 0
    inserted: bool = False

    def add(self, offset: int, record: BillingSessionRecord | None, emitted_at: float | None, key: str = "") -> None:
        """``key`` names the record among copies (default: its billing session id)."""
        self.last = offset
        self.messages += 1
        if record is None:
            return
        key = key or record.billing_session_id
        if key in self.ids:
            self.duplicates += 1
            return
        self.ids.add(key)
        self.records.append(record)
        if emitted_at is not None:
            self.emitted_at.append(emitted_at)

    def token(self, topic: str) -> str:
        return f"{topic}:{self.partition}:{self.first}-{self.last}"

    def where(self, topic: str) -> str:
        return f"{topic}[{self.partition}]@{self.first}-{self.last}"


@dataclass(slots=True)
class _Batch:
    """Blocks taken from the buffer together; committed together once all are written."""

    blocks: dict[int, _Block]
    attempts: int = 0

    @property
    def messages(self) -> int:
        return sum(b.messages for b in self.blocks.values())


class ClickHouseSink:
    """Consume ``settings.topics.billing_sessions`` in group ``<app_id>-sink`` into a :class:`SessionWriter`.

    No I/O until :meth:`run`. ``consumer_factory`` builds the consumer from its librdkafka
    configuration (``confluent_kafka.Consumer`` by default; a fake in unit tests).
    """

    def __init__(
        self,
        settings: Settings,
        writer: SessionWriter,
        consumer_factory: ConsumerFactory | None = None,
        *,
        backoff: Backoff | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.topic = settings.topics.billing_sessions
        self.group = f"{settings.app_id}-sink"
        self._settings = settings
        self._writer = writer
        self._factory: ConsumerFactory = consumer_factory or Consumer
        self._backoff = backoff or Backoff()
        self._overrides = dict(consumer_overrides or {})
        self._batch_size = settings.sink_batch_size
        self._batch_seconds = settings.sink_batch_seconds
        self._consumer: KafkaConsumer | None = None
        self._closing = False
        self._buffer: dict[int, _Block] = {}
        self._buffer_since = 0.0  # monotonic time of the oldest buffered message
        self._pending: _Batch | None = None
        self._retry_at = 0.0
        self._paused = False
        self._repause = False
        self._assigned: set[int] = set()
        self._committed: dict[int, int] = {}
        self._start_offsets: dict[int, int] = {}
        self._message_errors_logged: dict[int, float] = {}
        self._started = threading.Event()
        self._has_assignment = threading.Event()

    # -- public ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume, write and commit until ``stop`` is set; then finish the batch in hand and close.

        An exception other than a ClickHouse write error (which is retried) closes the
        consumer without committing and propagates: the next run re-reads from the last commit.
        """
        consumer = self._open()
        try:
            while not stop.is_set():
                if self._pending is not None:
                    self._wait_for_retry(consumer, stop)
                    if self._pending is not None and not stop.is_set():
                        self._flush(consumer)
                    continue
                self._poll(consumer, self._poll_timeout())
                if self._due():
                    self._take_batch()
                    self._flush(consumer)
            self._finish(consumer)
        finally:
            self.close()
            log.info(
                "sink stopped",
                extra=fields(group=self.group, topic=self.topic, committed=dict(sorted(self._committed.items()))),
            )

    def close(self) -> None:
        """Close the consumer if :meth:`run` has not (idempotent); leaves the group without committing.

        Call it from the thread that ran :meth:`run`, or after it returned; to stop a running
        sink, set its stop event.
        """
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._closing = True  # the revoke callbacks run by close() only drop, never commit
            consumer.close()

    def wait_started(self, timeout: float | None = None) -> bool:
        """True once :meth:`run` has subscribed (for tests and start-up reporting)."""
        return self._started.wait(timeout)

    def wait_assigned(self, timeout: float | None = None) -> bool:
        """True once the group has assigned this sink at least one partition."""
        return self._has_assignment.wait(timeout)

    def committed_offsets(self) -> dict[int, int]:
        """The offsets this sink committed, by partition (the next offset to read); safe from any thread."""
        return dict(self._committed)

    # -- consuming -------------------------------------------------------------------------

    def _open(self) -> KafkaConsumer:
        config = consumer_config(self._settings, self.group, **self._overrides)
        consumer = self._factory(config)
        self._consumer = consumer
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info(
            "sink started",
            extra=fields(
                group=self.group,
                topic=self.topic,
                bootstrap=self._settings.kafka_bootstrap,
                batch_size=self._batch_size,
                batch_seconds=self._batch_seconds,
            ),
        )
        self._started.set()
        return consumer

    def _poll_timeout(self) -> float:
        if not self._buffer:
            return _POLL_SECONDS
        remaining = self._buffer_since + self._batch_seconds - time.monotonic()
        return max(0.0, min(_POLL_SECONDS, remaining))

    def _buffered(self) -> int:
        return sum(b.messages for b in self._buffer.values())

    def _due(self) -> bool:
        buffered = self._buffered()
        if buffered >= self._batch_size:
            return True
        return buffered > 0 and time.monotonic() >= self._buffer_since + self._batch_seconds

    def _poll(self, consumer: KafkaConsumer, timeout: float) -> None:
        """Read up to what the batch still has room for (rebalance callbacks run in here)."""
        room = max(1, self._batch_size - self._buffered())
        invalid = 0
        for message in consumer.consume(num_messages=room, timeout=timeout):
            error = message.error()
            if error is not None:
                self._message_error(error)
                continue
            invalid += self._add(message)
        if invalid:
            SINK_INVALID.inc(invalid)

    def _add(self, message: KafkaMessage) -> int:
        """Buffer ``message``; returns 1 if it is not a valid record (logged, skipped), else 0."""
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return 0
        decoded = self._decode(message.value())
        record = None if decoded is None or isinstance(decoded, str) else decoded
        if isinstance(decoded, str):
            log.warning(
                self.invalid_message,
                extra=fields(where=f"{self.topic}[{partition}]@{offset}", reason=str(decoded)[:500]),
            )
        ts_type, ts_ms = message.timestamp()
        emitted_at = ts_ms / 1000 if ts_type != _TIMESTAMP_NOT_AVAILABLE and ts_ms > 0 else None
        if not self.timestamps_are_final:
            emitted_at = None
        if not self._buffer:
            self._buffer_since = time.monotonic()
        block = self._buffer.get(partition)
        if block is None:
            block = self._buffer[partition] = _Block(partition, first=offset, last=offset)
        block.add(offset, record, emitted_at, "" if record is None else self._record_key(record))
        return 1 if isinstance(decoded, str) else 0

    # -- what a message holds (overridden by sinks of other topics: consumers/plan_sinks.py) -----

    #: Whether a message's Kafka timestamp is when its record became final (final-to-queryable metric).
    timestamps_are_final: bool = True
    #: The failpoint between insert and commit (pipeline/infra/failpoints.py): one name per kind of sink.
    after_insert_point: str = "sink.after_insert"
    invalid_message: str = (
        "skipped an invalid billing-sessions message: it is the stream workers' own output and cannot be "
        "re-emitted, so it is counted (metering_sink_invalid_records_total) and its offset committed; "
        "if this repeats, check the workers' version against the sink's"
    )

    def _decode(self, value: bytes | None) -> BillingSessionRecord | str | None:
        """The record, why the message is invalid (str), or None for a valid message with nothing to store."""
        return decode_record(value)

    def _record_key(self, record: BillingSessionRecord) -> str:
        """What makes two records of a block copies of each other."""
        return record.billing_session_id

    def _message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise SinkError(
                f"the consumer of {self.topic} (group {self.group}) hit a fatal Kafka error: {error}; "
                "restart the sink (it re-reads from the last commit)"
            ) from KafkaException(error)
        now = time.monotonic()
        if now - self._message_errors_logged.get(error.code(), -_MESSAGE_ERROR_LOG_SECONDS) >= (
            _MESSAGE_ERROR_LOG_SECONDS
        ):
            self._message_errors_logged[error.code()] = now
            log.warning(
                "Kafka consumer error (librdkafka retries by itself; logged once per 30 s per code)",
                extra=fields(group=self.group, topic=self.topic, error=str(error)),
            )

    # -- flushing --------------------------------------------------------------------------

    def _take_batch(self) -> None:
        """Step 1: the buffer becomes the pending batch before any I/O."""
        self._pending = _Batch(blocks=self._buffer)
        self._buffer = {}

    def _flush(self, consumer: KafkaConsumer, *, retrying: bool = True) -> bool:
        """Steps 2-4 for the pending batch; on failure keep it, pause, schedule a retry."""
        batch = self._pending
        if batch is None:
            return True
        batch.attempts += 1
        try:
            rows = self._write(batch)
            failpoints.hit(self.after_insert_point)  # tests: a crash between the insert and the commit
            committed_at = self._commit(consumer, batch)
        except ClickHouseWriteError as exc:
            self._failed(consumer, batch, exc, code=exc.code, transient=exc.transient, step="insert", retrying=retrying)
            return False
        except KafkaException as exc:
            self._failed(consumer, batch, exc, code=None, transient=True, step="commit", retrying=retrying)
            return False
        self._pending = None
        self._succeeded(consumer, batch, rows, committed_at)
        return True

    def _write(self, batch: _Batch) -> int:
        """Step 2: one insert per partition, ascending; returns the rows the batch holds."""
        rows = 0
        for partition in sorted(batch.blocks):
            block = batch.blocks[partition]
            rows += len(block.records)
            if block.inserted:
                continue
            if block.records:
                started = time.perf_counter()
                try:
                    failpoints.hit("sink.insert", lambda why: ClickHouseWriteError(why, code=None, transient=True))
                    self._writer.insert(block.records, block.token(self.topic))
                except ClickHouseWriteError as exc:
                    raise ClickHouseWriteError(
                        f"{block.where(self.topic)}: {exc}", code=exc.code, transient=exc.transient
                    ) from exc
                SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
                SINK_BATCH_ROWS.observe(len(block.records))
            block.inserted = True
        return rows

    def _commit(self, consumer: KafkaConsumer, batch: _Batch) -> float:
        """Step 3: synchronous commit of ``last + 1`` per partition, ascending; each result checked."""
        offsets = [TopicPartition(self.topic, p, batch.blocks[p].last + 1) for p in sorted(batch.blocks)]
        for tp in offsets:
            previous = self._committed.get(tp.partition)
            if previous is not None and tp.offset <= previous:
                raise SinkError(
                    f"refusing to commit {self.topic}[{tp.partition}]@{tp.offset}: offset {previous} was already "
                    "committed and offsets must increase (a bug in the sink; restart it to re-read from the commit)"
                )
        if not offsets:
            return time.time()
        result = consumer.commit(offsets=offsets, asynchronous=False)
        refused = [tp for tp in result or [] if tp.error is not None]
        if refused:
            raise KafkaException("; ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}: {tp.error}" for tp in refused))
        committed_at = time.time()
        self._committed = {**self._committed, **{tp.partition: tp.offset for tp in offsets}}  # readers get a snapshot
        return committed_at

    def _succeeded(self, consumer: KafkaConsumer, batch: _Batch, rows: int, committed_at: float) -> None:
        """Step 4: metrics, lag, and the end of an outage."""
        SINK_ROWS.inc(rows)
        SINK_LAST_SUCCESS.set(committed_at)
        for block in batch.blocks.values():
            for emitted_at in block.emitted_at:
                FINAL_TO_QUERYABLE_SECONDS.observe(max(0.0, committed_at - emitted_at))
        if batch.attempts > 1:
            log.info(
                "ClickHouse writes recovered: the kept batch is written and committed",
                extra=fields(group=self.group, topic=self.topic, attempts=batch.attempts, rows=rows),
            )
        self._sync_pause(consumer)
        self._update_lag(consumer, fresh=False)
        log.debug(
            "flushed",
            extra=fields(
                topic=self.topic,
                rows=rows,
                messages=batch.messages,
                duplicates=sum(b.duplicates for b in batch.blocks.values()),
                committed={p: b.last + 1 for p, b in sorted(batch.blocks.items())},
            ),
        )

    def _failed(
        self,
        consumer: KafkaConsumer,
        batch: _Batch,
        exc: Exception,
        *,
        code: int | None,
        transient: bool,
        step: str,
        retrying: bool,
    ) -> None:
        if step == "insert":
            SINK_FAILURES.inc()
        delay = self._backoff.delay(batch.attempts)
        self._retry_at = time.monotonic() + delay
        if retrying:
            what = "the batch is kept uncommitted, partitions are paused, and it is retried with the same tokens"
        else:
            what = "stopping, so nothing of the batch is committed: the next run re-reads it"
        if not transient:
            what += "; this error will not clear by itself: fix its cause (see error)"
        log.log(
            logging.WARNING if transient else logging.ERROR,
            f"ClickHouse sink {step} failed: {what}",
            extra=fields(
                group=self.group,
                topic=self.topic,
                blocks=[b.where(self.topic) for _, b in sorted(batch.blocks.items())],
                error=str(exc),
                code=code,
                attempt=batch.attempts,
                retry_in_s=round(delay, 3) if retrying else None,
            ),
        )
        self._sync_pause(consumer)
        self._update_lag(consumer, fresh=True)

    def _wait_for_retry(self, consumer: KafkaConsumer, stop: threading.Event) -> None:
        """Sleep out the backoff while polling (paused), so rebalances and the group stay served."""
        while not stop.is_set() and self._pending is not None:
            remaining = self._retry_at - time.monotonic()
            if remaining <= 0:
                return
            self._poll(consumer, min(remaining, _POLL_SECONDS))
            self._sync_pause(consumer)

    def _finish(self, consumer: KafkaConsumer) -> None:
        """On stop: write and commit the batch in hand once; during an outage, commit nothing."""
        if self._pending is None and self._buffer:
            self._take_batch()
            self._flush(consumer, retrying=False)
        held = self._held_from()
        if held:
            log.warning(
                "sink stopping with uncommitted messages: nothing past the last commit is committed, the next run "
                "re-reads them",
                extra=fields(group=self.group, topic=self.topic, rereads_from=held),
            )

    def _held_from(self) -> dict[int, int]:
        """The first offset held (pending or buffered) per partition."""
        held: dict[int, int] = {}
        sources = [self._buffer] if self._pending is None else [self._pending.blocks, self._buffer]
        for blocks in sources:
            for p, block in blocks.items():
                held[p] = min(held.get(p, block.first), block.first)
        return dict(sorted(held.items()))

    def _sync_pause(self, consumer: KafkaConsumer) -> None:
        """Paused exactly while a failed batch is pending (and newly assigned partitions too)."""
        want = self._pending is not None
        if want and (not self._paused or self._repause):
            consumer.pause(consumer.assignment())
            self._paused, self._repause = True, False
        elif not want and self._paused:
            consumer.resume(consumer.assignment())
            self._paused = False

    # -- lag -------------------------------------------------------------------------------

    def _update_lag(self, consumer: KafkaConsumer, *, fresh: bool) -> None:
        """Lag = high watermark - the first offset not yet durable in ClickHouse, per assigned partition.

        After a flush only what the consumer knows locally is used (positions, the watermark of
        the last fetch): asking the broker costs a round trip per partition. During an outage
        (``fresh``) the broker is asked, as paused partitions fetch nothing.
        """
        partitions = sorted(self._assigned)
        if not partitions:
            return
        held = self._held_from()
        try:
            positions = {tp.partition: tp.offset for tp in consumer.position(self._topic_partitions(partitions))}
            for p in partitions:
                start: int | None = held.get(p, positions.get(p, -1))
                if start is not None and start < 0:
                    start = self._start_offset(consumer, p) if fresh else None
                if start is None:
                    continue
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=1.0, cached=not fresh)
                if high >= 0:
                    CONSUMER_LAG.labels(self.group, self.topic, str(p)).set(max(0, high - start))
        except KafkaException as exc:
            log.debug("consumer lag not updated", extra=fields(topic=self.topic, error=str(exc)))

    def _topic_partitions(self, partitions: list[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in partitions]

    def _start_offset(self, consumer: KafkaConsumer, partition: int) -> int | None:
        """Where the group starts reading a partition it has not read from yet (asked once per assignment)."""
        if partition not in self._start_offsets:
            (committed,) = consumer.committed(self._topic_partitions([partition]), timeout=1.0)
            if committed.offset >= 0:
                self._start_offsets[partition] = committed.offset
            else:
                low, _ = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=1.0)
                if low < 0:
                    return None
                self._start_offsets[partition] = low
        return self._start_offsets[partition]

    # -- rebalances ------------------------------------------------------------------------

    def _on_assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        added = sorted(tp.partition for tp in partitions)
        self._assigned.update(added)
        if self._pending is not None:
            self._repause = True
        log.info("partitions assigned", extra=fields(group=self.group, topic=self.topic, partitions=added))
        if self._assigned:
            self._has_assignment.set()

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, {tp.partition for tp in partitions}, write=True)

    def _on_lost(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, {tp.partition for tp in partitions}, write=False)

    def _release(self, consumer: KafkaConsumer, gone: set[int], *, write: bool) -> None:
        """Give up partitions: write and commit their buffered data once if healthy, else drop it uncommitted.

        Healthy means no failed batch is pending and the sink is not closing (``close`` revokes
        everything, also after a crash): otherwise a commit here could skip the failed batch.
        """
        healthy = self._pending is None and not self._closing
        buffered = {p: self._buffer.pop(p) for p in sorted(gone & self._buffer.keys())}
        pending: dict[int, _Block] = {}
        if self._pending is not None:
            pending = {p: self._pending.blocks.pop(p) for p in sorted(gone & self._pending.blocks.keys())}
            if not self._pending.blocks:
                self._pending = None
        self._assigned -= gone
        if self._paused:
            # librdkafka keeps a partition's pause across a reassignment: given up paused, it would
            # come back paused, with no failed batch left whose success resumes it, and never be read
            consumer.resume(self._topic_partitions(sorted(gone)))
            if self._pending is None:
                self._sync_pause(consumer)
        if write and healthy and buffered and self._write_once(consumer, _Batch(blocks=buffered)):
            buffered = {}
        dropped = {p: b.first for p, b in sorted({**buffered, **pending}.items())}
        if dropped:
            log.info(
                "dropped the uncommitted data of partitions given up; the next owner re-reads it",
                extra=fields(group=self.group, topic=self.topic, rereads_from=dropped),
            )
        if self._closing:
            return
        self._committed = {p: o for p, o in self._committed.items() if p not in gone}
        for p in gone:
            self._start_offsets.pop(p, None)
            with contextlib.suppress(KeyError):  # never set for this partition
                CONSUMER_LAG.remove(self.group, self.topic, str(p))
        log.info(
            "partitions revoked" if write else "partitions lost",
            extra=fields(group=self.group, topic=self.topic, partitions=sorted(gone)),
        )

    def _write_once(self, consumer: KafkaConsumer, batch: _Batch) -> bool:
        """Steps 2-4 for the data of revoked partitions, once, while they are still ours."""
        try:
            rows = self._write(batch)
            committed_at = self._commit(consumer, batch)
        except (ClickHouseWriteError, KafkaException) as exc:
            if isinstance(exc, ClickHouseWriteError):
                SINK_FAILURES.inc()
            log.warning(
                "could not write the buffered data of revoked partitions",
                extra=fields(group=self.group, topic=self.topic, error=str(exc)),
            )
            return False
        self._succeeded(consumer, batch, rows, committed_at)
        return True
