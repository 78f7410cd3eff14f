"""Review reproduction (branch `review`): the order processor stops for good once an account's book
outgrows one Kafka record.

Real broker, the order processor as a child process (`metering orders process`). An account that
has bought funds 1,000 times works; after some 800 more, its changelog record passes 1,000,000
bytes, produce() raises MSG_SIZE_TOO_LARGE inside the transaction, the processor aborts, rewinds
and fails the same way again and again: no funds for anyone on that partition (another account's
order included). Fixed on branch orders-log (one changelog record per order): the test asserts the fix.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.contract.events import FundsAdded
from pipeline.infra.kafka import partition_of, producer_config
from pipeline.infra.settings import Settings
from pipeline.orders.events import OrderCreated
from tests.processes import ChildProcesses
from tests.support import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "acct-heavy"


def _neighbour(partitions: int) -> str:
    """Another account whose orders share ACCOUNT's partition."""
    wanted = partition_of(ACCOUNT.encode(), partitions)
    return next(f"acct-{i}" for i in range(10_000) if partition_of(f"acct-{i}".encode(), partitions) == wanted)


def _order(account: str) -> bytes:
    seed = uuid.uuid4().hex
    return msgspec.json.encode(
        OrderCreated(
            event_id=f"created-{seed}",
            occurred_at=datetime.now(UTC),
            account_id=account,
            app_id=f"{account}-support-bot",
            order_id=f"order-{seed}-{'x' * 16}",
            amount="100.00",
            currency="USD",
            payment_method="manual",
            requested_by="auth0|6543a1b2c3d4e5f6a7b8c9d0",
        )
    )


class FundsCounter:
    """funds_added records (committed) on billing-plans, per account."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"review-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(settings.topics.plans, p, 0) for p in range(settings.partitions)])
        self.counts: dict[str, int] = {}

    def poll(self) -> dict[str, int]:
        for m in self.consumer.consume(10_000, timeout=0.5):
            if m.error() is None and m.value():
                record = msgspec.json.decode(m.value())
                if record.get("type") == "funds_added":
                    funds = msgspec.convert(record, FundsAdded)
                    self.counts[funds.account_id] = self.counts.get(funds.account_id, 0) + 1
        return self.counts


def test_orders_keep_being_paid_after_an_account_has_many(settings: Settings, order_processors: ChildProcesses) -> None:
    producer = Producer(producer_config(settings))
    counter = FundsCounter(settings)
    try:
        _run(settings, order_processors, producer, counter)
    finally:
        counter.consumer.close()


def _run(settings: Settings, orders: ChildProcesses, producer: Producer, counter: FundsCounter) -> None:
    orders.spawn("process", "--metrics-port", "0")

    def send(account: str, n: int) -> None:
        for _ in range(n):
            producer.produce(settings.topics.orders, _order(account), account.encode())
            producer.poll(0)
        producer.flush(30)

    send(ACCOUNT, 1000)
    wait_until(lambda: counter.poll().get(ACCOUNT, 0) == 1000, 180, "the first 1,000 orders to be funded", every=1)
    send(ACCOUNT, 900)
    neighbour = _neighbour(settings.partitions)
    send(neighbour, 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        counter.poll().get(ACCOUNT, 0) < 1900 or counter.counts.get(neighbour, 0) < 1
    ):
        time.sleep(1)
    aborts = orders.logs().count("transaction aborted")
    assert counter.counts.get(neighbour, 0) == 1, (counter.counts, f"{aborts} aborted transactions")
    assert counter.counts.get(ACCOUNT, 0) == 1900, (counter.counts, f"{aborts} aborted transactions")
