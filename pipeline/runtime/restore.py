"""Reading compacted changelog partitions to their end, committed records only, into state backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.kafka import KafkaSetupError
from pipeline.logs import fields
from pipeline.runtime.state import Backend
from pipeline.settings import Settings

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_SECONDS: Final = 600.0
#: Changes written to a backend at once while restoring.
CHUNK: Final = 10_000


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 60.0) -> tuple[int, int]:
    """Low and high (last stable, read committed) offsets; retried while a new topic's leader is elected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise KafkaSetupError(
                    f"cannot read the offsets of {topic} partition {partition} ({exc.args[0]}): check the brokers"
                ) from exc
            time.sleep(0.5)


def reader(settings: Settings, name: str) -> Consumer:
    """A group-less, read_committed consumer that reports the end of each partition."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-{name}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 16 << 20,
            **settings.kafka_config,
        }
    )


def restore(settings: Settings, backends: Mapping[tuple[str, int], Backend]) -> dict[tuple[str, int], int]:
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
