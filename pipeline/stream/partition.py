"""Metering of one input partition: raw messages in, output records and state changes out.

The worker's processor (``pipeline.stream.worker``) stays a thin shell: it hands each batch of one
partition to a ``PartitionMeter`` and writes back what comes out. Nothing here touches Kafka, so the
whole message-level behaviour (DLQ, routing, late, dedupe, persistence) is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec

from pipeline.contract.decode import decode_event
from pipeline.contract.events import (
    DEFAULT_TOPIC_OF_TYPE,
    AgentTransfer,
    AlertDelivered,
    BillingSessionRecord,
    ConversationTurn,
    DeadLetter,
    Event,
    LateRecord,
    Rejection,
)
from pipeline.contract.partitioner import partition_of
from pipeline.rules.config import IdleTimeouts, RulesConfig
from pipeline.rules.meter import (
    NEVER,
    Archive,
    ClockWire,
    ConversationState,
    ConversationWire,
    Meter,
    MeterStats,
    Outcome,
    PartitionClock,
)
from pipeline.runtime.processor import Record
from pipeline.stream.records import billing_session_record, dead_letter, late_record

CLOCK_KEY: Final = "p"
#: Conversation ids whose partition is remembered (then forgotten all at once: a bounded cache).
HOMES_KEPT: Final = 100_000
_TURN: Final = ConversationTurn
_TRANSFER: Final = AgentTransfer
_APPLIED: Final = Outcome.APPLIED

Metered = ConversationTurn | AgentTransfer | AlertDelivered

_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(ConversationWire).decode
_decode_clock = msgspec.msgpack.Decoder(ClockWire).decode
_decode_int = msgspec.msgpack.Decoder(int).decode
_decode_archived_state = msgspec.msgpack.Decoder(tuple[int, ConversationWire]).decode
_decode_archived_alert = msgspec.msgpack.Decoder(tuple[int, int]).decode


#: The parts of a Kafka message the meter needs: the runtime's record.
Message = Record


@dataclass
class BatchResult:
    sessions: list[BillingSessionRecord] = field(default_factory=list)
    late: list[LateRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: Persisted state: key -> encoded value, or None to delete.
    changes: dict[str, bytes | None] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    late_by_topic: dict[str, int] = field(default_factory=dict)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)
    stats: MeterStats = field(default_factory=MeterStats)


class PartitionMeter:
    """A Meter for one partition number, with the message-level rules around it.

    ``conversation_topics`` carry turns and transfers keyed by conversation id; ``alert_topics``
    alerts keyed by app id. An event on a partition other than the one its key hashes to
    (Java-compatible murmur2) is rejected: its conversation's state lives elsewhere, and
    metering it here would split one conversation across two meters.
    """

    def __init__(
        self,
        partition: int,
        partitions: int,
        config: RulesConfig,
        timeouts: IdleTimeouts,
        *,
        conversation_topics: Iterable[str] = (),
        alert_topics: Iterable[str] = (),
        archive: Archive | None = None,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.meter = Meter(config, timeouts, track_changes=True, archive=archive)
        self._conversation_topics = frozenset(conversation_topics)
        self._alert_topics = frozenset(alert_topics)
        self.last_event_wall_ms: int | None = None
        self.plans_applied = 0
        #: Highest event time seen per input topic since this meter was loaded.
        self.topic_high: dict[str, int] = {}
        #: The partition each recent conversation id hashes to: one murmur2 per conversation, not per event.
        self._homes: dict[str, int] = {}

    def restore(self, items: Iterable[tuple[str, bytes]]) -> None:
        clock = PartitionClock()
        conversations: list[ConversationState] = []
        alerts: list[tuple[str, int]] = []
        for key, value in items:
            if key == CLOCK_KEY:
                clock = PartitionClock.from_wire(_decode_clock(value))
            elif key[0] == "c":
                conversations.append(ConversationState.from_wire(_decode_state(value)))
            elif key[0] == "a":
                alerts.append((key, _decode_int(value)))
            elif key[0] == "z":  # archived on disk before (pipeline.stream.archive): in memory now
                archived = key[2:]
                if archived[0] == "c":
                    conversations.append(ConversationState.from_wire(_decode_archived_state(value)[1]))
                else:
                    alerts.append((archived, _decode_archived_alert(value)[1]))
        self.meter.restore(clock, conversations, alerts)

    def process(  # noqa: PLR0912 - the batch loop of the compiled worker, one branch per message outcome
        self, messages: Iterable[Message], now_ms: int, max_clock_skew_ms: int, *, lagging: Iterable[str] = ()
    ) -> BatchResult:
        """Apply a batch of this partition's messages in order; outputs and state changes out.

        ``lagging`` names input topics with messages in the log not metered before this batch.
        The partition's clock does not pass how far such a topic has got: turns and transfers
        are fetched separately, and one running ahead must not make the other's events late
        (the clock of several inputs is the minimum of theirs).
        """
        result = BatchResult()
        meter = self.meter
        wall_ceiling = now_ms + max_clock_skew_ms
        waiting = tuple(lagging)
        high = self.topic_high
        meter.clock_ceiling = self._ceiling(wall_ceiling, waiting)
        received_at = datetime.fromtimestamp(now_ms / 1000, UTC)
        before = _copy(meter.stats)
        received = result.received
        partition, partitions = self.partition, self.partitions
        conversation_topics = self._conversation_topics
        homes = self._homes
        for m in messages:
            topic = m.topic
            received[topic] = received.get(topic, 0) + 1
            decoded = decode_event(m.value, now_ms)
            if type(decoded) is Rejection:
                self._reject(result, m, decoded, received_at)
                continue
            t, event = decoded  # type: ignore[misc]
            # The common case inline: a turn or transfer on its topic and partition.
            if (type(event) is _TURN or type(event) is _TRANSFER) and topic in conversation_topics:
                conversation_id = event.conversation_id
                home = homes.get(conversation_id, -1)
                if home < 0:
                    if len(homes) >= HOMES_KEPT:
                        homes.clear()
                    home = homes[conversation_id] = partition_of(conversation_id.encode(), partitions)
                placed: Metered | Rejection = event if home == partition else self._place(m, event)
            else:
                placed = self._place(m, event)
            if isinstance(placed, Rejection):
                self._reject(result, m, placed, received_at)
                continue
            if t > high.get(topic, NEVER):
                high[topic] = t
                if topic in waiting:
                    meter.clock_ceiling = self._ceiling(wall_ceiling, waiting)
            outcome = meter.apply(t, placed)
            if outcome is _APPLIED:
                continue
            if outcome is Outcome.DUPLICATE:
                result.duplicates[topic] = result.duplicates.get(topic, 0) + 1
            elif outcome is Outcome.LATE:
                result.late_by_topic[topic] = result.late_by_topic.get(topic, 0) + 1
                late = meter.late.pop()
                result.late.append(late_record(m.value, late, topic=topic, partition=m.partition, offset=m.offset))
        if received:
            self.last_event_wall_ms = now_ms
        self._collect(result, before)
        return result

    def _ceiling(self, wall_ceiling: int, waiting: tuple[str, ...]) -> int:
        """The clock's ceiling: the wall clock plus skew, and how far each waited-for input has got."""
        ceiling = wall_ceiling
        clock = self.meter.partition.clock
        for topic in waiting:
            at = self.topic_high.get(topic, clock)
            ceiling = min(ceiling, at)
        return ceiling

    def idle_tick(self, now_ms: int, idle_after_ms: int, *, backlog: bool) -> BatchResult:
        """A tick from the wall clock: an idle partition's clock follows it (R9).

        Idle means nothing arrived for ``idle_after_ms`` and nothing is waiting: a partition
        with a backlog is only slow to read, and following the wall clock then would finalize
        sessions whose next events are already in the log.
        """
        result = BatchResult()
        before = _copy(self.meter.stats)
        if self.last_event_wall_ms is None or backlog:
            self.last_event_wall_ms = now_ms
        if now_ms - self.last_event_wall_ms >= idle_after_ms:
            self.meter.idle_tick(now_ms)
        self._collect(result, before)
        return result

    def plan_changed(self, app_id: str, at_ms: int, idle_timeout_ms: int | None, event_id: str = "") -> BatchResult:
        result = BatchResult()
        before = _copy(self.meter.stats)
        self.meter.plan_changed(app_id, at_ms, idle_timeout_ms, event_id)
        self._collect(result, before)
        return result

    def _collect(self, result: BatchResult, before: MeterStats) -> None:
        meter = self.meter
        sessions, _ = meter.drain()
        result.sessions.extend(billing_session_record(s) for s in sessions)
        upserts, removed = meter.take_changes()
        for key, value in upserts.items():
            result.changes[key] = _encode(value.to_wire() if isinstance(value, ConversationState) else value)
        for key in removed:
            result.changes[key] = None
        result.changes[CLOCK_KEY] = _encode(meter.partition.to_wire())
        after = meter.stats
        result.stats = MeterStats(**{k: v - getattr(before, k) for k, v in after.as_dict().items()})

    def _reject(self, result: BatchResult, m: Message, rejection: Rejection, received_at: datetime) -> None:
        result.invalid[(m.topic, rejection.code)] = result.invalid.get((m.topic, rejection.code), 0) + 1
        letter = dead_letter(
            m.value, rejection, topic=m.topic, partition=m.partition, offset=m.offset, received_at=received_at
        )
        result.dead.append(letter)

    def _place(self, m: Message, event: Event) -> Metered | Rejection:
        """The event if it is on the topic and partition its type and key call for."""
        return place(
            event,
            m.topic,
            m.partition,
            self.partitions,
            conversation_topics=self._conversation_topics,
            alert_topics=self._alert_topics,
        )


def place(
    event: Event,
    topic: str,
    partition: int,
    partitions: int,
    *,
    conversation_topics: frozenset[str],
    alert_topics: frozenset[str],
) -> Metered | Rejection:
    """The event if it is on a topic and partition its type and key call for, else why not.

    Shared with `metering reconcile`, which must leave out exactly what the workers dead-letter.
    """
    if isinstance(event, ConversationTurn | AgentTransfer):
        if topic not in conversation_topics:
            return _wrong_topic(event, topic)
        key = event.conversation_id
    elif isinstance(event, AlertDelivered):
        if topic not in alert_topics:
            return _wrong_topic(event, topic)
        key = event.app_id
    else:
        return _wrong_topic(event, topic)
    expected = partition_of(key.encode(), partitions)
    if expected != partition:
        return Rejection(
            "misrouted",
            f"misrouted: key {key!r} belongs on partition {expected}, not {partition}; produce with "
            "the key events.md names and a Java-compatible murmur2 partitioner (librdkafka: murmur2_random)",
        )
    return event


def _wrong_topic(event: Event, topic: str) -> Rejection:
    kind = event.__struct_config__.tag
    return Rejection(
        "wrong_topic",
        f"a {kind} event does not belong on topic {topic!r}: produce it to the topic of its type "
        f"(by default {DEFAULT_TOPIC_OF_TYPE[str(kind)]!r}, see docs/events.md)",
    )


def _copy(stats: MeterStats) -> MeterStats:
    return MeterStats(**stats.as_dict())
