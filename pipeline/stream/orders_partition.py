"""The orders of one partition of billing-orders + billing-accounts: messages in, records out.

The order processor's pure part (no Kafka, the clock passed in), as ``balance_partition`` is the
balance processor's: it decodes each message, applies it with ``pipeline.orders.book`` and says
what to produce; ``pipeline.stream.orders`` writes all of it, with the consumed offsets, in one
Kafka transaction. The changelog holds one record per account (key ``account_id``, the
:class:`~pipeline.orders.book.AccountOrders` as msgpack): orders are few per account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from pipeline.decode import decode_input
from pipeline.events import AccountChanged, DeadLetter, FundsAdded, FundsRefunded, Rejection
from pipeline.kafka import partition_of
from pipeline.orders.book import AccountOrders, Step, change_account, create_order, update_payment
from pipeline.orders.events import InvoiceIssued, OrderCreated, OrderState, decode_order_message
from pipeline.orders.providers import PaymentProvider
from pipeline.stream.balance_partition import Input, reject

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(AccountOrders)


@dataclass(slots=True)
class OrderOutputs:
    """What a batch produces, and what the metrics count once it is committed."""

    states: list[OrderState] = field(default_factory=list)
    documents: list[InvoiceIssued] = field(default_factory=list)
    money: list[FundsAdded | FundsRefunded] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: outcome of each applied input (``applied``, ``duplicate``, ``unmatched``, ``refused``)
    outcomes: dict[str, int] = field(default_factory=dict)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)


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
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.orders_topic = orders_topic
        self.accounts_topic = accounts_topic
        self.providers = providers
        self.seller = seller
        self.books: dict[str, AccountOrders] = {}
        self._dirty: set[str] = set()

    def restore(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Load the changelog records of this partition, oldest first (the last one of an account wins)."""
        self.books.clear()
        self._dirty.clear()
        for key, value in items:
            account = key.decode()
            if value is None:
                self.books.pop(account, None)
            else:
                self.books[account] = _decoder.decode(value)

    def apply(self, message: Input, now_ms: int, out: OrderOutputs) -> None:
        """Apply one message; bad ones become dead letters in ``out``, with the reason."""
        if message.topic == self.accounts_topic:
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
                if book is not None:
                    self._collect(book, change_account(book, event), out)
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
        if isinstance(order_message, OrderCreated):
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
            if step.outcome in ("unmatched", "inapplicable"):  # nothing silent: its dead letter says why
                self._dead(message, Rejection(step.outcome, step.reason), now_ms, out)
        self._collect(book, step, out)

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of the accounts changed since the last call."""
        records: list[tuple[bytes, bytes | None]] = [
            (account.encode(), _encoder.encode(self.books[account])) for account in sorted(self._dirty)
        ]
        self._dirty.clear()
        return records

    # -- helpers ---------------------------------------------------------------------------

    def _book(self, message: Input, account_id: str, now_ms: int, out: OrderOutputs) -> AccountOrders | None:
        expected = partition_of(account_id.encode(), self.partitions)
        if expected != self.partition:
            rejection = Rejection(
                "misrouted",
                f"misrouted: key {account_id!r} belongs on partition {expected}, not {self.partition}; produce with "
                "the key account_id and a Java-compatible murmur2 partitioner (librdkafka: murmur2_random)",
            )
            self._dead(message, rejection, now_ms, out)
            return None
        book = self.books.get(account_id)
        if book is None:
            book = self.books[account_id] = AccountOrders(account_id=account_id)
        return book

    def _collect(self, book: AccountOrders, step: Step, out: OrderOutputs) -> None:
        out.outcomes[step.outcome] = out.outcomes.get(step.outcome, 0) + 1
        if step.outcome in ("applied", "refused"):
            self._dirty.add(book.account_id)
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
