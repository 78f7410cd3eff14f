"""The orders of one account: states, payments, invoice numbers and the money they move.

Pure: messages in, records out; the caller (the order processor) owns one :class:`AccountOrders`
per account of its partitions, persists it in its changelog and produces what each step returns
in the same Kafka transaction as the consumed offsets. So:

- an order is created once (by ``order_id``); a copy of its message changes nothing;
- a payment moves an order from ``pending`` to ``paid`` or ``failed``, and a refund from ``paid``
  to ``refunded``; a second confirmation of the order's state changes nothing (a provider's
  confirmation is idempotent); a payment for an unknown order (``unmatched``) or one the order's
  state does not allow (``inapplicable``: a refund of an unpaid order) changes nothing and says
  why, for its dead letter;
- a paid order gets the next number of its account (``INV-000001``, ...), an invoice that never
  changes, and a ``funds_added`` whose ``event_id`` is derived from the order, so the balance
  counts it once however often it is produced; a failed payment adds nothing;
- a refund gets a credit note with a number of its own (the same sequence: numbers are never
  reused) and a ``funds_refunded``; the invoice stays as it was issued.

``docs/orders.md`` tells the whole story with examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Final, Literal, TypeVar

from msgspec import Struct
from msgspec import field as struct_field

from pipeline.balance.money import ZERO, format_amount, format_money, sub
from pipeline.contract.decode import to_ms
from pipeline.contract.events import (
    AccountChanged,
    BillingType,
    FundsAdded,
    FundsRefunded,
    ms_to_datetime,
    parse_decimal,
)
from pipeline.orders.events import (
    InvoiceIssued,
    InvoiceLine,
    OrderCreated,
    OrderState,
    PaymentStatus,
    PaymentUpdated,
)
from pipeline.orders.providers import PaymentOutcome
from pipeline.rules.billing import derived_id

M = TypeVar("M", FundsAdded, FundsRefunded)

Outcome = Literal["applied", "duplicate", "unmatched", "inapplicable", "refused"]

#: What a provider's answer may put in an order, as a ``payment_updated`` message may (``pipeline.contract.events``).
ID_LENGTH: Final = 128
TEXT_LENGTH: Final = 1000

ENTERPRISE_REFUSAL: Final = "enterprise accounts are billed by contract: contact support to add funds"


class Order(Struct, kw_only=True):
    """One order and where its payment stands."""

    created: OrderCreated
    status: PaymentStatus = "pending"
    provider: str = ""
    payment_method: str = ""
    provider_reference: str | None = None
    failure_reason: str | None = None
    paid_ms: int | None = None
    invoice_id: str | None = None
    credit_note_id: str | None = None
    updated_ms: int = 0
    version: int = 0


class AccountOrders(Struct, kw_only=True):
    """Everything the orders of one account depend on.

    Persisted as one changelog record per order, a head and one per id seen
    (``pipeline.stream.orders_changelog``); before that, as one record per account.
    """

    account_id: str
    billing_type: BillingType = "prepaid"
    #: (occurred_at ms, event_id) of the account_changed in force
    billing_type_key: tuple[int, str] | None = None
    account_events: set[str] = struct_field(default_factory=set)
    orders: dict[str, Order] = struct_field(default_factory=dict)
    payments_seen: set[str] = struct_field(default_factory=set)
    #: the number the next invoice or credit note gets
    next_number: int = 1


@dataclass(slots=True)
class Step:
    """What one message did, and what to produce for it (in this order, in one transaction)."""

    outcome: Outcome
    states: list[OrderState] = field(default_factory=list)
    documents: list[InvoiceIssued] = field(default_factory=list)
    money: list[FundsAdded | FundsRefunded] = field(default_factory=list)
    #: why an ``unmatched`` or ``inapplicable`` payment changes nothing (its dead letter says so)
    reason: str = ""


def funds_event_id(account_id: str, order_id: str) -> str:
    """The ``event_id`` of a paid order's ``funds_added``: the balance counts it once."""
    return derived_id(f"order|{account_id}|{order_id}|funds")


def refund_event_id(account_id: str, order_id: str) -> str:
    return derived_id(f"order|{account_id}|{order_id}|refund")


def payment_event_id(account_id: str, order_id: str, provider: str) -> str:
    """The id of a payment a provider settled at once (no message of its own carries one)."""
    return derived_id(f"order|{account_id}|{order_id}|payment|{provider}")


def document_id(kind: str, number: int) -> str:
    return f"{'INV' if kind == 'invoice' else 'CN'}-{number:06d}"


def change_account(book: AccountOrders, event: AccountChanged) -> Step:
    """The billing type in force is the latest ``account_changed`` by (occurred_at, event_id)."""
    if event.event_id in book.account_events:
        return Step("duplicate")
    book.account_events.add(event.event_id)
    key = (to_ms(event.occurred_at), event.event_id)
    if book.billing_type_key is None or key > book.billing_type_key:
        book.billing_type, book.billing_type_key = event.billing_type, key
    return Step("applied")


def create_order(book: AccountOrders, event: OrderCreated, started: PaymentOutcome | None, seller: str) -> Step:
    """A new order, pending; ``started`` is the provider's answer when it settles at once.

    An enterprise account's order is refused (failed, nothing charged): the console does not
    offer it, this is the guard for a request that raced a change of billing type.
    """
    if event.order_id in book.orders:
        return Step("duplicate")
    t = to_ms(event.occurred_at)
    order = Order(created=event, provider=event.payment_method, payment_method=event.payment_method, updated_ms=t)
    book.orders[event.order_id] = order
    if book.billing_type == "enterprise":
        order.status, order.failure_reason = "failed", ENTERPRISE_REFUSAL
        return Step("refused", states=[_changed(book, order, t)])
    step = Step("applied", states=[_changed(book, order, t)])
    if started is not None:
        payment = PaymentUpdated(
            event_id=payment_event_id(book.account_id, event.order_id, event.payment_method),
            occurred_at=event.occurred_at,
            account_id=event.account_id,
            order_id=event.order_id,
            status=started.status,
            provider=event.payment_method,
            payment_method=_bounded(started.payment_method, ID_LENGTH),
            reference=_bounded(started.reference, ID_LENGTH),
            reason=_bounded(started.reason, TEXT_LENGTH),
        )
        more = update_payment(book, payment, seller)
        step.states += more.states
        step.documents += more.documents
        step.money += more.money
    return step


def update_payment(book: AccountOrders, event: PaymentUpdated, seller: str) -> Step:  # noqa: PLR0911 - one outcome per payment transition
    """Apply a provider's word; only pending -> paid | failed and paid -> refunded change anything."""
    if event.event_id in book.payments_seen:
        return Step("duplicate")
    order = book.orders.get(event.order_id)
    if order is None:
        return Step("unmatched", reason=f"no order {event.order_id!r} in account {book.account_id!r}")
    book.payments_seen.add(event.event_id)
    t = to_ms(event.occurred_at)
    allowed = {("pending", "paid"), ("pending", "failed"), ("paid", "refunded")}
    if (order.status, event.status) not in allowed:
        if order.status == event.status:
            return Step("duplicate")  # a second confirmation of what is so: idempotent
        return Step(
            "inapplicable",
            reason=f"order {event.order_id!r} is {order.status}: a payment {event.status!r} applies only to a "
            f"{'paid' if event.status == 'refunded' else 'pending'} order",
        )
    if event.status != "refunded":  # a refund goes back the way the payment came
        order.provider = event.provider
    if event.payment_method:
        order.payment_method = event.payment_method
    if event.reference:
        order.provider_reference = event.reference
    if event.status == "failed":
        order.status, order.failure_reason = "failed", event.reason or "the payment failed"
        return Step("applied", states=[_changed(book, order, t)])
    if event.status == "paid":
        order.status, order.paid_ms = "paid", t
        invoice = _document(book, order, "invoice", t, seller)
        order.invoice_id = invoice.invoice_id
        funds = _money(FundsAdded, funds_event_id(book.account_id, order.created.order_id), order.created, t)
        return Step("applied", states=[_changed(book, order, t)], documents=[invoice], money=[funds])
    order.status = "refunded"
    note = _document(book, order, "credit_note", t, seller)
    order.credit_note_id = note.invoice_id
    refund = _money(FundsRefunded, refund_event_id(book.account_id, order.created.order_id), order.created, t)
    return Step("applied", states=[_changed(book, order, t)], documents=[note], money=[refund])


def _money(kind: type[M], event_id: str, created: OrderCreated, t: int) -> M:
    """The order's amount as funds added (paid) or refunded, for the balance processor."""
    return kind(
        event_id=event_id,
        occurred_at=ms_to_datetime(t),
        account_id=created.account_id,
        app_id=created.app_id,
        amount=created.amount,
        currency=created.currency,
    )


def description_of(order: OrderCreated) -> str:
    return order.description or f"Funds for app {order.app_id}"


def _document(
    book: AccountOrders, order: Order, kind: Literal["invoice", "credit_note"], t: int, seller: str
) -> InvoiceIssued:
    """The next number of the account, on an immutable invoice or credit note."""
    number = book.next_number
    book.next_number += 1
    created = order.created
    amount = parse_decimal(created.amount)
    # as the currency writes it (JPY 100, KWD 1.500); an issued document keeps the text it was issued with
    signed = format_amount(amount if kind == "invoice" else sub(ZERO, amount), created.currency)
    description = (
        description_of(created) if kind == "invoice" else f"Refund of {order.invoice_id}: {description_of(created)}"
    )
    return InvoiceIssued(
        account_id=created.account_id,
        invoice_id=document_id(kind, number),
        number=number,
        kind=kind,
        order_id=created.order_id,
        app_id=created.app_id,
        issued_at=ms_to_datetime(t),
        billing_date=_date(t),
        seller=seller,
        currency=created.currency,
        lines=[InvoiceLine(description=description, quantity=1, unit_price=signed, amount=signed)],
        total=signed,
        payment_method=order.payment_method,
        payment_status=order.status,
        refers_to=order.invoice_id if kind == "credit_note" else None,
    )


def _changed(book: AccountOrders, order: Order, t: int) -> OrderState:
    order.version += 1
    order.updated_ms = max(order.updated_ms, t)
    created = order.created
    return OrderState(
        account_id=book.account_id,
        order_id=created.order_id,
        app_id=created.app_id,
        description=description_of(created),
        amount=format_money(parse_decimal(created.amount)),
        currency=created.currency,
        payment_method=order.payment_method,
        payment_status=order.status,
        provider=order.provider,
        provider_reference=order.provider_reference,
        failure_reason=order.failure_reason,
        billing_date=None if order.paid_ms is None else _date(order.paid_ms),
        invoice_id=order.invoice_id,
        credit_note_id=order.credit_note_id,
        requested_by=created.requested_by,
        created_at=created.occurred_at,
        updated_at=ms_to_datetime(order.updated_ms),
        version=order.version,
    )


def _bounded(text: str | None, limit: int) -> str | None:
    """A provider's text within what a ``payment_updated`` may carry (records stay bounded: docs/orders.md)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _date(t: int) -> date:
    """The UTC date of an instant (billing dates are UTC, as billing periods are)."""
    return ms_to_datetime(t).date()
