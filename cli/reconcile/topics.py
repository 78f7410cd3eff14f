"""Reading the input topics up to the high watermarks taken at the start, as the workers read them.

What the workers dead-letter (invalid, too far ahead, misrouted) is counted and left out; what
retention deleted is noted, so sessions that may depend on it are left alone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Final

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from rich.console import Console

from cli.reconcile.period import ReconcileError
from pipeline.contract.decode import decode_event
from pipeline.contract.events import PlanChanged, Rejection
from pipeline.infra.kafka import KafkaSetupError, consumer_config
from pipeline.infra.progress import FileProgress, OnProgress
from pipeline.infra.settings import Settings
from pipeline.rules.config import MINUTE
from pipeline.stream.partition import place

#: Without a message for this long while messages are still expected, the read fails.
STALL_SECONDS: Final = 60.0


@dataclass
class TopicDump:
    """What :func:`dump_topics` read: counts, and what retention may have taken."""

    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    watermarks: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    complete_from_ms: int | None = None
    plans_truncated: bool = False
    plan_timeouts: list[int] = field(default_factory=list)


def dump_topics(
    settings: Settings,
    out: IO[bytes],
    *,
    now_ms: int,
    console: Console | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> TopicDump:
    """Write the valid events of the input topics, up to the high watermarks taken now, as lines.

    Nothing is committed and no consumer group is joined (partitions are assigned). Messages
    are read ``read_committed``, as the workers read them. Each is checked as the workers check
    it: decoded against the time it was received (its Kafka timestamp) and placed by topic and
    partition; billing-plans contributes its ``plan_changed`` events (idle timeouts). On a
    terminal, a large read shows a progress bar over the messages to read.
    """
    consumer = KafkaConsumer(
        consumer_config(
            settings, f"{settings.app_id}-reconcile", **{"enable.partition.eof": True, "enable.auto.commit": False}
        )
    )
    dump = TopicDump()
    try:
        remaining = _watermarks(consumer, settings, dump)
        consumer.assign([TopicPartition(t, p, dump.watermarks[(t, p)][0]) for t, p in remaining])
        total = sum(high - dump.watermarks[key][0] for key, high in remaining.items())
        reading = _Reading(consumer, remaining, _Filter(settings, out, dump), now_ms, stall_seconds)
        with FileProgress(console or Console(stderr=True), total, "reading input topics", unit="messages") as shown:
            reading.run(settings, shown)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"reading the input topics from Kafka at {settings.kafka_bootstrap} failed ({exc}): check "
            "METERING_KAFKA_BOOTSTRAP and that the brokers are up, or reconcile from an archive (--archive FILE)"
        ) from exc
    finally:
        consumer.close()
    dump.complete_from_ms = _complete_from(dump, reading.first_seen, settings, now_ms)
    return dump


class _Reading:
    """Consumes the assigned partitions until each reaches the offset it had when reconcile began."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        remaining: dict[tuple[str, int], int],
        events: _Filter,
        now_ms: int,
        stall_seconds: float,
    ) -> None:
        self.consumer = consumer
        self.remaining = remaining
        self.events = events
        self.now_ms = now_ms
        self.stall_seconds = stall_seconds
        #: When each partition's first retained message was received (what retention may have taken).
        self.first_seen: dict[tuple[str, int], int] = {}

    def run(self, settings: Settings, on_progress: OnProgress | None) -> None:
        remaining = self.remaining
        done = 0
        last_message = time.monotonic()
        while remaining:
            messages = self.consumer.consume(2000, timeout=1.0)
            if messages:
                last_message = time.monotonic()
            elif time.monotonic() - last_message > self.stall_seconds:
                raise ReconcileError(_stalled(settings, remaining, self.stall_seconds))
            for m in messages:
                done += self._take(m)
            if on_progress is not None:
                on_progress(done)

    def _take(self, m: Any) -> int:
        """Handle one message; 1 if it was input to read, else 0."""
        remaining = self.remaining
        key = (m.topic() or "", m.partition() or 0)
        error = m.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                if key in remaining and (m.offset() or 0) >= remaining[key]:
                    del remaining[key]
                return 0
            raise ReconcileError(f"reading {key[0]}[{key[1]}] from Kafka failed: {error}")
        high = remaining.get(key)
        offset = m.offset() or 0
        if high is None or offset >= high:
            remaining.pop(key, None)
            return 0
        received = _received_ms(m, self.now_ms)
        self.first_seen.setdefault(key, received)
        self.events.take(m.value() or b"", key[0], key[1], received)
        if offset + 1 >= high:
            del remaining[key]
        return 1


def _watermarks(consumer: KafkaConsumer, settings: Settings, dump: TopicDump) -> dict[tuple[str, int], int]:
    """Record (low, high) of every input partition; the partitions with something to read."""
    remaining: dict[tuple[str, int], int] = {}
    for topic in settings.topics.inputs:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaSetupError(
                f"input topic {topic!r} does not exist at {settings.kafka_bootstrap}: check the METERING_TOPIC_* "
                "settings (they must be the workers'), or reconcile from an archive (--archive FILE)"
            )
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15, cached=False)
            dump.watermarks[(topic, partition)] = (low, high)
            if high > low:
                remaining[(topic, partition)] = high
    return remaining


def _received_ms(message: Any, now_ms: int) -> int:
    kind, ts = message.timestamp()
    return int(ts) if kind and ts > 0 else now_ms


class _Filter:
    """Writes to ``out`` what the workers would meter of a message, and counts what they would not."""

    def __init__(self, settings: Settings, out: IO[bytes], dump: TopicDump) -> None:
        topics = settings.topics
        self.plans = topics.plans
        self.partitions = settings.partitions
        self.conversation_topics = frozenset({topics.turns, topics.transfers})
        self.alert_topics = frozenset({topics.alerts})
        self.out = out
        self.dump = dump

    def take(self, value: bytes, topic: str, partition: int, received_ms: int) -> None:
        if topic == self.plans:
            self._plan(value)
            return
        decoded = decode_event(value, received_ms)
        if isinstance(decoded, Rejection):
            self.dump.rejected[decoded.code] += 1
            return
        placed = place(
            decoded[1],
            topic,
            partition,
            self.partitions,
            conversation_topics=self.conversation_topics,
            alert_topics=self.alert_topics,
        )
        if isinstance(placed, Rejection):
            self.dump.rejected[placed.code] += 1
            return
        self._write(value)

    def _plan(self, value: bytes) -> None:
        """Idle timeouts come from ``plan_changed`` events, read as the workers' plan feed reads them."""
        decoded = decode_event(value, 2**62)
        if isinstance(decoded, Rejection) or not isinstance(decoded[1], PlanChanged):
            return
        minutes = decoded[1].idle_timeout_minutes
        if minutes is not None:
            self.dump.plan_timeouts.append(minutes * MINUTE)
        self._write(value)

    def _write(self, value: bytes) -> None:
        # A newline in valid JSON can only be whitespace, so the line stays the same event.
        self.out.write(value.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")
        self.dump.written += 1


def _complete_from(
    dump: TopicDump, first_seen: dict[tuple[str, int], int], settings: Settings, now_ms: int
) -> int | None:
    """The newest instant before which retention may have deleted conversation or alert input.

    For a partition whose low watermark is above 0, everything deleted was received before its
    first retained message; if nothing is retained, we cannot tell when, so ``now_ms``.
    """
    bound: int | None = None
    for (topic, partition), (low, high) in dump.watermarks.items():
        if low == 0:
            continue
        if topic == settings.topics.plans:
            dump.plans_truncated = True
            continue
        since = first_seen.get((topic, partition), now_ms) if high > low else now_ms
        bound = since if bound is None else max(bound, since)
    return bound


def _stalled(settings: Settings, remaining: dict[tuple[str, int], int], seconds: float) -> str:
    waiting = ", ".join(f"{t}[{p}] up to offset {high}" for (t, p), high in sorted(remaining.items())[:5])
    return (
        f"Kafka at {settings.kafka_bootstrap} delivered nothing for {seconds:.0f} s while {waiting} "
        "was still to be read. An open producer transaction holds read_committed readers back; wait for it "
        "to end and run again, or reconcile from an archive (--archive FILE)"
    )
