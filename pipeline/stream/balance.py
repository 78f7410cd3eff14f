"""`metering balance`: per-app prepaid balances from `billing-plans` and `billing-sessions` (R12).

A Kafka read-process-write loop with transactions: per batch, the balance alerts, the
`balance-state` snapshots, the changelog of every changed app and the consumed offsets are
committed atomically, so a crash, a restart or a rebalance never charges a session twice
nor loses or repeats an alert. On assignment a partition's app states are restored from the
changelog (read committed, to the end) before any of its input is applied: replays of inputs
already counted are then duplicates of what the state remembers. Money logic is all in
``pipeline.balance``; this module moves bytes and keeps metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pipeline import failpoints, metrics
from pipeline.balance.ledger import BalanceConfig
from pipeline.events import BalanceSnapshot
from pipeline.kafka import KafkaSetupError, admin, consumer_config, ensure_topics, producer_config, wait_for_broker
from pipeline.logs import fields
from pipeline.settings import Settings
from pipeline.stream.balance_partition import AppRecord, BalancePartition, Input, Outputs, encode

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_SECONDS: Final = 300.0
COMMIT_ATTEMPTS: Final = 5
STATUSES: Final = ("active", "low", "depleted")
LAG_EVERY_SECONDS: Final = 1.0
#: A changelog shard holds an app's sessions of one day and start hour (about 20 bytes each):
#: room for some 400,000 sessions an hour for one app.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024


class BalanceFencedError(RuntimeError):
    """Another balance processor with the same transactional id took over: this one must stop."""


def _abortable(message: str) -> KafkaException:
    """What a failing ``balance.before_commit`` failpoint raises: an error that aborts the transaction."""
    return KafkaException(KafkaError(KafkaError._STATE, message, txn_requires_abort=True))


def changelog_topic(settings: Settings) -> str:
    """The processor's internal compacted changelog (like faust's tables: named after the app id)."""
    return f"{settings.app_id}-balance-changelog"


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-balance"


def setup_topics(settings: Settings) -> None:
    """Create what is missing; refuse input and changelog topics that are not co-partitioned."""
    topics = settings.topics
    ensure_topics(settings, [topics.plans, topics.billing_sessions, topics.balance_alerts, topics.dlq, topics.late])
    ensure_topics(settings, [topics.balance_state], config={"cleanup.policy": "compact"})
    ensure_topics(
        settings,
        [changelog_topic(settings)],
        config={"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)},
    )
    names = (topics.plans, topics.billing_sessions, changelog_topic(settings))
    found = admin(settings).list_topics(timeout=15).topics
    counts = {name: len(found[name].partitions) for name in names}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise KafkaSetupError(
            f"the balance needs co-partitioned topics keyed by app_id, but {listed} partitions: "
            "give them the same partition count (METERING_PARTITIONS)"
        )


@dataclass(frozen=True, slots=True)
class _Gauges:
    app_id: str
    account_id: str
    currency: str
    balance: float
    status: str
    unpriced: int
    #: after the app's first funds or session: before, it is being set up, has no status and pages nobody
    opened: bool


@dataclass
class _Exported:
    """The label values of an app's gauges, to remove them when they change or the app leaves."""

    account_id: str
    currency: str


class BalanceProcessor:
    """One balance worker: ``run(stop)`` until ``stop`` is set, then close cleanly."""

    def __init__(self, settings: Settings, instance: int = 0) -> None:
        self.settings = settings
        self.instance = instance
        self.topics = settings.topics
        self.changelog = changelog_topic(settings)
        self.config = BalanceConfig(
            dedupe_horizon_ms=settings.rules.dedupe_horizon_ms, unlimited_plans=settings.unlimited_plans
        )
        self.parts: dict[int, BalancePartition] = {}
        self.partitions = settings.partitions
        self._exported: dict[str, _Exported] = {}
        self._app_partition: dict[str, int] = {}
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.committed_batches = 0
        self._lag_observed_at = 0.0

    # -- life cycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self.partitions = len(admin(s).list_topics(timeout=15).topics[self.topics.billing_sessions].partitions)
        transactional_id = f"{s.app_id}-balance-{self.instance}"
        self.producer = Producer(
            producer_config(
                s,
                **{
                    "transactional.id": transactional_id,
                    "client.id": transactional_id,
                    "linger.ms": 5,
                    "transaction.timeout.ms": 60000,
                    "message.max.bytes": MAX_RECORD_BYTES,
                },
            )
        )
        self.producer.init_transactions(60)
        self.consumer = Consumer(
            consumer_config(
                s,
                group_id(s),
                **{
                    "partition.assignment.strategy": "range",  # co-partitioned: partition p of both topics together
                    "group.instance.id": transactional_id,  # a restarted instance takes its partitions back at once
                    "session.timeout.ms": 15000,
                    "client.id": transactional_id,
                },
            )
        )
        self.consumer.subscribe(
            [self.topics.billing_sessions, self.topics.plans],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "balance processor started",
            extra=fields(group=group_id(s), transactional_id=transactional_id, changelog=self.changelog),
        )
        try:
            while not stop.is_set():
                self._step()
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _step(self) -> None:
        assert self.consumer is not None
        messages = self.consumer.consume(self.settings.batch_size, timeout=self.settings.batch_seconds)
        self._observe_lag()
        now_ms = int(time.time() * 1000)
        if not messages and not any(part.has_due(now_ms) for part in self.parts.values()):
            return
        started = time.monotonic()
        try:
            out = self._transact(messages, now_ms)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise BalanceFencedError(
                    f"the balance transaction failed fatally ({error}): another processor with transactional id "
                    f"{self.settings.app_id}-balance-{self.instance} may be running; this one stops"
                ) from exc
            log.warning(
                "balance transaction aborted: processing again from the last commit", extra=fields(error=str(error))
            )
            self._abort_and_rewind()
            return
        metrics.BALANCE_BATCH_SECONDS.observe(time.monotonic() - started)
        self.committed_batches += 1
        self._observe(out)

    # -- one transaction -------------------------------------------------------------------

    def _transact(self, messages: Sequence[Message], now_ms: int) -> Outputs:
        assert self.producer is not None
        assert self.consumer is not None
        producer = self.producer
        out = Outputs()
        offsets: dict[tuple[str, int], int] = {}
        producer.begin_transaction()
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            part = self.parts.get(partition)
            if part is None:
                continue  # not ours any more: the new owner reads it from the committed offset
            part.apply(Input(topic, partition, offset, m.value()), now_ms, out)
            offsets[(topic, partition)] = offset + 1
        for part in self.parts.values():
            part.due(now_ms, out)
        topics = self.topics
        changed: list[BalanceSnapshot] = []
        for alert in out.alerts:
            self._produce(topics.balance_alerts, alert.app_id.encode(), encode(alert))
        for dead in out.dead:
            self._produce(topics.dlq, None, encode(dead))
        for late in out.late:
            self._produce(topics.late, late.app_id.encode(), encode(late))
        for number, part in self.parts.items():
            snapshots, records = part.take_changes(now_ms, self.settings.unlimited_plans)
            for snap in snapshots:
                self._produce(topics.balance_state, snap.app_id.encode(), encode(snap))
                self._app_partition[snap.app_id] = number
            for key, value in records:
                self._produce(self.changelog, key, value, partition=number)
            changed.extend(snapshots)
        if offsets:
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                self.consumer.consumer_group_metadata(),
                30,
            )
        failpoints.hit("balance.before_commit", _abortable)
        self._commit()
        self._export(changed)
        return out

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        assert self.producer is not None
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value, key)
                else:
                    self.producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

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
                log.warning("balance commit failed, retrying", extra=fields(error=str(error), attempt=attempt))

    def _abort_and_rewind(self) -> None:
        """Drop the batch: abort its transaction, restore the states and go back to the committed offsets."""
        assert self.producer is not None
        assert self.consumer is not None
        metrics.BALANCE_ABORTS.inc()
        try:
            self.producer.abort_transaction(60)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise BalanceFencedError(f"cannot abort the balance transaction: {exc.args[0]}") from exc
        assignment = self.consumer.assignment()
        committed = self.consumer.committed(assignment, timeout=30)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self._restore(sorted(self.parts))

    # -- rebalances ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        by_topic = {tp.topic: {p.partition for p in partitions if p.topic == tp.topic} for tp in partitions}
        if len({frozenset(v) for v in by_topic.values()}) > 1:
            log.error(
                "billing-sessions and billing-plans partitions assigned apart: balances need both of a partition",
                extra=fields(assignment={t: sorted(v) for t, v in by_topic.items()}),
            )
        self._restore([n for n in numbers if n not in self.parts])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        for number in numbers:
            self.parts.pop(number, None)
        for app_id in [a for a, p in self._app_partition.items() if p in numbers]:
            self._unexport(app_id)
            del self._app_partition[app_id]
        group = group_id(self.settings)
        for tp in partitions:
            _remove(metrics.CONSUMER_LAG.remove, group, tp.topic, str(tp.partition))
        if numbers:
            log.info("balance partitions revoked", extra=fields(partitions=sorted(numbers)))

    def _restore(self, numbers: list[int]) -> None:
        """Read the changelog partitions to the end (committed records only) into fresh partition states."""
        if not numbers:
            return
        now_ms = int(time.time() * 1000)
        items = read_changelog(self.settings, self.changelog, numbers)
        for number in numbers:
            part = BalancePartition(
                number,
                self.partitions,
                plans_topic=self.topics.plans,
                sessions_topic=self.topics.billing_sessions,
                config=self.config,
            )
            part.restore(items[number], now_ms)
            self.parts[number] = part
            for app_id, record in part.apps.items():
                self._app_partition[app_id] = number
                self._export_state(record)
            log.info("balance partition restored", extra=fields(partition=number, apps=len(part.apps)))

    # -- metrics ---------------------------------------------------------------------------

    def _observe(self, out: Outputs) -> None:
        for kind, n in out.charged.items():
            metrics.SESSIONS_CHARGED.labels(kind).inc(n)
        for (kind, currency), amount in out.cost.items():
            metrics.COST.labels(kind, currency).inc(float(amount))
        for (kind, currency), amount in out.reversed.items():
            metrics.COST_REVERSED.labels(kind, currency).inc(float(amount))
        for name, n in out.duplicates.items():
            metrics.BALANCE_DUPLICATES.labels(name).inc(n)
        for (topic, code), n in out.invalid.items():
            metrics.EVENTS_INVALID.labels(topic, code).inc(n)
        for alert in out.alerts:
            metrics.BALANCE_ALERTS.labels(alert.state).inc()
        if out.late:
            metrics.BALANCE_SESSIONS_LATE.inc(len(out.late))
        if out.backdated:
            metrics.BALANCE_PLANS_BACKDATED.inc(out.backdated)

    def _observe_lag(self) -> None:
        """Consumer lag of the partitions in hand, once a second (the lag alert covers the processor)."""
        now = time.monotonic()
        if self.consumer is None or not self.parts or now - self._lag_observed_at < LAG_EVERY_SECONDS:
            return
        self._lag_observed_at = now
        group = group_id(self.settings)
        topics = (self.topics.billing_sessions, self.topics.plans)
        try:
            for tp in self.consumer.position([TopicPartition(t, p) for p in sorted(self.parts) for t in topics]):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    metrics.CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(max(0, high - tp.offset))
        except KafkaException as exc:
            log.debug("consumer lag not updated", extra=fields(error=str(exc)))

    def _export(self, snapshots: list[BalanceSnapshot]) -> None:
        for snap in snapshots:
            self._set_gauges(
                _Gauges(
                    snap.app_id,
                    snap.account_id,
                    snap.currency,
                    float(snap.balance),
                    snap.status,
                    snap.unpriced_sessions,
                    self._opened(snap.app_id),
                )
            )

    def _opened(self, app_id: str) -> bool:
        part = self.parts.get(self._app_partition.get(app_id, -1))
        record = None if part is None else part.apps.get(app_id)
        return record is None or record.balance.opened

    def _export_state(self, record: AppRecord) -> None:
        state = record.balance
        self._set_gauges(
            _Gauges(
                state.app_id,
                state.account_id,
                state.currency,
                float(state.balance),
                state.status,
                state.unpriced,
                state.opened,
            )
        )

    def _set_gauges(self, g: _Gauges) -> None:
        app_id, account_id, currency, status = g.app_id, g.account_id, g.currency, g.status
        previous = self._exported.get(app_id)
        if previous is not None and (previous.account_id, previous.currency) != (account_id, currency):
            self._unexport(app_id)
        self._exported[app_id] = _Exported(account_id, currency)
        metrics.APP_BALANCE.labels(account_id, app_id, currency).set(g.balance)
        for name in STATUSES:
            if g.opened:
                metrics.APP_BALANCE_STATUS.labels(account_id, app_id, name).set(1 if name == status else 0)
            else:
                _remove(metrics.APP_BALANCE_STATUS.remove, account_id, app_id, name)
        metrics.APP_SESSIONS_UNPRICED.labels(account_id, app_id).set(g.unpriced)

    def _unexport(self, app_id: str) -> None:
        exported = self._exported.pop(app_id, None)
        if exported is None:
            return
        _remove(metrics.APP_BALANCE.remove, exported.account_id, app_id, exported.currency)
        for name in STATUSES:
            _remove(metrics.APP_BALANCE_STATUS.remove, exported.account_id, app_id, name)
        _remove(metrics.APP_SESSIONS_UNPRICED.remove, exported.account_id, app_id)


def _remove(remove: Callable[..., None], *labels: str) -> None:
    with contextlib.suppress(KeyError):
        remove(*labels)


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


def read_changelog(settings: Settings, topic: str, numbers: list[int]) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """Every committed record of the changelog partitions ``numbers``, in log order, per partition."""
    items: dict[int, list[tuple[bytes, bytes | None]]] = {n: [] for n in numbers}
    reader = Consumer(
        consumer_config(
            settings,
            f"{settings.app_id}-balance-restore",
            **{"enable.partition.eof": True, "partition.assignment.strategy": "range"},
        )
    )
    try:
        pending = set(numbers)
        for n in numbers:
            low, high = watermarks(reader, topic, n)
            if high <= low:
                pending.discard(n)
        reader.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in pending])
        deadline = time.monotonic() + RESTORE_TIMEOUT_SECONDS
        while pending:
            if time.monotonic() > deadline:
                raise KafkaSetupError(
                    f"could not read changelog {topic} partitions {sorted(pending)} to the end within "
                    f"{RESTORE_TIMEOUT_SECONDS:.0f} s: check the brokers"
                )
            for m in reader.consume(5000, timeout=1.0):
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition() or 0)
                        continue
                    raise KafkaException(error)
                key = m.key()
                if key is not None:
                    items[m.partition() or 0].append((key, m.value()))
    finally:
        reader.close()
    return items


def run_balance(settings: Settings, metrics_port: int | None = None, instance: int = 0) -> int:
    """`metering balance`: run until SIGINT/SIGTERM; the batch in hand is committed or aborted."""
    import signal  # noqa: PLC0415 - only the command installs handlers

    wait_for_broker(settings)
    setup_topics(settings)
    port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port, settings.api_host)
    log.info("balance metrics", extra=fields(url=f"http://{settings.api_host}:{port}/metrics"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    processor = BalanceProcessor(settings, instance)
    try:
        processor.run(stop)
    except BalanceFencedError as exc:
        log.error("balance processor stopped", extra=fields(error=str(exc)))
        return 1
    return 0
