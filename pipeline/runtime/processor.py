"""What a stream processor is to the runtime: a per-partition object fed batches and wall-clock ticks.

The runtime (``pipeline.runtime.engine``) owns Kafka: consumer group, transactions, changelogs,
restore, rebalances. A processor owns the logic of one partition number of its topology's input
topics and never touches Kafka: it reads and writes its :class:`~pipeline.runtime.state.PartitionStore`
and appends output records to :class:`Effects`. docs/stream-runtime.md says how to write one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.runtime.state import PartitionStore


class Record:
    """One consumed input message: where it is in the log and its bytes."""

    __slots__ = ("key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes, *, key: bytes | None = None, timestamp: int = 0
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.value = value
        self.key = key
        #: The record's Kafka timestamp (ms; the producer's send time unless the topic says otherwise).
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Record({self.topic}[{self.partition}]@{self.offset}, {len(self.value)} bytes)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.topic, self.partition, self.offset, self.value, self.key) == (
            other.topic,
            other.partition,
            other.offset,
            other.value,
            other.key,
        )

    __hash__ = None  # type: ignore[assignment]


#: An output record: ``(topic, key, value)``. Keyed records go to the key's partition (murmur2),
#: unkeyed ones to any.
Output = tuple[str, bytes | None, bytes]


@dataclass(slots=True)
class Effects:
    """What one transaction writes besides state: output records, and what to do once it committed."""

    outputs: list[Output] = field(default_factory=list)
    #: Called in order after the commit (metrics, gauges, logs): never for an aborted transaction.
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.outputs.append((topic, key, value))


class PartitionProcessor(Protocol):
    """The logic of one partition number of a topology's inputs.

    Created by the topology's factory once the partition's state is restored; dropped (``close``)
    when the partition is revoked or a transaction aborts, and then created again from the
    committed state. Everything it does between two commits is thrown away on an abort, so it
    needs no undo of its own.
    """

    def process(self, records: Sequence[Record], now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        """Apply ``records`` (this partition's, in log order per topic) at wall time ``now_ms``.

        ``lagging`` names the input topics of the partition with records not processed before
        this batch (in it, or still in the log): a partition's event-time clock may wait for them.
        """
        ...

    def tick(self, now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        """Wall time passes (every ``tick_seconds``, with or without input): idle partitions may act on it."""
        ...

    def close(self) -> None:
        """The partition leaves this process (revoked, lost, or rebuilt after an abort): release gauges."""
        ...


class ProcessorFactory(Protocol):
    def __call__(self, partition: int, store: PartitionStore, now_ms: int) -> PartitionProcessor: ...


@dataclass(frozen=True)
class Topology:
    """One kind of partition processor and the topics it reads.

    ``inputs`` are co-partitioned (same partition count, keyed alike): partition ``p`` of all of
    them goes to one processor. The consumer group assigns ``inputs[0]`` (cooperative-sticky)
    and the runtime adds partition ``p`` of the others to whoever holds ``inputs[0]``'s ``p``.
    ``changelog`` is the compacted topic that makes the store durable, partition ``p`` for
    partition ``p``.
    """

    name: str
    inputs: tuple[str, ...]
    changelog: str
    open: ProcessorFactory
    #: Keep the committed state in the store (memory or disk) for ``PartitionStore.get``; a
    #: processor that holds all of its state itself says False and the memory store keeps none.
    retain: bool = True
    #: The processors use ``lagging`` (an event-time clock over several inputs, idleness on ticks).
    #: False: they get an empty set and the runtime never asks the broker for log ends.
    watch_lag: bool = True

    @property
    def leader(self) -> str:
        return self.inputs[0]
