"""The orders of one partition of billing-orders + billing-accounts: messages in, records out.

The order processor's pure part (no Kafka, the clock passed in), as ``balance_partition`` is the
balance processor's: it decodes each message, applies it with ``pipeline.orders.book`` and says
what to produce; ``pipeline.stream.orders`` writes all of it, with the consumed offsets, in one
Kafka transaction. The changelog holds one record per order plus a small head per account
(``pipeline.stream.orders_changelog``), so no record grows with an account's orders; a message
whose records would still pass :data:`MAX_RECORD_BYTES` is dead-lettered whole (``too_large``)
instead of failing its transaction for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from pipeline.contract.decode import decode_input
from pipeline.contract.events import AccountChanged, DeadLetter, FundsAdded, FundsRefunded, Rejection
from pipeline.orders.book import (
    AccountOrders,
    Order,
    Step,
    change_account,
    create_order,
    payment_event_id,
    update_payment,
)
from pipeline.orders.events import InvoiceIssued, OrderCreated, OrderState, PaymentUpdated, decode_order_message
from pipeline.orders.events import encode as encode_order_message
from pipeline.orders.providers import PaymentProvider
from pipeline.stream import orders_changelog as changelog
from pipeline.stream.balance_partition import Input, misrouted, reject
from pipeline.stream.records import encode as encode_record

#: The largest record (key and value) the processor produces: far below the producer's
#: ``message.max.bytes`` (1 MiB) and the broker's default ``max.message.bytes``, which a record
#: over them fails permanently. Bounded fields keep every record a few kB; this is the guard.
MAX_RECORD_BYTES: Final = 512 * 1024


@dataclass(slots=True)
class OrderOutputs:
    """What a batch produces, and what the metrics count once it is committed."""

    states: list[OrderState] = field(default_factory=list)
    documents: list[InvoiceIssued] = field(default_factory=list)
    money: list[FundsAdded | FundsRefunded] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: outcome of each applied input (``applied``, ``duplicate``, ``unmatched``, ``refused``, ``too_large``)
    outcomes: dict[str, int] = field(default_factory=dict)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(slots=True)
class _Undo:
    """What an order message can change in its book, as it was before (a message too large is undone)."""

    next_number: int
    order_id: str
    order: Order | None
    payment: str | None

    @classmethod
    def of(cls, book: AccountOrders, message: OrderCreated | PaymentUpdated) -> _Undo:
        order = book.orders.get(message.order_id)
        payment = (
            message.event_id
            if isinstance(message, PaymentUpdated)  # a provider's settling at once is a payment with a derived id
            else payment_event_id(book.account_id, message.order_id, message.payment_method)
        )
        return cls(
            book.next_number,
            message.order_id,
            None if order is None else msgspec.structs.replace(order),
            None if payment in book.payments_seen else payment,
        )

    def apply(self, book: AccountOrders) -> None:
        book.next_number = self.next_number
        if self.order is None:
            book.orders.pop(self.order_id, None)
        else:
            book.orders[self.order_id] = self.order
        if self.payment is not None:
            book.payments_seen.discard(self.payment)


class OrderPartition:
    """The accounts of one partition (billing-orders and billing-accounts are co-partitioned by account)."""

    def __init__(
        self,
        partition: int,
        partitions: int,
        *,
        orders_topic: str,
        accounts_topic: str,
        providers: Mapping[str, PaymentProvider],
        seller: str,
        max_record_bytes: int | None = None,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.orders_topic = orders_topic
        self.accounts_topic = accounts_topic
        self.providers = providers
        self.seller = seller
        self.max_record_bytes = MAX_RECORD_BYTES if max_record_bytes is None else max_record_bytes
        self.books: dict[str, AccountOrders] = {}
        #: changelog records not yet taken (the last one of a key wins)
        self._changes: dict[bytes, bytes | None] = {}

    def restore(self, items: Iterable[tuple[bytes, bytes | None]]) -> list[str]:
        """Load the changelog records of this partition, oldest first (the last one of a key wins).

        An account still in the old one-record layout is rewritten in the new one with the next
        changes taken (its old record deleted), in the same transaction: the upgrade is atomic.
        Returns those accounts.
        """
        restored = changelog.rebuild(items)
        self.books = restored.books
        self._changes.clear()
        for account, key in sorted(restored.legacy.items()):
            self._changes[key] = None
            self._changes.update(changelog.records_of(self.books[account]))
        return sorted(restored.legacy)

    def apply(self, message: Input, now_ms: int, out: OrderOutputs) -> None:  # noqa: PLR0911 - one return per input topic and refusal
        """Apply one message; bad ones become dead letters in ``out``, with the reason."""
        if message.topic == self.accounts_topic:
            self._apply_account(message, now_ms, out)
            return
        order_message = decode_order_message(message.value, now_ms)
        if isinstance(order_message, Rejection):
            self._dead(message, order_message, now_ms, out)
            return
        if isinstance(order_message, OrderState | InvoiceIssued):
            return  # this processor's own output, for the read model: its state already holds it
        book = self._book(message, order_message.account_id, now_ms, out)
        if book is None:
            return
        undo = _Undo.of(book, order_message)
        if isinstance(order_message, OrderCreated):
            if order_message.order_id in book.orders:
                self._collect(Step("duplicate"), out)  # known: the provider is not asked again
                return
            provider = self.providers.get(order_message.payment_method)
            if provider is None:
                self._dead(
                    message,
                    Rejection(
                        "schema",
                        f"payment_method {order_message.payment_method!r} is no payment provider of this deployment "
                        f"(known: {', '.join(sorted(self.providers))})",
                    ),
                    now_ms,
                    out,
                )
                return
            started = None if book.billing_type == "enterprise" else provider.start(order_message)
            step = create_order(book, order_message, started, self.seller)
        else:
            step = update_payment(book, order_message, self.seller)
        records = self._records(book, step, undo)
        too_large = self._too_large(step, records)
        if too_large is not None:
            undo.apply(book)
            self._dead(message, Rejection("too_large", too_large), now_ms, out)
            out.outcomes["too_large"] = out.outcomes.get("too_large", 0) + 1
            return
        self._changes.update(records)
        if step.outcome in ("unmatched", "inapplicable"):  # nothing silent: its dead letter says why
            self._dead(message, Rejection(step.outcome, step.reason), now_ms, out)
        self._collect(step, out)

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records written since the last call (``None``: a record deleted)."""
        records = list(self._changes.items())
        self._changes.clear()
        return records

    # -- helpers ---------------------------------------------------------------------------

    def _apply_account(self, message: Input, now_ms: int, out: OrderOutputs) -> None:
        decoded = (
            decode_input(message.value, now_ms)
            if message.value is not None
            else Rejection("not_json", "empty message (no value)")
        )
        if isinstance(decoded, Rejection):
            self._dead(message, decoded, now_ms, out)
        elif not isinstance(decoded[1], AccountChanged):
            self._dead(message, _wrong_topic(decoded[1].__struct_config__.tag, message.topic), now_ms, out)
        else:
            event = decoded[1]
            book = self._book(message, event.account_id, now_ms, out)
            if book is None:
                return
            step = change_account(book, event)
            if step.outcome == "applied":
                account = book.account_id
                self._changes[changelog.head_key(account)] = changelog.encode_head(book)
                self._changes[changelog.seen_key(account, "account_event", event.event_id)] = changelog.encode_seen(
                    account, "account_event", event.event_id
                )
            self._collect(step, out)

    def _records(self, book: AccountOrders, step: Step, undo: _Undo) -> dict[bytes, bytes | None]:
        """The changelog records an order message changed: its order, the head if a number was taken, the
        payment's id once it is seen."""
        account = book.account_id
        records: dict[bytes, bytes | None] = {}
        for order_id in dict.fromkeys(s.order_id for s in step.states):
            records[changelog.order_key(account, order_id)] = changelog.encode_order(account, book.orders[order_id])
        if book.next_number != undo.next_number:
            records[changelog.head_key(account)] = changelog.encode_head(book)
        if undo.payment is not None and undo.payment in book.payments_seen:
            records[changelog.seen_key(account, "payment", undo.payment)] = changelog.encode_seen(
                account, "payment", undo.payment
            )
        return records

    def _too_large(self, step: Step, records: Mapping[bytes, bytes | None]) -> str | None:
        """Why a record of ``step`` cannot be produced (over :attr:`max_record_bytes`), or None."""
        limit = self.max_record_bytes
        sized = [(f"changelog record {key!r}", len(key) + len(value or b"")) for key, value in records.items()]
        sized += [(f"order_state of {s.order_id!r}", len(encode_order_message(s))) for s in step.states]
        sized += [(f"{d.kind} {d.invoice_id}", len(encode_order_message(d))) for d in step.documents]
        sized += [(f"{type(m).__name__} {m.event_id}", len(encode_record(m))) for m in step.money]
        for what, size in sized:
            if size > limit:
                return (
                    f"its {what} would be {size} bytes, over the order processor's record limit of {limit}: nothing "
                    "of this message was applied (keep descriptions and provider texts short)"
                )
        return None

    def _book(self, message: Input, account_id: str, now_ms: int, out: OrderOutputs) -> AccountOrders | None:
        rejection = misrouted(account_id, self.partition, self.partitions, "account_id")
        if rejection is not None:
            self._dead(message, rejection, now_ms, out)
            return None
        book = self.books.get(account_id)
        if book is None:
            book = self.books[account_id] = AccountOrders(account_id=account_id)
        return book

    @staticmethod
    def _collect(step: Step, out: OrderOutputs) -> None:
        out.outcomes[step.outcome] = out.outcomes.get(step.outcome, 0) + 1
        out.states += step.states
        out.documents += step.documents
        out.money += step.money

    def _dead(self, message: Input, rejection: Rejection, now_ms: int, out: OrderOutputs) -> None:
        reject(message, rejection, now_ms, out.dead, out.invalid)


def _wrong_topic(kind: object, topic: str) -> Rejection:
    return Rejection(
        "wrong_topic",
        f"a {kind} event does not belong on topic {topic!r}: produce it to the topic of its type (see docs/events.md)",
    )
