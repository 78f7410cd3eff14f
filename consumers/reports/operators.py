"""Operators' lookups in the store: extension requests and an order's state, for commands and the console.

The operators' routes (``console/routers/plan_operators.py``) answer them from the store's database, and
`metering plans requests` / `metering orders paid|failed|refund` (``cli/plan_actions.py``) read them
directly or through those routes: one query and one JSON shape for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from consumers.clickhouse.usage import named_query

__all__ = [
    "ExtensionRequest",
    "OrderView",
    "order_json",
    "query_extension_requests",
    "query_order_state",
    "requests_json",
]


@dataclass(frozen=True, slots=True)
class ExtensionRequest:
    request_id: str
    account_id: str
    app_id: str
    days: int
    reason: str
    requested_by: str | None
    requested_at: str
    status: str


def query_extension_requests(
    client: Any, database: str, *, request: str | None = None, account: str | None = None
) -> list[ExtensionRequest]:
    """Extension requests (and whether they are pending) straight from ClickHouse."""
    rows = named_query(client, database, "extension_requests", request=request, account=account)
    return [
        ExtensionRequest(
            request_id=str(r[0]),
            account_id=str(r[1]),
            app_id=str(r[2]),
            days=int(r[3] or 0),
            reason=str(r[4] or ""),
            requested_by=None if r[5] is None else str(r[5]),
            requested_at=_iso(r[6]),
            status=str(r[7]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class OrderView:
    """An order as the read model has it (``orders``): enough to say whether a payment applies."""

    order_id: str
    account_id: str
    app_id: str
    payment_status: str
    invoice_id: str | None
    credit_note_id: str | None
    amount: str
    currency: str


def query_order_state(client: Any, database: str, *, account: str, order: str) -> OrderView | None:
    """The order's latest state straight from ClickHouse, or None."""
    from pipeline.balance.money import format_money  # noqa: PLC0415

    rows = named_query(client, database, "order_state", account=account, order=order)
    if not rows:
        return None
    order_id, account_id, app_id, status, invoice_id, credit_note_id, amount, currency = rows[0]
    return OrderView(
        str(order_id),
        str(account_id),
        str(app_id),
        str(status),
        invoice_id or None,
        credit_note_id or None,
        format_money(amount),
        str(currency),
    )


def order_json(order: OrderView | None) -> dict[str, Any]:
    return {"order": None if order is None else asdict(order)}


def requests_json(requests: Sequence[ExtensionRequest]) -> dict[str, Any]:
    return {"requests": [asdict(r) for r in requests]}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)
