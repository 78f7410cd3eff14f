"""Operators' actions: `metering plans requests|extend|decline` and `metering orders paid|failed|refund`.

Each action is one event on a billing topic (``extension_granted``/``extension_declined`` on
billing-plans, ``payment_updated`` on billing-orders), with an id derived from what it decides,
so running a command twice decides once; the balance and order processors apply them. Finding an
extension request reads ClickHouse (``extension_events``) as `metering plans` does: directly on a
server, through the running store's operators' route when it holds the embedded database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from consumers.clickhouse.usage import named_query
from consumers.store_client import StoreHttpError, StoreUnreachableError
from consumers.usage_command import StoreBusyError, open_client, running_store, store_client
from pipeline.events import ExtensionDeclined, ExtensionGranted
from pipeline.orders.events import PaymentResult, PaymentUpdated
from pipeline.publish import Publisher
from pipeline.rules.billing import derived_id
from pipeline.settings import Settings

__all__ = [
    "ActionError",
    "ExtensionRequest",
    "decide_extension",
    "extension_requests",
    "query_extension_requests",
    "record_payment",
]


class ActionError(RuntimeError):
    """The action cannot be taken; the message says why and what to do."""


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


def requests_json(requests: Sequence[ExtensionRequest]) -> dict[str, Any]:
    return {"requests": [asdict(r) for r in requests]}


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
    """An operator's word on an order (money arrived, never will, or was paid back), on billing-orders."""
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


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)
