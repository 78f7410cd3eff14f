"""The order processor upgrades a changelog of the old layout (one record per account) on a real broker.

The changelog is given an account's record exactly as the old processor wrote it (key ``account_id``,
the whole ``AccountOrders``); `metering orders process` starts on it, rewrites it as one record per order
plus a head (the old key tombstoned, in one transaction) and goes on: numbers continue, copies of what the
old record holds change nothing, and a restart restores from the new records.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline.infra.kafka import partition_of, producer_config
from pipeline.infra.settings import Settings
from pipeline.orders.book import AccountOrders, create_order
from pipeline.orders.events import OrderCreated, PaymentUpdated
from pipeline.orders.providers import BUILT_IN
from pipeline.stream import orders_changelog
from pipeline.stream.orders import changelog_topic, setup_topics
from tests.processes import ChildProcesses
from tests.support import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "acct-upgraded"


def _order(order_id: str, method: str = "manual") -> OrderCreated:
    return OrderCreated(
        event_id=f"created-{order_id}",
        occurred_at=datetime.now(UTC),
        account_id=ACCOUNT,
        app_id="support-bot",
        order_id=order_id,
        amount="10.00",
        currency="USD",
        payment_method=method,
    )


def _legacy_book() -> AccountOrders:
    """Three paid orders (INV-000001..3) and one pending bank transfer, as the old processor kept them."""
    book = AccountOrders(account_id=ACCOUNT)
    for i in range(3):
        created = _order(f"old-{i}")
        create_order(book, created, BUILT_IN["manual"].start(created), "Metering")
    create_order(book, _order("old-transfer", "transfer"), None, "Metering")
    assert book.next_number == 4
    return book


def _read(settings: Settings, topic: str, partitions: list[int]) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed record of ``topic``'s ``partitions``, to their ends."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"upgrade-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[bytes | None, bytes | None]] = []
        ended: set[int] = set()
        while len(ended) < len(partitions):
            for m in consumer.consume(1000, timeout=2):
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(m.partition() or 0)
                    continue
                out.append((m.key(), m.value()))
        return out
    finally:
        consumer.close()


def _invoices(settings: Settings) -> list[str]:
    records = _read(settings, settings.topics.orders, list(range(settings.partitions)))
    return sorted(
        decoded["invoice_id"]
        for _, value in records
        if value and (decoded := msgspec.json.decode(value)).get("type") == "invoice_issued"
    )


def _funds(settings: Settings) -> int:
    records = _read(settings, settings.topics.plans, list(range(settings.partitions)))
    return sum(1 for _, value in records if value and msgspec.json.decode(value).get("type") == "funds_added")


def test_an_old_changelog_record_is_rewritten_and_the_account_goes_on(
    settings: Settings, order_processors: ChildProcesses
) -> None:
    setup_topics(settings)
    p = partition_of(ACCOUNT.encode(), settings.partitions)
    old = _legacy_book()
    producer = Producer(producer_config(settings))
    producer.produce(changelog_topic(settings), msgspec.msgpack.encode(old), ACCOUNT.encode(), partition=p)
    producer.flush(30)

    def send(*records: OrderCreated | PaymentUpdated) -> None:
        for record in records:
            producer.produce(settings.topics.orders, msgspec.json.encode(record), ACCOUNT.encode())
        producer.flush(30)

    processor = order_processors.spawn("process", "--metrics-port", "0")
    confirmation = PaymentUpdated(
        event_id="bank-1",
        occurred_at=datetime.now(UTC),
        account_id=ACCOUNT,
        order_id="old-transfer",
        status="paid",
        provider="transfer",
        reference="TX-1",
    )
    send(_order("old-1"), confirmation, _order("new-1"))  # a copy of an old order, the old pending one paid, a new one
    wait_until(lambda: _invoices(settings) == ["INV-000004", "INV-000005"], 120, "the next two numbers", every=1)

    def latest() -> dict[bytes, bytes | None]:
        return {key or b"": value for key, value in _read(settings, changelog_topic(settings), [p])}

    wait_until(lambda: latest().get(ACCOUNT.encode(), b"") is None, 60, "the old record tombstoned", every=1)
    changelog = latest()
    assert orders_changelog.head_key(ACCOUNT) in changelog
    assert {orders_changelog.order_key(ACCOUNT, o) for o in [*old.orders, "new-1"]} <= set(changelog)
    assert _funds(settings) == 2, "the copy of an old order is not funded again"

    assert order_processors.stop(processor) == 0
    order_processors.spawn("process", "--metrics-port", "0")  # restored from the new records only
    send(_order("new-2"), _order("old-2"))
    wait_until(lambda: _invoices(settings)[-1:] == ["INV-000006"], 120, "the next number after a restart", every=1)
    assert _invoices(settings) == ["INV-000004", "INV-000005", "INV-000006"]
    assert _funds(settings) == 3
    assert "order changelog in the old layout" in order_processors.log_path(0).read_text()
    assert "order changelog in the old layout" not in order_processors.log_path(1).read_text(), "upgraded once"
