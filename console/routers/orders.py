"""§3 Orders & invoices: ``GET /api/v1/orders`` and ``GET /api/v1/invoices/{invoice_id}.pdf``.

Read from the order processor's read model in ClickHouse (``orders``, ``invoices``; migration
011), scoped to the token's account in SQL. Not for enterprise accounts: they are billed by
contract, and both routes answer 403 for them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import Query
from fastapi.responses import JSONResponse, Response

from console.billing import Scope, require_prepaid
from console.deps import billing_router
from console.errors import not_found
from pipeline.orders.documents import render_invoice
from pipeline.orders.events import InvoiceIssued

router = billing_router(prefix="/api/v1", tags=["orders"])

_invoice: Any = msgspec.json.Decoder(InvoiceIssued)
_Limit = Annotated[int, Query(ge=1, le=1000, description="how many orders, newest first")]


@router.get("/orders", summary="The account's orders, newest first, with payment status and invoice")
def orders(scope: Scope, limit: _Limit = 100) -> JSONResponse:
    require_prepaid(scope, "Orders & invoices")
    rows = scope.query("console_orders", limit=limit)
    items = [
        {
            "order_id": order_id,
            "billing_date": None if billing_date is None else billing_date.isoformat(),
            "description": description,
            "cost": _money(amount),
            "currency": currency,
            "payment_method": payment_method,
            "payment_status": payment_status,
            "invoice_id": invoice_id,
            "credit_note_id": credit_note_id,
            "app_id": app_id,
            "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        for (
            order_id,
            billing_date,
            description,
            amount,
            currency,
            payment_method,
            payment_status,
            invoice_id,
            credit_note_id,
            app_id,
            created_at,
        ) in rows
    ]
    return JSONResponse({"orders": items}, headers={"Cache-Control": "no-store"})


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
        headers={"Content-Disposition": f'attachment; filename="{invoice_id}.pdf"', "Cache-Control": "no-store"},
    )


def _money(value: Any) -> str:
    from pipeline.balance.money import format_money  # noqa: PLC0415

    return format_money(value)
