"""The billing-orders topic (compacted, keyed by ``account_id``): what the console, payment
providers and the order processor write there, as structs with their JSON Schemas in ``schemas/v1``.

Inputs of the order processor: ``order_created`` (the console, when an admin adds funds) and
``payment_updated`` (a payment provider's confirmation, failure or refund). Its outputs, on the
same topic for the read model: ``order_state`` (an order after each change, with a version) and
``invoice_issued`` (an invoice or a credit note, immutable). Money is decimal strings, as in the
event contract.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Final, Literal

import msgspec
from msgspec import Struct

from pipeline.contract.decode import to_ms
from pipeline.contract.events import (
    EARLIEST_MS,
    MAX_FUTURE_MS,
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Currency,
    DecimalString,
    Id,
    Rejection,
    Text,
    Timestamp,
    parse_decimal,
)

PaymentStatus = Literal["pending", "paid", "failed", "refunded"]
#: What a provider can report about a payment (``pending`` is where every order starts).
PaymentResult = Literal["paid", "failed", "refunded"]
DocumentKind = Literal["invoice", "credit_note"]


class OrderCreated(Struct, tag_field="type", tag="order_created", frozen=True, kw_only=True):
    """An admin added funds: an order to pay ``amount`` in ``currency`` for ``app_id``."""

    event_id: Id
    occurred_at: Timestamp
    account_id: Id
    app_id: Id
    order_id: Id
    amount: DecimalString
    currency: Currency = "USD"
    #: the payment provider asked to collect it (``manual``: paid at once)
    payment_method: Id
    description: Text | None = None
    requested_by: Id | None = None


class PaymentUpdated(Struct, tag_field="type", tag="payment_updated", frozen=True, kw_only=True):
    """A payment provider's word on an order: paid, failed, or refunded. Idempotent by ``event_id``
    and by state: a second confirmation of a paid order changes nothing."""

    event_id: Id
    occurred_at: Timestamp
    account_id: Id
    order_id: Id
    status: PaymentResult
    provider: Id
    #: how the customer paid, as the provider reports it ("manual", "card ending 4242")
    payment_method: Id | None = None
    reference: Id | None = None
    reason: Text | None = None


class OrderState(Struct, tag_field="type", tag="order_state", frozen=True, kw_only=True):
    """An order after a change (the order processor's output; the latest ``version`` wins)."""

    account_id: str
    order_id: str
    app_id: str
    description: str
    amount: DecimalString
    currency: Currency
    payment_method: str
    payment_status: PaymentStatus
    provider: str
    provider_reference: str | None
    failure_reason: str | None
    billing_date: date | None
    invoice_id: str | None
    credit_note_id: str | None
    requested_by: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    schema_version: str = SCHEMA_VERSION


class InvoiceLine(Struct, frozen=True, kw_only=True):
    description: str
    quantity: int
    unit_price: DecimalString
    amount: DecimalString


class InvoiceIssued(Struct, tag_field="type", tag="invoice_issued", frozen=True, kw_only=True):
    """An invoice (a paid order) or a credit note (a refund), as issued: it never changes.

    ``number`` is the account's sequence (1, 2, ...: invoices and credit notes share it, never
    reused); ``invoice_id`` is how it is named (``INV-000001``, ``CN-000002``).
    """

    account_id: str
    invoice_id: str
    number: int
    kind: DocumentKind
    order_id: str
    app_id: str
    issued_at: datetime
    billing_date: date
    seller: str
    currency: Currency
    lines: list[InvoiceLine]
    total: DecimalString
    payment_method: str
    payment_status: PaymentStatus
    #: a credit note names the invoice it corrects
    refers_to: str | None = None
    schema_version: str = SCHEMA_VERSION


#: What the order processor reads on billing-orders (its own outputs included: it skips them).
OrderMessage = OrderCreated | PaymentUpdated | OrderState | InvoiceIssued
#: The billing-orders records the console's read model stores.
OrderRecord = OrderState | InvoiceIssued

ORDER_INPUT_TYPES: Final = {"order_created": OrderCreated, "payment_updated": PaymentUpdated}
ORDER_OUTPUT_TYPES: Final = {"order_state": OrderState, "invoice_issued": InvoiceIssued}

_decoder: Final = msgspec.json.Decoder(OrderMessage)
_encoder: Final = msgspec.json.Encoder()


def encode(record: OrderMessage) -> bytes:
    return _encoder.encode(record)


def decode_order_message(payload: bytes | None, now_ms: int) -> OrderMessage | Rejection:  # noqa: PLR0911 - one Rejection per validation step, as pipeline.contract.decode
    """One billing-orders message, validated as ``pipeline.contract.decode`` validates input events."""
    if payload is None:
        return Rejection("not_json", "empty message (no value)")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection("too_large", f"payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        message = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        code: Literal["unknown_type", "schema", "not_an_object"] = (
            "not_an_object"
            if text.startswith("Expected `object`")
            else "unknown_type"
            if "$.type" in text or "missing required field `type`" in text
            else "schema"
        )
        return Rejection(code, text)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return Rejection("not_json", str(exc) or type(exc).__name__)
    if isinstance(message, OrderCreated | PaymentUpdated):
        t = to_ms(message.occurred_at)
        if t < EARLIEST_MS:
            return Rejection("out_of_range", "occurred_at is before 2000-01-01")
        if t > now_ms + MAX_FUTURE_MS:
            return Rejection("out_of_range", "occurred_at is more than 24 h in the future")
    if isinstance(message, OrderCreated) and parse_decimal(message.amount) <= 0:
        return Rejection("schema", "amount must be greater than zero")
    return message
