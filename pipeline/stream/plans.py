"""The plans' idle timeouts (R2, R12), read by every worker from the whole billing-plans topic.

Plans are few and every conversation partition may need any app's timeout, so each worker
keeps a full copy, like a global table, fed by a group-less consumer in a thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.balance.plans import TimeoutSchedule
from pipeline.contract.decode import decode_event
from pipeline.contract.events import PlanChanged, Rejection
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.stream.partition import BatchResult, PartitionMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TimeoutChange:
    app_id: str
    at_ms: int
    idle_timeout_ms: int | None
    event_id: str


class PlanFeed:
    """Collects idle-timeout changes; each partition meter applies the ones it has not seen."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._changes: list[TimeoutChange] = []
        self._schedule = TimeoutSchedule()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="plan-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def add(self, change: TimeoutChange) -> None:
        with self._lock:
            self._changes.append(change)

    def drain_for(self, meter: PartitionMeter) -> list[BatchResult]:
        """Apply to ``meter`` the changes it has not applied yet; their outputs must be emitted."""
        with self._lock:
            new = self._changes[meter.plans_applied :]
            meter.plans_applied = len(self._changes)
        return [meter.plan_changed(c.app_id, c.at_ms, c.idle_timeout_ms, c.event_id) for c in new]

    def _run(self) -> None:
        topic = self._settings.topics.plans
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.kafka_bootstrap,
                "group.id": f"{self._settings.app_id}-plan-feed",
                "enable.auto.commit": False,
                **self._settings.kafka_config,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                for message in consumer.consume(500, timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("plan feed read error", extra=fields(topic=topic, error=str(error)))
                        continue
                    self._read(message.value() or b"")
        except Exception:
            log.exception("plan feed stopped: idle timeouts from plans are not applied", extra=fields(topic=topic))
        finally:
            consumer.close()

    def _read(self, payload: bytes) -> None:
        decoded = decode_event(payload, 2**62)
        if isinstance(decoded, Rejection):
            return
        _, event = decoded
        if isinstance(event, PlanChanged):
            for change in self._schedule.add(event):  # from effective_at on; a replaced plan sets nothing
                self.add(TimeoutChange(*change))
