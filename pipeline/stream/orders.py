"""`metering orders`: the order processor, one writer per account partition (console.md section 3).

A Kafka read-process-write loop with transactions, the balance processor's shape: per batch, the
order states and invoices (billing-orders), the ``funds_added`` of paid orders (billing-plans),
dead letters, the changelog of every changed account and the consumed offsets commit together.
So a crash anywhere never loses an order, never issues a second invoice for one, never renumbers
and never credits funds twice: the aborted batch is read again from the last commit and the
restored state treats what it already applied as copies. The rules are ``pipeline.orders.book``
and the partition logic ``pipeline.stream.orders_partition``; this module moves bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline import failpoints, metrics
from pipeline.kafka import KafkaSetupError, admin, consumer_config, ensure_topics, producer_config, wait_for_broker
from pipeline.logs import fields
from pipeline.orders.events import encode as encode_order
from pipeline.orders.providers import BUILT_IN, PaymentProvider
from pipeline.records import encode as encode_record
from pipeline.settings import Settings
from pipeline.stream.balance import read_changelog
from pipeline.stream.balance_partition import Input
from pipeline.stream.orders_partition import OrderOutputs, OrderPartition

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS: Final = 5
#: Compaction keeps only an account's last billing-orders record; nothing younger than this is
#: compacted, so the read-model sink (which reads within seconds) sees every record.
MIN_COMPACTION_LAG_MS: Final = str(7 * 24 * 3600 * 1000)


class OrdersFencedError(RuntimeError):
    """Another order processor with the same transactional id took over: this one must stop."""


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-orders-changelog"


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-orders"


def ensure_account_topics(settings: Settings) -> None:
    """billing-orders and billing-accounts: compacted, keyed by account (created if missing)."""
    ensure_topics(
        settings,
        [settings.topics.orders, settings.topics.accounts],
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": MIN_COMPACTION_LAG_MS},
    )


def setup_topics(settings: Settings) -> None:
    """The account topics, co-partitioned with the processor's changelog, and where it writes."""
    topics = settings.topics
    ensure_account_topics(settings)
    ensure_topics(settings, [topics.plans, topics.dlq])
    ensure_topics(settings, [changelog_topic(settings)], config={"cleanup.policy": "compact"})
    names = (topics.orders, topics.accounts, changelog_topic(settings))
    found = admin(settings).list_topics(timeout=15).topics
    counts = {name: len(found[name].partitions) for name in names}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise KafkaSetupError(
            f"the order processor needs co-partitioned topics keyed by account_id, but {listed} partitions: "
            "give them the same partition count (METERING_PARTITIONS)"
        )


class OrderProcessor:
    """One order processor: ``run(stop)`` until ``stop`` is set, then close cleanly."""

    def __init__(
        self, settings: Settings, instance: int = 0, providers: Mapping[str, PaymentProvider] | None = None
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.topics = settings.topics
        self.changelog = changelog_topic(settings)
        self.providers = dict(BUILT_IN if providers is None else providers)
        self.parts: dict[int, OrderPartition] = {}
        self.partitions = settings.partitions
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.transactional_id = f"{settings.app_id}-orders-{instance}"

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self.partitions = len(admin(s).list_topics(timeout=15).topics[self.topics.orders].partitions)
        self.producer = Producer(
            producer_config(
                s, **{"transactional.id": self.transactional_id, "client.id": self.transactional_id, "linger.ms": 5}
            )
        )
        self.producer.init_transactions(60)
        self.consumer = Consumer(
            consumer_config(
                s,
                group_id(s),
                **{
                    "partition.assignment.strategy": "range",  # co-partitioned: partition p of both topics together
                    "group.instance.id": self.transactional_id,
                    "session.timeout.ms": 15000,
                    "client.id": self.transactional_id,
                },
            )
        )
        self.consumer.subscribe(
            [self.topics.orders, self.topics.accounts],
            on_assign=lambda _, tps: self._restore(sorted({tp.partition for tp in tps} - set(self.parts))),
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info("order processor started", extra=fields(group=group_id(s), transactional_id=self.transactional_id))
        try:
            while not stop.is_set():
                self._step()
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _step(self) -> None:
        assert self.consumer is not None
        messages = self.consumer.consume(self.settings.batch_size, timeout=self.settings.batch_seconds)
        if not messages:
            return
        started = time.monotonic()
        try:
            out = self._transact(messages, int(time.time() * 1000))
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise OrdersFencedError(
                    f"the order transaction failed fatally ({error}): another processor with transactional id "
                    f"{self.transactional_id} may be running; this one stops"
                ) from exc
            log.warning(
                "order transaction aborted: processing again from the last commit", extra=fields(error=str(error))
            )
            self._abort_and_rewind()
            return
        metrics.ORDER_BATCH_SECONDS.observe(time.monotonic() - started)
        _observe(out)

    def _transact(self, messages: Sequence[Message], now_ms: int) -> OrderOutputs:
        """Apply a batch and commit its outputs, changelog and offsets in one transaction."""
        assert self.producer is not None
        assert self.consumer is not None
        out = OrderOutputs()
        offsets: dict[tuple[str, int], int] = {}
        self.producer.begin_transaction()
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
        topics = self.topics
        for state in out.states:
            self._produce(topics.orders, state.account_id.encode(), encode_order(state))
        for document in out.documents:
            self._produce(topics.orders, document.account_id.encode(), encode_order(document))
        for money in out.money:
            self._produce(topics.plans, money.app_id.encode(), encode_record(money))
        for dead in out.dead:
            self._produce(topics.dlq, None, encode_record(dead))
        for number, part in self.parts.items():
            for key, value in part.take_changes():
                self._produce(self.changelog, key, value, partition=number)
        if offsets:
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()], self.consumer.consumer_group_metadata(), 30
            )
        failpoints.hit("orders.before_commit", _abortable)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                self.producer.commit_transaction(60)
                break
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == COMMIT_ATTEMPTS:
                    raise
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

    def _abort_and_rewind(self) -> None:
        assert self.producer is not None
        assert self.consumer is not None
        metrics.ORDER_ABORTS.inc()
        try:
            self.producer.abort_transaction(60)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise OrdersFencedError(f"cannot abort the order transaction: {exc.args[0]}") from exc
        committed = self.consumer.committed(self.consumer.assignment(), timeout=30)
        for tp in committed:
            self.consumer.seek(
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
            )
        self._restore(sorted(self.parts))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for number in {tp.partition for tp in partitions}:
            self.parts.pop(number, None)

    def _restore(self, numbers: list[int]) -> None:
        """Read the changelog partitions to the end (committed records only) into fresh partition states."""
        if not numbers:
            return
        items = read_changelog(self.settings, self.changelog, numbers)
        for number in numbers:
            part = OrderPartition(
                number,
                self.partitions,
                orders_topic=self.topics.orders,
                accounts_topic=self.topics.accounts,
                providers=self.providers,
                seller=self.settings.invoice_seller,
            )
            part.restore(items[number])
            self.parts[number] = part
            log.info("order partition restored", extra=fields(partition=number, accounts=len(part.books)))


def _abortable(message: str) -> KafkaException:
    """What a failing ``orders.before_commit`` failpoint raises: an error that aborts the transaction."""
    return KafkaException(KafkaError(KafkaError._STATE, message, txn_requires_abort=True))


def _observe(out: OrderOutputs) -> None:
    for outcome, n in out.outcomes.items():
        metrics.ORDER_INPUTS.labels(outcome).inc(n)
    for state in out.states:
        if state.payment_status != "pending":
            metrics.ORDER_PAYMENTS.labels(state.payment_status).inc()
    for document in out.documents:
        metrics.ORDER_DOCUMENTS.labels(document.kind).inc()
    for (topic, code), n in out.invalid.items():
        metrics.EVENTS_INVALID.labels(topic, code).inc(n)


def run_orders(settings: Settings, metrics_port: int | None = None, instance: int = 0) -> int:
    """`metering orders`: run until SIGINT/SIGTERM; the batch in hand is committed or aborted."""
    import signal  # noqa: PLC0415 - only the command installs handlers

    wait_for_broker(settings)
    setup_topics(settings)
    port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port, settings.api_host)
    log.info("order metrics", extra=fields(url=f"http://{settings.api_host}:{port}/metrics"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        OrderProcessor(settings, instance).run(stop)
    except OrdersFencedError as exc:
        log.error("order processor stopped", extra=fields(error=str(exc)))
        return 1
    return 0
