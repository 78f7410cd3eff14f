"""`metering worker`: the rules engine on the stream runtime; start several in one group to scale out.

Two topologies (``pipeline.runtime``): ``conversations`` reads turns and transfers (co-partitioned
by conversation id), ``alerts`` reads alert deliveries (by app id); each input partition has a
:class:`MeterProcessor` around its ``PartitionMeter``. Per batch the runtime commits the billing
sessions, late and dead-letter records, the changed conversation states and the input offsets in
one Kafka transaction. The changelog topics and their keys (``<partition><RS><key>``) are the
ones the faust worker wrote, so a deployment upgrades without a replay (README, "Upgrading").
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Final

from prometheus_client import Counter

from pipeline.infra import metrics
from pipeline.infra.kafka import ensure_topics, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.rules.config import SECOND, IdleTimeouts
from pipeline.runtime import (
    Effects,
    PartitionStore,
    ProcessorFactory,
    Record,
    Topology,
)
from pipeline.runtime.command import processor_config, run_until_stopped
from pipeline.runtime.state import RocksBackend
from pipeline.stream.archive import StoreArchive
from pipeline.stream.partition import CLOCK_KEY, BatchResult, PartitionMeter
from pipeline.stream.plans import PlanFeed
from pipeline.stream.records import encode

log = logging.getLogger(__name__)

CONVERSATIONS: Final = "conversations"
ALERTS: Final = "alerts"
TABLES: Final = (CONVERSATIONS, ALERTS)
EXIT_FENCED: Final = 75


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def changelog_topics(settings: Settings) -> list[str]:
    """The workers' compacted changelogs (the names the faust worker used: upgrades keep their state)."""
    return [changelog_topic(settings, table) for table in TABLES]


def setup_topics(settings: Settings) -> None:
    topics = settings.topics
    ensure_topics(settings, [topics.turns, topics.transfers, topics.alerts, topics.plans])
    ensure_topics(settings, [topics.billing_sessions, topics.dlq, topics.late])
    ensure_topics(settings, changelog_topics(settings), config={"cleanup.policy": "compact"})


def tick_seconds(settings: Settings) -> float:
    return max(0.2, min(5.0, settings.idle_partition_seconds / 3))


class MeterProcessor:
    """One input partition's ``PartitionMeter`` as a runtime processor (see ``pipeline.runtime.processor``)."""

    def __init__(
        self,
        settings: Settings,
        table: str,
        *,
        partition: int,
        store: PartitionStore,
        plans: PlanFeed,
        timeouts: IdleTimeouts,
    ) -> None:
        topics = settings.topics
        self.settings = settings
        self.table = table
        self.partition = partition
        self.store = store
        self.plans = plans
        self.prefix = f"{partition}\x1e"
        prefix = self.prefix.encode()
        on_disk = isinstance(store.backend, RocksBackend)
        self.meter = PartitionMeter(
            partition,
            settings.partitions,
            settings.rules,
            timeouts,
            conversation_topics=(topics.turns, topics.transfers) if table == CONVERSATIONS else (),
            alert_topics=(topics.alerts,) if table == ALERTS else (),
            archive=StoreArchive(store, self.prefix) if on_disk else None,
        )
        if on_disk:  # only what the meter works on: the archive stays on disk
            clock = store.get(prefix + CLOCK_KEY.encode())
            items = [*store.range(prefix + b"a", prefix + b"b"), *store.range(prefix + b"c", prefix + b"d")]
            items += [] if clock is None else [(prefix + CLOCK_KEY.encode(), clock)]
        else:
            items = [(k, v) for k, v in store.items() if k.startswith(prefix)]
        restored = {k[len(prefix) :].decode(): v for k, v in items}
        self.meter.restore(restored.items())
        self._clock: bytes | None = restored.get(CLOCK_KEY)
        self._skew_ms = int(settings.max_clock_skew_seconds * SECOND)
        self._idle_after_ms = int(settings.idle_partition_seconds * SECOND)
        log.debug(
            "partition meter loaded",
            extra=fields(kind=table, partition=partition, conversations=len(self.meter.meter.conversations)),
        )

    def process(self, records: Sequence[Record], now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        results = self.plans.drain_for(self.meter)
        results.append(self.meter.process(records, now_ms, self._skew_ms, lagging=lagging))
        self._emit(results, effects, len(records))

    def tick(self, now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        results = self.plans.drain_for(self.meter)
        if self.table == CONVERSATIONS:
            was_idle = self.meter.meter.partition.idle
            results.append(self.meter.idle_tick(now_ms, self._idle_after_ms, backlog=bool(lagging)))
            if self.meter.meter.partition.idle and not was_idle:
                log.debug("partition idle: its clock follows the wall clock", extra=fields(partition=self.partition))
            effects.on_commit.append(lambda: self._gauges(now_ms))
        self._emit(results, effects, 0)

    def close(self) -> None:
        if self.table == CONVERSATIONS:
            for gauge in (metrics.OPEN_CONVERSATIONS, metrics.PARTITION_CLOCK_DELAY):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(self.partition))

    def _emit(self, results: list[BatchResult], effects: Effects, received: int) -> None:
        topics = self.settings.topics
        store = self.store
        prefix = self.prefix
        for r in results:
            for session in r.sessions:
                effects.produce(topics.billing_sessions, session.app_id.encode(), encode(session))
            for late in r.late:
                effects.produce(topics.late, late.app_id.encode(), encode(late))
            for dead in r.dead:
                effects.produce(topics.dlq, None, encode(dead))
            for key, value in r.changes.items():
                if key == CLOCK_KEY:
                    if value == self._clock:
                        continue
                    self._clock = value
                k = (prefix + key).encode()
                if value is None:
                    store.delete(k)
                else:
                    store.put(k, value)
        if any(r.sessions or r.late or r.dead or r.received or r.duplicates for r in results):
            effects.on_commit.append(lambda: observe(results))

    def _gauges(self, now_ms: int) -> None:
        m = self.meter.meter
        metrics.OPEN_CONVERSATIONS.labels(str(self.partition)).set(m.open_conversations)
        clock = m.partition.clock
        if clock > 0:
            metrics.PARTITION_CLOCK_DELAY.labels(str(self.partition)).set(max(0.0, (now_ms - clock) / 1000))


def observe(results: Sequence[BatchResult]) -> None:
    """The metrics of committed results: per batch, never for an aborted one."""
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
        _count(
            metrics.CONVERSATION_SESSIONS,
            (
                ("billable", s.sessions_billable),
                ("non_interactive", s.sessions_non_interactive),
                ("test", s.sessions_test),
            ),
        )
        _count(
            metrics.BILLING_SESSIONS,
            (("usage", s.usage_sessions), ("voice", s.voice_sessions), ("alert", s.alert_sessions)),
        )
        _count(
            metrics.TRANSFER_ANOMALIES,
            (
                ("ended_without_start", s.transfers_ended_without_start),
                ("started_while_open", s.transfers_started_while_open),
                ("left_open", s.transfers_left_open),
            ),
        )


def _count(counter: Counter, by_label: Iterable[tuple[str, int]]) -> None:
    """Add each non-zero figure to the counter's series of its label (a zero creates no series)."""
    for label, n in by_label:
        if n:
            counter.labels(label).inc(n)


def topologies(settings: Settings, plans: PlanFeed) -> list[Topology]:
    """Conversations (turns lead, transfers follow) and alerts, each partition a ``MeterProcessor``."""
    topics = settings.topics
    timeouts = IdleTimeouts(settings.rules)

    def opener(table: str) -> ProcessorFactory:
        def open_partition(partition: int, store: PartitionStore, now_ms: int) -> MeterProcessor:
            return MeterProcessor(settings, table, partition=partition, store=store, plans=plans, timeouts=timeouts)

        return open_partition

    return [
        Topology(
            CONVERSATIONS,
            (topics.turns, topics.transfers),
            changelog_topic(settings, CONVERSATIONS),
            opener(CONVERSATIONS),
            retain=False,
        ),
        Topology(
            ALERTS,
            (topics.alerts,),
            changelog_topic(settings, ALERTS),
            opener(ALERTS),
            retain=False,
        ),
    ]


def transactional_id(settings: Settings, instance: int | None) -> str:
    """Stable per instance number (a restarted instance fences its predecessor); else unique to this process."""
    suffix = str(instance) if instance is not None else uuid.uuid4().hex[:12]
    return f"{settings.app_id}-worker-{suffix}"


def _observe_batch(events: int, seconds: float) -> None:
    metrics.WORKER_BATCH_EVENTS.observe(events)
    metrics.WORKER_BATCH_SECONDS.observe(seconds)


def run_worker(settings: Settings, metrics_port: int | None = None, instance: int | None = None) -> int:
    """Run until SIGINT/SIGTERM: the batch in hand is committed, then the worker leaves the group."""
    wait_for_broker(settings)
    setup_topics(settings)
    tid = transactional_id(settings, instance)
    config = processor_config(
        settings,
        role="worker",
        group=settings.app_id,
        transactional_id=tid,
        static_member=instance is not None,
        store=settings.state_store,
        state_dir=settings.data_dir / "worker-state" / tid,
        tick_seconds=tick_seconds(settings),
        max_record_bytes=8 << 20,
        # a worker that dies mid-batch holds back read_committed readers of its outputs this long
        transaction_timeout_ms=20_000,
    )
    plans = PlanFeed(settings)
    plans.start()
    try:
        return run_until_stopped(
            settings,
            config,
            topologies(settings, plans),
            name="worker",
            metrics_port=metrics_port,
            on_batch=_observe_batch,
            on_abort=metrics.WORKER_ABORTS.inc,
            fenced_exit=EXIT_FENCED,
        )
    finally:
        plans.stop()
        if instance is None:
            shutil.rmtree(config.state_dir, ignore_errors=True)  # no later process has this id: nobody resumes from it
