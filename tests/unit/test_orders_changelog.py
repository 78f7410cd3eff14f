"""The order processor's changelog layout: one record per order, a head per account, the upgrade of the old
one-record-per-account layout, and messages whose records would be too large dead-lettered whole.

Driven as the processor drives its partition (``OrderPartition``: ``apply``, ``take_changes``, ``restore``),
and through ``OrderProcessor`` with a memory store and ``Effects`` (no broker) where the runtime's side matters.
"""

from __future__ import annotations

import msgspec
import pytest

from pipeline.contract.events import AccountChanged, ms_to_datetime
from pipeline.infra.kafka import partition_of
from pipeline.infra.settings import Settings
from pipeline.orders.book import AccountOrders, create_order, payment_event_id, update_payment
from pipeline.orders.events import OrderCreated
from pipeline.orders.providers import BUILT_IN, PaymentOutcome
from pipeline.runtime import Effects, PartitionStore, Record
from pipeline.runtime.state import MemoryBackend
from pipeline.stream import orders_changelog, orders_partition
from pipeline.stream.orders import OrderProcessor
from pipeline.stream.orders_partition import OrderPartition
from tests.support import T0
from tests.unit.test_orders import ACCOUNT, ACCOUNTS, ORDERS, PARTITIONS, SELLER, Feed, order, partition, payment, run

P = partition_of(ACCOUNT.encode(), PARTITIONS)
#: The fields of the old layout's one record per account (AccountOrders as msgpack, key ``account_id``).
LEGACY_FIELDS = {
    "account_id",
    "billing_type",
    "billing_type_key",
    "account_events",
    "orders",
    "payments_seen",
    "next_number",
}


def _legacy_book() -> AccountOrders:
    """An account as the old processor kept it: paid, pending, refunded and failed orders, an account change."""
    book = AccountOrders(account_id=ACCOUNT)
    for i in range(3):
        created = order(f"old-{i}", t=T0 + i)
        create_order(book, created, BUILT_IN["manual"].start(created), SELLER)
    create_order(book, order("old-pending", method="transfer"), None, SELLER)
    create_order(book, order("old-failed", method="transfer"), None, SELLER)
    update_payment(book, payment("old-failed", "failed"), SELLER)
    update_payment(book, payment("old-1", "refunded", event_id="refund-old-1"), SELLER)
    book.account_events.add("acct-e1")
    book.billing_type_key = (T0 - 1000, "acct-e1")
    return book


def _legacy_record(book: AccountOrders) -> tuple[bytes, bytes]:
    value = msgspec.msgpack.encode(book)
    assert set(msgspec.msgpack.decode(value)) == LEGACY_FIELDS, "the old layout, field for field"
    return book.account_id.encode(), value


def _same_book(a: AccountOrders, b: AccountOrders) -> None:
    def orders(book: AccountOrders) -> dict[str, bytes]:
        return {order_id: msgspec.msgpack.encode(o) for order_id, o in book.orders.items()}

    assert orders(a) == orders(b)
    assert (a.billing_type, a.billing_type_key, a.next_number) == (b.billing_type, b.billing_type_key, b.next_number)
    assert (a.payments_seen, a.account_events) == (b.payments_seen, b.account_events)


# -- the layout -------------------------------------------------------------------------------------------------


def test_each_order_is_a_record_of_its_own_and_the_head_holds_the_numbers() -> None:
    feed = Feed()
    part = partition()
    out = run(part, [feed.message(order("a")), feed.message(order("b", method="transfer"))])
    assert out.outcomes == {"applied": 2}
    keys = sorted(k for k, _ in part.take_changes())
    assert keys == sorted(
        [
            orders_changelog.head_key(ACCOUNT),
            orders_changelog.order_key(ACCOUNT, "a"),
            orders_changelog.order_key(ACCOUNT, "b"),
            orders_changelog.seen_key(ACCOUNT, "payment", payment_event_id(ACCOUNT, "a", "manual")),
        ]
    ), "the manual provider's payment is seen too"
    run(part, [feed.message(payment("b", "paid"))])
    changed = dict(part.take_changes())
    assert set(changed) == {
        orders_changelog.head_key(ACCOUNT),
        orders_changelog.order_key(ACCOUNT, "b"),
        orders_changelog.seen_key(ACCOUNT, "payment", "paid-b"),
    }, "a payment rewrites its order and the head, not the account's other orders"
    head = msgspec.msgpack.decode(changed[orders_changelog.head_key(ACCOUNT)], type=orders_changelog.AccountHead)
    assert head.next_number == 3


def test_a_restore_from_the_records_continues_the_numbers_and_knows_every_copy() -> None:
    feed = Feed()
    first = partition()
    change = AccountChanged(
        event_id="e1", occurred_at=ms_to_datetime(T0 - 1), account_id=ACCOUNT, billing_type="prepaid"
    )
    log = [feed.message(change, ACCOUNTS), feed.message(order("a")), feed.message(order("t", method="transfer"))]
    confirmation = feed.message(payment("t", "paid"))
    run(first, [*log, confirmation])
    records = first.take_changes()
    second = partition()
    second.restore(records)
    _same_book(first.books[ACCOUNT], second.books[ACCOUNT])
    out = run(second, [*log, confirmation, feed.message(order("c"))])
    assert out.outcomes == {"duplicate": 4, "applied": 1}, "copies change nothing after a restore"
    assert [d.invoice_id for d in out.documents] == ["INV-000003"]


def test_a_copy_of_an_order_after_a_restart_does_not_ask_the_provider_again() -> None:
    asked: list[str] = []

    class Counting:
        name = "manual"

        def start(self, order: OrderCreated) -> PaymentOutcome:
            asked.append(order.order_id)
            return BUILT_IN["manual"].start(order)  # type: ignore[return-value]

    feed = Feed()
    created = feed.message(order("a"))
    first = partition({"manual": Counting()})
    run(first, [created])
    second = partition({"manual": Counting()})
    second.restore(first.take_changes())
    out = run(second, [created, created])
    assert (asked, out.outcomes, out.money) == (["a"], {"duplicate": 2}, [])


# -- the upgrade of the old layout ---------------------------------------------------------------------------------


def test_an_old_single_record_is_read_and_rewritten_as_one_record_per_order() -> None:
    old = _legacy_book()
    key, value = _legacy_record(old)
    part = partition()
    part.restore([(key, value)])
    _same_book(part.books[ACCOUNT], old)
    rewrite = dict(part.take_changes())
    assert rewrite.pop(key) is None, "the old record is deleted (compaction drops it)"
    assert set(rewrite) == {
        orders_changelog.head_key(ACCOUNT),
        *(orders_changelog.order_key(ACCOUNT, o) for o in old.orders),
        *(orders_changelog.seen_key(ACCOUNT, "payment", p) for p in old.payments_seen),
        orders_changelog.seen_key(ACCOUNT, "account_event", "acct-e1"),
    }
    assert part.take_changes() == [], "rewritten once"

    # the changelog as compaction leaves it after the upgrade, and as a reader finds it before compaction
    for changelog in (list(rewrite.items()), [(key, value), (key, None), *rewrite.items()]):
        restored = partition()
        restored.restore(changelog)
        _same_book(restored.books[ACCOUNT], old)
        assert restored.take_changes() == [], "nothing left in the old layout"


def test_an_upgraded_account_keeps_its_numbers_invoices_and_copies() -> None:
    old = _legacy_book()
    part = partition()
    part.restore([_legacy_record(old)])
    upgraded = part.take_changes()
    restarted = partition()
    restarted.restore(upgraded)
    feed = Feed()
    out = run(
        restarted,
        [
            feed.message(order("old-0")),  # a copy of an order the old layout holds
            feed.message(payment("old-failed", "failed")),  # a copy of a payment it saw
            feed.message(payment("old-pending", "paid")),
            feed.message(order("new-1")),
            feed.message(payment("old-2", "refunded")),
        ],
    )
    assert out.outcomes == {"duplicate": 2, "applied": 3}
    assert [d.invoice_id for d in out.documents] == ["INV-000005", "INV-000006", "CN-000007"], "numbers go on"
    assert {s.order_id: s.invoice_id for s in out.states if s.order_id == "old-2"} == {"old-2": "INV-000003"}, (
        "an issued invoice keeps its number"
    )


def test_the_processor_rewrites_an_old_account_in_its_next_transaction_even_without_input() -> None:
    """Restored from a store holding the old record, the processor writes the new records and the old one's
    tombstone on its next tick: the runtime commits them in one transaction, so the upgrade is all or nothing."""
    old = _legacy_book()
    key, value = _legacy_record(old)
    backend = MemoryBackend(retain=False)
    backend.write({key: value}, 1)
    store = PartitionStore(backend)
    processor = OrderProcessor(Settings(partitions=PARTITIONS), P, store, BUILT_IN)
    backend.loaded()
    assert store.pending == {}, "nothing is written while the partition is built"
    effects = Effects()
    processor.tick(T0, frozenset(), effects)
    changes = store.take_pending()
    assert changes[key] is None
    assert orders_changelog.head_key(ACCOUNT) in changes
    assert len(changes) == 1 + 1 + len(old.orders) + len(old.payments_seen) + len(old.account_events)
    assert effects.outputs == [], "an upgrade produces nothing but changelog records"
    restored = partition()
    restored.restore(changes.items())
    _same_book(restored.books[ACCOUNT], old)


# -- records that would be too large ---------------------------------------------------------------------------------


def _big(created: OrderCreated) -> OrderCreated:
    return msgspec.structs.replace(created, description="ボ" * 1000)  # 3,000 bytes, within the schema's 1,000 chars


def _small_records_partition() -> OrderPartition:
    """A partition whose record limit an order with a long (valid) description passes."""
    return OrderPartition(
        P,
        PARTITIONS,
        orders_topic=ORDERS,
        accounts_topic=ACCOUNTS,
        providers=BUILT_IN,
        seller=SELLER,
        max_record_bytes=2_000,
    )


def test_an_order_whose_records_would_be_too_large_is_dead_lettered_and_changes_nothing() -> None:
    feed = Feed()
    part = _small_records_partition()
    big = feed.message(_big(order("big")))
    out = run(part, [big, feed.message(order("small"))])
    [dead] = out.dead
    assert (dead.code, dead.source_offset) == ("too_large", big.offset)
    assert "over the order processor's record limit of 2000: nothing of this message was applied" in dead.reason
    assert out.outcomes == {"too_large": 1, "applied": 1}
    assert out.invalid == {(ORDERS, "too_large"): 1}
    assert [s.order_id for s in out.states] == ["small", "small"]
    assert [d.invoice_id for d in out.documents] == ["INV-000001"], "the refused order took no number"
    assert [m.amount for m in out.money] == ["100.00"]
    assert set(part.books[ACCOUNT].orders) == {"small"}
    assert all(len(k) + len(v or b"") <= 2_000 for k, v in part.take_changes())


def test_a_payment_whose_order_would_grow_too_large_is_dead_lettered_and_the_order_stays_as_it_was() -> None:
    feed = Feed()
    part = _small_records_partition()
    run(part, [feed.message(order("t", method="transfer"))])
    part.take_changes()
    failure = msgspec.structs.replace(payment("t", "failed"), reason="ボ" * 1000)
    out = run(part, [feed.message(failure)])
    assert [d.code for d in out.dead] == ["too_large"]
    assert (out.states, part.take_changes()) == ([], [])
    book = part.books[ACCOUNT]
    assert (book.orders["t"].status, book.orders["t"].version, book.payments_seen) == ("pending", 1, set())
    again = run(part, [feed.message(msgspec.structs.replace(failure, reason="card declined"))])
    assert [s.payment_status for s in again.states] == ["failed"], "the same payment id applies once it fits"


def test_the_processor_sends_a_too_large_message_to_the_dead_letter_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orders_partition, "MAX_RECORD_BYTES", 2_000)
    settings = Settings(partitions=PARTITIONS)
    store = PartitionStore(MemoryBackend(retain=False))
    processor = OrderProcessor(settings, P, store, BUILT_IN)
    feed = Feed()
    records = [feed.message(_big(order("big"))), feed.message(order("small"))]
    effects = Effects()
    processor.process(
        [Record(m.topic, m.partition, m.offset, m.value or b"") for m in records],
        T0 + 3_600_000,
        frozenset(),
        effects,
    )
    topics = [topic for topic, _, _ in effects.outputs]
    assert topics.count(settings.topics.dlq) == 1
    assert topics.count(settings.topics.plans) == 1, "the next order is funded"
    [(_, _, letter)] = [o for o in effects.outputs if o[0] == settings.topics.dlq]
    assert msgspec.json.decode(letter)["code"] == "too_large"


def test_a_providers_long_texts_are_bounded_in_the_order() -> None:
    """A provider's answer is not validated as a message is: its texts are cut to what a payment_updated may
    carry, so an order's record stays bounded whatever a provider says."""

    class Chatty:
        name = "chatty"

        def start(self, order: OrderCreated) -> PaymentOutcome:
            return PaymentOutcome(
                status="failed", payment_method="m" * 10_000, reference="r" * 10_000, reason="x" * 100_000
            )

    feed = Feed()
    part = partition({"chatty": Chatty()})
    out = run(part, [feed.message(order("c", method="chatty"))])
    [*_, state] = out.states
    assert len(state.payment_method) == 128
    assert len(state.provider_reference or "") == 128
    assert len(state.failure_reason or "") == 1000
    assert all(len(v or b"") < 4_096 for _, v in part.take_changes())
