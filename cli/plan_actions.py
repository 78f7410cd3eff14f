"""Operators' actions: `metering plans requests|extend|decline` and `metering orders paid|failed|refund`.

Each action is one event on a billing topic (``extension_granted``/``extension_declined`` on
billing-plans, ``payment_updated`` on billing-orders), with an id derived from what it decides,
so running a command twice decides once; the balance and order processors apply them. Finding an
extension request, or an order's state, reads ClickHouse (``extension_events``, ``orders``) as
`metering plans` does: directly on a server, through the running store's operators' route when it
holds the embedded database. A decision the processor would not apply (an order it does not know,
a payment for an order that is not pending, a refund of an unpaid one) is refused here, saying
what is wrong, rather than announced as recorded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Final

import msgspec

from cli.store_client import StoreHttpError, StoreUnreachableError
from cli.usage_command import StoreBusyError, open_client, running_store, store_client
from consumers.reports.operators import (
    ExtensionRequest,
    OrderView,
    order_json,
    query_extension_requests,
    query_order_state,
    requests_json,
)
from pipeline.contract.events import ExtensionDeclined, ExtensionGranted
from pipeline.infra.publish import Publisher
from pipeline.infra.settings import Settings
from pipeline.orders.events import PaymentResult, PaymentUpdated
from pipeline.rules.billing import derived_id

__all__ = [
    "ActionError",
    "ExtensionRequest",
    "OrderView",
    "decide_extension",
    "extension_requests",
    "order_json",
    "order_state",
    "query_extension_requests",
    "query_order_state",
    "record_payment",
    "requests_json",
]

#: The state a payment of each status needs, as the order processor applies it (pipeline.orders.book).
PAYMENT_NEEDS: Final[dict[str, str]] = {"paid": "pending", "failed": "pending", "refunded": "paid"}


class ActionError(RuntimeError):
    """The action cannot be taken; the message says why and what to do."""


def extension_requests(
    settings: Settings, *, request: str | None = None, account: str | None = None
) -> list[ExtensionRequest]:
    """The requests, asked of the running store when it holds the embedded database, else read here."""
    settings = settings.with_clickhouse_default()
    if settings.embedded_clickhouse:
        api = running_store(settings)
        if api is not None:
            params = [(k, v) for k, v in (("request", request), ("account", account)) if v is not None]
            try:
                text = store_client(settings, api).get_text("/plans/extension-requests", params)
            except (StoreHttpError, StoreUnreachableError) as exc:
                raise StoreBusyError(f"the running metering service at {api} did not answer the lookup: {exc}") from exc
            return [ExtensionRequest(**item) for item in json.loads(text)["requests"]]
    client = open_client(settings)
    try:
        return query_extension_requests(client, settings.clickhouse_database, request=request, account=account)
    finally:
        client.close()


def order_state(settings: Settings, *, account: str, order: str) -> OrderView | None:
    """The order's state, asked of the running store when it holds the embedded database, else read here."""
    settings = settings.with_clickhouse_default()
    if settings.embedded_clickhouse:
        api = running_store(settings)
        if api is not None:
            try:
                text = store_client(settings, api).get_text("/orders/state", [("account", account), ("order", order)])
            except (StoreHttpError, StoreUnreachableError) as exc:
                raise StoreBusyError(f"the running metering service at {api} did not answer the lookup: {exc}") from exc
            found = json.loads(text)["order"]
            return None if found is None else OrderView(**found)
    client = open_client(settings)
    try:
        return query_order_state(client, settings.clickhouse_database, account=account, order=order)
    finally:
        client.close()


def decide_extension(
    settings: Settings,
    publisher: Publisher,
    request_id: str,
    *,
    grant: bool,
    days: int | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> ExtensionRequest:
    """Grant (``days`` as asked unless given) or decline a pending request; ActionError if it is not pending."""
    found = extension_requests(settings, request=request_id)
    if not found:
        raise ActionError(f"no extension request {request_id!r}: `metering plans requests` lists them")
    request = found[0]
    if request.status != "pending":
        raise ActionError(f"extension request {request_id!r} was already {request.status}")
    occurred_at = now or datetime.now(UTC)
    event_id = derived_id(f"extension|{request.app_id}|{request_id}|decision")
    event: ExtensionGranted | ExtensionDeclined
    if grant:
        event = ExtensionGranted(
            event_id=event_id,
            occurred_at=occurred_at,
            account_id=request.account_id,
            app_id=request.app_id,
            request_id=request_id,
            days=days or request.days,
        )
    else:
        event = ExtensionDeclined(
            event_id=event_id,
            occurred_at=occurred_at,
            account_id=request.account_id,
            app_id=request.app_id,
            request_id=request_id,
            reason=reason or None,
        )
    publisher.publish(settings.topics.plans, request.app_id, msgspec.json.encode(event))
    return request


def record_payment(
    settings: Settings,
    publisher: Publisher,
    *,
    account_id: str,
    order_id: str,
    status: PaymentResult,
    provider: str = "transfer",
    payment_method: str | None = None,
    reference: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> PaymentUpdated:
    """An operator's word on an order (money arrived, never will, or was paid back), on billing-orders.

    ActionError, publishing nothing, when the order processor would not apply it: an order of the account it
    does not know, or one not in the state the payment needs (``PAYMENT_NEEDS``).
    """
    found = order_state(settings, account=account_id, order=order_id)
    if found is None:
        raise ActionError(
            f"no order {order_id!r} in account {account_id!r}: check both (the account's admins see their orders on "
            "Orders & invoices); an order created a moment ago appears once the order processor has applied it"
        )
    needed = PAYMENT_NEEDS[status]
    if found.payment_status != needed:
        done = f" (invoice {found.invoice_id})" if found.invoice_id and found.payment_status == "paid" else ""
        rule = "a refund applies only to a paid order" if status == "refunded" else f"only a pending order is {status}"
        raise ActionError(
            f"order {order_id} of {account_id} is {found.payment_status}{done}: {rule}, so the order processor would "
            "not apply this; nothing was recorded"
        )
    event = PaymentUpdated(
        event_id=derived_id(f"operator|{account_id}|{order_id}|{status}"),
        occurred_at=now or datetime.now(UTC),
        account_id=account_id,
        order_id=order_id,
        status=status,
        provider=provider,
        payment_method=payment_method,
        reference=reference,
        reason=reason,
    )
    publisher.publish(settings.topics.orders, account_id, msgspec.json.encode(event))
    return event
