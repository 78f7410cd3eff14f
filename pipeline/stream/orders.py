"""`metering orders`: the order processor, one writer per account partition (console.md section 3).

A processor on the stream runtime (``pipeline.runtime``), as the balance processor is: per batch,
the order states and invoices (billing-orders), the ``funds_added`` of paid orders (billing-plans),
dead letters, the changelog of every changed account and the consumed offsets commit in one Kafka
transaction. So a crash anywhere never loses an order, never issues a second invoice for one,
never renumbers and never credits funds twice: the aborted batch is read again from the last
commit and the restored state treats what it already applied as copies. The rules are
``pipeline.orders.book`` and the partition logic ``pipeline.stream.orders_partition``; this module
moves bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Final

from pipeline.infra import metrics
from pipeline.infra.kafka import ensure_topics, require_co_partitioned, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.orders.events import encode as encode_order
from pipeline.orders.providers import BUILT_IN, PaymentProvider
from pipeline.runtime import Effects, PartitionStore, Record, Topology
from pipeline.runtime.command import processor_config, run_until_stopped
from pipeline.stream.balance_partition import Input
from pipeline.stream.orders_partition import OrderOutputs, OrderPartition
from pipeline.stream.records import encode as encode_record

log = logging.getLogger(__name__)

#: Compaction keeps only an account's last billing-orders record; nothing younger than this is
#: compacted, so the read-model sink (which reads within seconds) sees every record.
MIN_COMPACTION_LAG_MS: Final = str(7 * 24 * 3600 * 1000)
#: Orders do nothing on wall time alone: a tick is only the runtime's heartbeat.
TICK_SECONDS: Final = 5.0


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
    require_co_partitioned(settings, names, who="the order processor", key="account_id")


class OrderProcessor:
    """The accounts of one partition (``OrderPartition``) as a runtime processor (``pipeline.runtime``).

    Per batch: every message applied, then the order states, invoices, funds and dead letters
    produced and the changed records (an order, an account's head: ``orders_changelog``) written
    to the store; the runtime commits them with the offsets.
    """

    def __init__(
        self,
        settings: Settings,
        partition: int,
        store: PartitionStore,
        providers: Mapping[str, PaymentProvider],
    ) -> None:
        topics = settings.topics
        self.topics = topics
        self.store = store
        self.part = OrderPartition(
            partition,
            settings.partitions,
            orders_topic=topics.orders,
            accounts_topic=topics.accounts,
            providers=providers,
            seller=settings.invoice_seller,
        )
        upgraded = self.part.restore(store.items())
        log.info("order partition restored", extra=fields(partition=partition, accounts=len(self.part.books)))
        for account in upgraded:
            log.info(
                "order changelog in the old layout: rewriting it as one record per order in the next transaction",
                extra=fields(partition=partition, account=account, orders=len(self.part.books[account].orders)),
            )

    def process(self, records: Sequence[Record], now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        out = OrderOutputs()
        for r in records:
            self.part.apply(Input(r.topic, r.partition, r.offset, r.value or None), now_ms, out)
        topics = self.topics
        for state in out.states:
            effects.produce(topics.orders, state.account_id.encode(), encode_order(state))
        for document in out.documents:
            effects.produce(topics.orders, document.account_id.encode(), encode_order(document))
        for money in out.money:
            effects.produce(topics.plans, money.app_id.encode(), encode_record(money))
        for dead in out.dead:
            effects.produce(topics.dlq, None, encode_record(dead))
        self._write_changes()
        effects.on_commit.append(lambda: _observe(out))

    def tick(self, now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        self._write_changes()  # an account restored from the old layout is rewritten here if no input came

    def _write_changes(self) -> None:
        for key, value in self.part.take_changes():
            if value is None:
                self.store.delete(key)
            else:
                self.store.put(key, value)

    def close(self) -> None:
        pass


def topology(settings: Settings, providers: Mapping[str, PaymentProvider] | None = None) -> Topology:
    """`billing-orders` leads the assignment, `billing-accounts` (co-partitioned by account id) follows."""
    known = dict(BUILT_IN if providers is None else providers)

    def open_partition(partition: int, store: PartitionStore, now_ms: int) -> OrderProcessor:
        return OrderProcessor(settings, partition, store, known)

    topics = settings.topics
    # The partition holds every account's book itself: the memory store keeps no copy.
    return Topology(
        "orders",
        (topics.orders, topics.accounts),
        changelog_topic(settings),
        open_partition,
        retain=False,
        watch_lag=False,
    )


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
    wait_for_broker(settings)
    setup_topics(settings)
    transactional_id = f"{settings.app_id}-orders-{instance}"
    config = processor_config(
        settings,
        role="orders",
        group=group_id(settings),
        transactional_id=transactional_id,
        static_member=True,  # a restarted instance takes its partitions back at once
        state_dir=settings.data_dir / "orders-state" / transactional_id,
        tick_seconds=TICK_SECONDS,
    )
    return run_until_stopped(
        settings,
        config,
        [topology(settings)],
        name="order",
        metrics_port=metrics_port,
        on_batch=lambda _, seconds: metrics.ORDER_BATCH_SECONDS.observe(seconds),
        on_abort=metrics.ORDER_ABORTS.inc,
        fenced_exit=1,
    )
