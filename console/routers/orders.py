"""§3 Orders & invoices: ``GET /api/v1/orders`` and ``GET /api/v1/invoices/{invoice_id}.pdf``.

Orders come a page at a time (``limit``, at most 1,000), newest first; ``next`` links to the
following page with a cursor (``before=<order_id>``), so any number of orders can be read.

Read from the order processor's read model in ClickHouse (``orders``, ``invoices``; migration
011), scoped to the token's account in SQL. Not for enterprise accounts: they are billed by
contract, and both routes answer 403 for them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import msgspec
from fastapi import Query
from fastapi.responses import JSONResponse, Response

from console.attachments import attachment
from console.billing import Scope, require_prepaid
from console.deps import billing_router
from console.documents import render_invoice
from console.errors import bad_parameter, not_found
from pipeline.balance.money import format_amount
from pipeline.orders.events import InvoiceIssued

router = billing_router(prefix="/api/v1", tags=["orders"])

_invoice: Any = msgspec.json.Decoder(InvoiceIssued)
_Limit = Annotated[int, Query(ge=1, le=1000, description="how many orders, newest first")]
_Before = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=256,
        description="an order_id: the orders after it in this list (older); the answer's `next` link carries it",
    ),
]
#: After every order (a created_at no order has): the first page.
_FIRST_PAGE: Final = (datetime(2299, 12, 31, tzinfo=UTC), "")


@router.get("/orders", summary="The account's orders, newest first, with payment status and invoice, a page at a time")
def orders(scope: Scope, limit: _Limit = 100, before: _Before = None) -> JSONResponse:
    """A page of ``limit`` orders; ``next`` is the link to the following page (None on the last one)."""
    require_prepaid(scope, "Orders & invoices")
    cursor = _FIRST_PAGE
    if before is not None:
        found = scope.query("console_order_cursor", order=before)
        if not found:
            raise bad_parameter("before", f"no order {before!r} in this account: give an order_id of this list")
        cursor = (found[0][0], str(found[0][1]))
    rows = scope.query("console_orders", limit=limit + 1, before_at=cursor[0], before_id=cursor[1])
    more = len(rows) > limit
    items = [_order(row) for row in rows[:limit]]
    following = f"/api/v1/orders?{urlencode({'limit': limit, 'before': items[-1]['order_id']})}" if more else None
    return JSONResponse({"orders": items, "next": following}, headers={"Cache-Control": "no-store"})


def _order(row: tuple[Any, ...]) -> dict[str, Any]:
    (order_id, billing_date, description, amount, currency, payment_method, status, invoice_id, credit_note_id,
     app_id, created_at) = row  # fmt: skip
    return {
        "order_id": order_id,
        "billing_date": None if billing_date is None else billing_date.isoformat(),
        "description": description,
        "cost": format_amount(Decimal(str(amount)), str(currency)),
        "currency": currency,
        "payment_method": payment_method,
        "payment_status": status,
        "invoice_id": invoice_id,
        "credit_note_id": credit_note_id,
        "app_id": app_id,
        "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


@router.get(
    "/invoices/{invoice_id}.pdf",
    summary="An invoice or credit note as PDF",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "the document as an attachment"}},
)
def invoice_pdf(invoice_id: str, scope: Scope) -> Response:
    require_prepaid(scope, "Orders & invoices")
    rows = scope.query("console_invoice", invoice=invoice_id)
    if not rows:
        raise not_found(f"no invoice {invoice_id!r} in this account")
    document = render_invoice(_invoice.decode(rows[0][0]))
    return Response(
        document,
        media_type="application/pdf",
        headers={"Content-Disposition": attachment(f"{invoice_id}.pdf"), "Cache-Control": "no-store"},
    )

