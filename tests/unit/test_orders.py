"""Orders, payments and invoices without Kafka: the order book, the processor's partition logic, the PDF.

The partition is driven as the processor drives it (``Input`` messages, changelog records from
``take_changes`` restored into a fresh partition), so a restart in the middle is a test here too.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

import msgspec
import pytest
from pypdf import PdfReader

import schemas
from console.documents import render_invoice
from pipeline.contract.events import AccountChanged, FundsAdded, FundsRefunded, ms_to_datetime
from pipeline.infra.kafka import partition_of
from pipeline.orders.book import AccountOrders, create_order, funds_event_id, update_payment
from pipeline.orders.events import InvoiceIssued, OrderCreated, OrderState, PaymentUpdated, decode_order_message
from pipeline.orders.providers import BUILT_IN, PaymentProvider
from pipeline.stream.balance_partition import Input
from pipeline.stream.orders_partition import OrderOutputs, OrderPartition
from tests.support import T0

ACCOUNT = "acme"
APP = "support-bot"
SELLER = "Metering Ltd"
PARTITIONS = 6
P = partition_of(ACCOUNT.encode(), PARTITIONS)
ORDERS = "billing-orders"
ACCOUNTS = "billing-accounts"


def order(order_id: str = "ord-1", amount: str = "100.00", method: str = "manual", t: int = T0) -> OrderCreated:
    return OrderCreated(
        event_id=f"created-{order_id}",
        occurred_at=ms_to_datetime(t),
        account_id=ACCOUNT,
        app_id=APP,
        order_id=order_id,
        amount=amount,
        currency="USD",
        payment_method=method,
    )


def payment(order_id: str, status: str, t: int = T0 + 60_000, event_id: str | None = None) -> PaymentUpdated:
    return PaymentUpdated(
        event_id=event_id or f"{status}-{order_id}",
        occurred_at=ms_to_datetime(t),
        account_id=ACCOUNT,
        order_id=order_id,
        status=status,  # type: ignore[arg-type]
        provider="transfer",
        payment_method="bank transfer",
        reference="TX-1",
    )


# -- the book -------------------------------------------------------------------------------------------------


def test_a_manual_order_is_paid_at_once_invoiced_and_funded() -> None:
    book = AccountOrders(account_id=ACCOUNT)
    created = order()
    step = create_order(book, created, BUILT_IN["manual"].start(created), SELLER)
    assert [s.payment_status for s in step.states] == ["pending", "paid"]
    [invoice] = step.documents
    assert (invoice.invoice_id, invoice.number, invoice.total, invoice.payment_status) == (
        "INV-000001",
        1,
        "100.00",
        "paid",
    )
    [funds] = step.money
    assert isinstance(funds, FundsAdded)
    assert (funds.event_id, funds.amount, funds.app_id) == (funds_event_id(ACCOUNT, "ord-1"), "100.00", APP)
    assert step.states[-1].invoice_id == "INV-000001"
    assert step.states[-1].billing_date == ms_to_datetime(T0).date()


def test_a_confirmation_is_idempotent_and_a_failed_payment_adds_nothing() -> None:
    book = AccountOrders(account_id=ACCOUNT)
    create_order(book, order("a", method="transfer"), None, SELLER)
    create_order(book, order("b", method="transfer"), None, SELLER)
    paid = update_payment(book, payment("a", "paid"), SELLER)
    assert [d.invoice_id for d in paid.documents] == ["INV-000001"]
    assert update_payment(book, payment("a", "paid"), SELLER).outcome == "duplicate", "the same message again"
    again = update_payment(book, payment("a", "paid", event_id="another-confirmation"), SELLER)
    assert (again.outcome, again.documents, again.money) == ("duplicate", [], []), "a second confirmation"
    failed = update_payment(book, payment("b", "failed"), SELLER)
    assert (failed.documents, failed.money) == ([], [])
    assert failed.states[-1].payment_status == "failed"
    late = update_payment(book, payment("b", "paid", event_id="late-paid"), SELLER)
    assert (late.outcome, late.money) == ("inapplicable", []), "a failed order is not paid afterwards"
    assert late.reason == "order 'b' is failed: a payment 'paid' applies only to a pending order"
    unknown = update_payment(book, payment("nope", "paid"), SELLER)
    assert (unknown.outcome, unknown.reason) == ("unmatched", "no order 'nope' in account 'acme'")


def test_invoice_numbers_increase_per_account_and_a_refund_is_a_credit_note_with_its_own() -> None:
    book = AccountOrders(account_id=ACCOUNT)
    numbers = []
    for i in range(3):
        created = order(f"o{i}")
        numbers += [
            d.invoice_id for d in create_order(book, created, BUILT_IN["manual"].start(created), SELLER).documents
        ]
    refund = update_payment(book, payment("o1", "refunded"), SELLER)
    [note] = refund.documents
    assert numbers == ["INV-000001", "INV-000002", "INV-000003"]
    assert (note.invoice_id, note.kind, note.refers_to, note.total) == (
        "CN-000004",
        "credit_note",
        "INV-000002",
        "-100.00",
    )
    [money] = refund.money
    assert isinstance(money, FundsRefunded)
    assert refund.states[-1].payment_status == "refunded"
    assert refund.states[-1].invoice_id == "INV-000002", "the invoice stays as issued"
    other = AccountOrders(account_id="globex")
    created = order("g1")
    assert [
        d.invoice_id for d in create_order(other, created, BUILT_IN["manual"].start(created), SELLER).documents
    ] == ["INV-000001"], "numbers are per account"


def test_an_enterprise_accounts_order_is_refused() -> None:
    book = AccountOrders(account_id=ACCOUNT, billing_type="enterprise")
    step = create_order(book, order(), None, SELLER)
    assert step.outcome == "refused"
    assert step.states[-1].payment_status == "failed"
    assert step.money == []


# -- the partition, as the processor drives it -----------------------------------------------------------------


class Feed:
    def __init__(self) -> None:
        self.offset = 0

    def message(self, record: object, topic: str = ORDERS) -> Input:
        self.offset += 1
        return Input(topic, P, self.offset, msgspec.json.encode(record))


def partition(providers: Mapping[str, PaymentProvider] | None = None) -> OrderPartition:
    return OrderPartition(
        P, PARTITIONS, orders_topic=ORDERS, accounts_topic=ACCOUNTS, providers=providers or BUILT_IN, seller=SELLER
    )


def run(part: OrderPartition, messages: list[Input]) -> OrderOutputs:
    out = OrderOutputs()
    for m in messages:
        part.apply(m, T0 + 3_600_000, out)
    return out


def test_a_restart_between_order_and_confirmation_issues_one_invoice() -> None:
    feed = Feed()
    first = partition()
    out = run(first, [feed.message(order(method="transfer"))])
    assert [s.payment_status for s in out.states] == ["pending"]
    changelog = first.take_changes()
    # the process dies here; a new one restores the changelog, and the confirmation comes twice
    second = partition()
    second.restore(changelog)
    confirmation = feed.message(payment("ord-1", "paid"))
    out = run(second, [confirmation, confirmation, feed.message(payment("ord-1", "paid", event_id="dup"))])
    assert [d.invoice_id for d in out.documents] == ["INV-000001"]
    assert len(out.money) == 1
    assert out.outcomes == {"applied": 1, "duplicate": 2}


def test_own_outputs_are_skipped_and_bad_messages_dead_lettered() -> None:
    feed = Feed()
    part = partition()
    state = OrderState(
        account_id=ACCOUNT,
        order_id="x",
        app_id=APP,
        description="d",
        amount="1.00",
        currency="USD",
        payment_method="manual",
        payment_status="paid",
        provider="manual",
        provider_reference=None,
        failure_reason=None,
        billing_date=None,
        invoice_id=None,
        credit_note_id=None,
        requested_by=None,
        created_at=ms_to_datetime(T0),
        updated_at=ms_to_datetime(T0),
        version=1,
    )
    other_partition = next(a for a in (f"acct-{i}" for i in range(100)) if partition_of(a.encode(), PARTITIONS) != P)
    misrouted = msgspec.structs.replace(order(), account_id=other_partition)
    out = run(
        part,
        [
            feed.message(state),
            Input(ORDERS, P, 99, b"{not json"),
            feed.message(misrouted),
            feed.message(order(method="bitcoin")),
        ],
    )
    assert out.states == []
    assert sorted(d.code for d in out.dead) == ["misrouted", "not_json", "schema"]
    assert "bitcoin" in next(d.reason for d in out.dead if d.code == "schema")


def test_payments_the_processor_cannot_apply_are_dead_lettered_with_the_reason() -> None:
    """Nothing disappears silently: a payment for an unknown order, or one the order's state does not allow (a
    refund of an unpaid order, a failure after the payment), goes to the dead-letter topic saying why; a second
    confirmation of what is so stays a quiet duplicate."""
    feed = Feed()
    part = partition()
    out = run(
        part,
        [
            feed.message(order("t1", method="transfer")),
            feed.message(payment("t1", "refunded")),
            feed.message(payment("nope", "paid")),
            feed.message(payment("t1", "paid")),
            feed.message(payment("t1", "paid", event_id="confirmed-again")),
            feed.message(payment("t1", "failed", t=T0 + 120_000)),
        ],
    )
    assert [(d.code, d.source_offset) for d in out.dead] == [("inapplicable", 2), ("unmatched", 3), ("inapplicable", 6)]
    reasons = [d.reason for d in out.dead]
    assert reasons[0] == "inapplicable: order 't1' is pending: a payment 'refunded' applies only to a paid order"
    assert reasons[1] == "unmatched: no order 'nope' in account 'acme'"
    assert reasons[2] == "inapplicable: order 't1' is paid: a payment 'failed' applies only to a pending order"
    assert out.outcomes == {"applied": 2, "inapplicable": 2, "unmatched": 1, "duplicate": 1}
    assert out.invalid == {(ORDERS, "inapplicable"): 2, (ORDERS, "unmatched"): 1}
    assert [s.payment_status for s in out.states] == ["pending", "paid"]


def test_an_account_turned_enterprise_gets_no_order_through() -> None:
    feed = Feed()
    part = partition()
    change = AccountChanged(
        event_id="e1", occurred_at=ms_to_datetime(T0 - 1), account_id=ACCOUNT, billing_type="enterprise"
    )
    out = run(part, [feed.message(change, ACCOUNTS), feed.message(order())])
    assert out.money == []
    assert out.states[-1].payment_status == "failed"
    assert part.books[ACCOUNT].billing_type == "enterprise"


def test_order_messages_are_validated() -> None:
    good = msgspec.json.encode(order())
    assert isinstance(decode_order_message(good, T0), OrderCreated)
    for bad, code in [
        (msgspec.json.encode(order(amount="0")), "schema"),
        (b'{"type": "order_created"}', "schema"),
        (b'{"type": "order_deleted"}', "unknown_type"),
        (b"[]", "not_an_object"),
        (msgspec.json.encode(order(t=T0 + 2 * 86_400_000)), "out_of_range"),
    ]:
        rejected = decode_order_message(bad, T0)
        assert not isinstance(rejected, OrderCreated | PaymentUpdated | OrderState | InvoiceIssued)
        assert rejected.code == code, bad


# -- the PDF ----------------------------------------------------------------------------------------------------


def test_the_invoice_pdf_holds_what_an_invoice_must_and_never_changes() -> None:
    book = AccountOrders(account_id=ACCOUNT)
    created = order("ord-7f3a", amount="250.50")
    [invoice] = create_order(book, created, BUILT_IN["manual"].start(created), SELLER).documents
    pdf = render_invoice(invoice)
    assert pdf.startswith(b"%PDF")
    assert render_invoice(invoice) == pdf, "the same record renders to the same bytes"
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    for expected in (SELLER, ACCOUNT, "INV-000001", "ord-7f3a", "250.50 USD", "manual", "paid", "2026-11-01"):
        assert expected in text, expected


@pytest.mark.parametrize(
    ("currency", "amount", "written", "refunded"),
    [("JPY", "12000", "12000", "-12000"), ("USD", "250.5", "250.50", "-250.50"), ("KWD", "1.5", "1.500", "-1.500")],
)
def test_invoices_write_amounts_with_the_currencys_minor_units(
    currency: str, amount: str, written: str, refunded: str
) -> None:
    """JPY has no minor unit, KWD three: an invoice says 12000 JPY and 1.500 KWD, not 12000.00 and 1.50."""
    book = AccountOrders(account_id=ACCOUNT)
    created = msgspec.structs.replace(order("o-1", method="transfer"), amount=amount, currency=currency)
    create_order(book, created, None, SELLER)
    [invoice] = update_payment(book, payment("o-1", "paid"), SELLER).documents
    assert (invoice.total, invoice.lines[0].unit_price, invoice.lines[0].amount) == (written, written, written)
    [note] = update_payment(book, payment("o-1", "refunded", t=T0 + 120_000), SELLER).documents
    assert note.total == refunded
    text = PdfReader(io.BytesIO(render_invoice(invoice))).pages[0].extract_text()
    assert f"{written} {currency}" in text


def test_an_invoice_issued_before_keeps_its_text_and_its_bytes() -> None:
    """An invoice never changes once issued: one issued as 12000.00 JPY (before amounts followed the currency)
    renders from its stored record, as it was, to the same bytes."""
    book = AccountOrders(account_id=ACCOUNT)
    created = msgspec.structs.replace(order("o-1"), amount="12000", currency="JPY")
    [invoice] = create_order(book, created, BUILT_IN["manual"].start(created), SELLER).documents
    lines = [msgspec.structs.replace(line, unit_price="12000.00", amount="12000.00") for line in invoice.lines]
    issued_before = msgspec.structs.replace(invoice, total="12000.00", lines=lines)
    stored = msgspec.json.decode(msgspec.json.encode(issued_before), type=InvoiceIssued)
    pdf = render_invoice(stored)
    assert pdf == render_invoice(issued_before)
    assert "12000.00 JPY" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


@pytest.mark.parametrize("app", ["bot-ü", "ボット"])
def test_any_script_renders(app: str) -> None:
    book = AccountOrders(account_id=ACCOUNT)
    created = msgspec.structs.replace(order(), app_id=app)
    [invoice] = create_order(book, created, BUILT_IN["manual"].start(created), SELLER).documents
    assert render_invoice(invoice).startswith(b"%PDF")


# -- the records and their JSON Schemas (schemas/v1) --------------------------------------------------------------


def _sample_records() -> list[object]:
    book = AccountOrders(account_id=ACCOUNT)
    created = order("ord-s", method="transfer")
    records: list[object] = [created]
    step = create_order(book, created, None, SELLER)
    confirmation = payment("ord-s", "paid")
    refund = payment("ord-s", "refunded", t=T0 + 120_000)
    records += [confirmation, refund, *step.states]
    for more in (update_payment(book, confirmation, SELLER), update_payment(book, refund, SELLER)):
        records += [*more.states, *more.documents]
    return records


@pytest.mark.parametrize("record", _sample_records(), ids=lambda r: type(r).__name__)
def test_every_record_validates_against_its_schema(record: object) -> None:
    document = json.loads(msgspec.json.encode(record))
    validator = schemas.validator(document["type"])
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors


@pytest.mark.parametrize("kind", [OrderCreated, PaymentUpdated, OrderState, InvoiceIssued])
def test_each_schema_has_exactly_the_struct_fields(kind: type[msgspec.Struct]) -> None:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    schema = schemas.load(str(info.tag))
    fields = {f.encode_name for f in msgspec.structs.fields(kind)}
    assert set(schema["properties"]) == {"type"} | fields
    required = {f.encode_name for f in msgspec.structs.fields(kind) if f.required}
    if schema["additionalProperties"] is False:  # an output: every field always written
        assert set(schema["required"]) == {"type"} | fields
    else:
        assert set(schema["required"]) == {"type"} | required
