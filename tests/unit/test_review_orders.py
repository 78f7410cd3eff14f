"""Review reproductions (branch `review`): the order processor and the money it moves.

Driven as the processor drives its partition (``OrderPartition`` + ``take_changes``), and the
changelog records produced with the producer settings ``pipeline.stream.orders`` uses (no broker
needed: librdkafka refuses an oversized record before sending it). Both fixed on branch orders-log: the
tests now assert the fixed behaviour.
"""

from __future__ import annotations

import uuid

import msgspec
from confluent_kafka import Producer

from pipeline.contract.events import ms_to_datetime
from pipeline.infra.kafka import partition_of, producer_config
from pipeline.infra.settings import Settings
from pipeline.orders.events import OrderCreated
from pipeline.orders.providers import BUILT_IN, PaymentOutcome
from pipeline.rules.billing import derived_id
from pipeline.stream.balance_partition import Input
from pipeline.stream.orders_partition import OrderOutputs, OrderPartition
from tests.support import T0

ACCOUNT = "acct-7f3c2a"
PARTITIONS = 6
P = partition_of(ACCOUNT.encode(), PARTITIONS)


def _order(n: int) -> OrderCreated:
    """An order as the console publishes it (ids derived from a fresh Idempotency-Key)."""
    seed = f"{ACCOUNT}|POST /api/v1/apps/support-bot-eu/funds|{uuid.uuid4()}"
    return OrderCreated(
        event_id=derived_id(seed + "|order-created"),
        occurred_at=ms_to_datetime(T0 + n * 3_600_000),
        account_id=ACCOUNT,
        app_id="support-bot-eu",
        order_id=derived_id(seed + "|order"),
        amount="100.00",
        currency="USD",
        payment_method="manual",
        requested_by="auth0|6543a1b2c3d4e5f6a7b8c9d0",
    )


def _partition(providers: dict[str, object] | None = None) -> OrderPartition:
    return OrderPartition(
        P,
        PARTITIONS,
        orders_topic="billing-orders",
        accounts_topic="billing-accounts",
        providers=providers or BUILT_IN,  # type: ignore[arg-type]
        seller="Metering Ltd",
    )


def test_an_account_with_two_thousand_paid_orders_still_gets_its_funds() -> None:
    """The changelog holds an account's whole book (every order, every payment id) in one record. Past about
    1,700 paid orders it is over librdkafka's message.max.bytes (1,000,000; the order processor sets no
    other): produce() raises MSG_SIZE_TOO_LARGE, which is not fatal, so OrderProcessor._step aborts, rewinds
    and tries the same batch again, for ever. Every account on that partition stops getting funds.
    (A daily top-up reaches it in under 5 years, an hourly auto-recharge in about 10 weeks.)"""
    part = _partition()
    out = OrderOutputs()
    for n in range(2000):
        part.apply(Input("billing-orders", P, n, msgspec.json.encode(_order(n))), T0 + 10**11, out)
    assert out.outcomes == {"applied": 2000}, (out.outcomes, out.dead[:1])
    # Fixed: one changelog record per order plus a head, none growing with the orders; every one of them is
    # produced (the single record of the old layout was the one that failed).
    records = part.take_changes()
    assert len(records) > 2000
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    # the order processor's producer (pipeline/stream/orders.py: OrderProcessor.run), minus the transaction
    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    try:
        for key, value in records:
            assert value is not None
            producer.produce("metering-orders-changelog", value, key, partition=P)
            producer.poll(0)
    finally:
        producer.purge()
    assert max(len(value or b"") for _, value in records) < 1_000_000
    assert max(len(value or b"") for _, value in records) < 4_096, "no record grows with the number of orders"
    restarted = _partition()
    restarted.restore(records)
    book = restarted.books[ACCOUNT]
    assert (len(book.orders), book.next_number) == (2000, 2001), "the book rebuilt from the records"


def test_a_copy_of_an_order_does_not_ask_the_payment_provider_again() -> None:
    """provider.start() ran before create_order() saw the order_id was known (orders_partition.apply): a copy
    of order_created (a console retry without a key reaching Kafka twice, a re-delivery after an aborted
    transaction) charged again unless the provider itself deduplicated by order_id. Fixed: a known order is
    a duplicate before any provider is asked."""
    calls: list[str] = []

    class Card:
        name = "card"

        def start(self, order: OrderCreated) -> PaymentOutcome | None:
            calls.append(order.order_id)
            return None

    part = _partition({"card": Card()})
    created = msgspec.structs.replace(_order(1), payment_method="card")
    out = OrderOutputs()
    for offset in (1, 2):
        part.apply(Input("billing-orders", P, offset, msgspec.json.encode(created)), T0 + 10**9, out)
    assert out.outcomes == {"applied": 1, "duplicate": 1}
    assert calls == [created.order_id], "asked to collect the same order once"
