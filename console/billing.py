"""What the Plan & usage and Orders & invoices sections work with: the catalogue, the event
publisher, remembered answers, the account's billing type, and the apps' view.

The store process puts the first three in ``ConsoleContext.extras`` (:func:`billing_extras`);
routes take them through the dependencies below. Every read is an :class:`AccountScope` query,
so it is bound to the token's account in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final

from fastapi import Depends

from console.context import ConsoleContext
from console.deps import account_scope, console_context
from console.errors import ApiError, forbidden
from console.idempotency import Idempotency
from console.tenancy import AccountScope
from pipeline.balance.catalog import PlanCatalog, load_catalog
from pipeline.balance.money import format_amount
from pipeline.balance.notices import AppView, app_status, notices
from pipeline.balance.periods import next_period_start, period_start
from pipeline.balance.plans import DEFAULT_CURRENCY
from pipeline.contract.decode import to_ms
from pipeline.contract.events import ms_to_datetime
from pipeline.infra.publish import Publisher
from pipeline.infra.settings import Settings, Topics
from pipeline.orders.providers import BUILT_IN

__all__ = [
    "AppRow",
    "Catalog",
    "Events",
    "Known",
    "Remembered",
    "TopicNames",
    "apps_of",
    "billing_extras",
    "billing_type",
    "close_billing_extras",
    "require_prepaid",
    "views_of",
]

CATALOG: Final = "catalog"
PUBLISHER: Final = "publisher"
IDEMPOTENCY: Final = "idempotency"
PROVIDERS: Final = "payment_providers"


def billing_extras(settings: Settings, client: Any, database: str) -> dict[str, Any]:
    """What the store process adds to the console's context for these sections."""
    from pipeline.infra.publish import KafkaPublisher  # noqa: PLC0415 - the Kafka client loads only where it serves

    return {
        CATALOG: load_catalog(settings.plan_catalog),
        PUBLISHER: KafkaPublisher(settings),
        IDEMPOTENCY: Idempotency(client, database),
        PROVIDERS: sorted(BUILT_IN),
        "topics": settings.topics,
    }


def close_billing_extras(context: ConsoleContext) -> None:
    """Flush and close the publisher (at the store's stop: nothing it took is left unsent)."""
    found = context.extras.get(PUBLISHER)
    close = getattr(found, "close", None)
    if callable(close):
        close()


def _extra(context: ConsoleContext, name: str) -> Any:
    value = context.extras.get(name)
    if value is None:
        raise ApiError(503, f"this console serves no {name.replace('_', ' ')}: it was started without one")
    return value


def plan_catalog(context: Annotated[ConsoleContext, Depends(console_context)]) -> PlanCatalog:
    if CATALOG not in context.extras:
        context.extras[CATALOG] = load_catalog()
    catalog: PlanCatalog = context.extras[CATALOG]
    return catalog


def publisher(context: Annotated[ConsoleContext, Depends(console_context)]) -> Publisher:
    found: Publisher = _extra(context, PUBLISHER)
    return found


def topics(context: Annotated[ConsoleContext, Depends(console_context)]) -> Topics:
    found = context.extras.get("topics")
    return found if isinstance(found, Topics) else Topics()


def idempotency(context: Annotated[ConsoleContext, Depends(console_context)]) -> Idempotency:
    if IDEMPOTENCY not in context.extras:
        context.extras[IDEMPOTENCY] = Idempotency(context.client, context.database)
    found: Idempotency = context.extras[IDEMPOTENCY]
    return found


Catalog = Annotated[PlanCatalog, Depends(plan_catalog)]
Events = Annotated[Publisher, Depends(publisher)]
Remembered = Annotated[Idempotency, Depends(idempotency)]
TopicNames = Annotated[Topics, Depends(topics)]
Scope = Annotated[AccountScope, Depends(account_scope)]


def billing_type(scope: AccountScope) -> str:
    """``prepaid`` or ``enterprise``: the account's latest ``account_changed`` (prepaid without one)."""
    rows = scope.query("console_billing_type")
    return str(rows[0][0]) if rows and rows[0][0] else "prepaid"


def require_prepaid(scope: AccountScope, what: str) -> None:
    """403 for an enterprise account: it is billed by contract, the console does not take its money."""
    if billing_type(scope) == "enterprise":
        raise forbidden(
            "enterprise",
            f"{what} is not available to enterprise accounts, which are billed by contract: contact support",
        )


@dataclass(frozen=True, slots=True)
class AppRow:
    """An app as the page shows it (``as_json`` is the API's item)."""

    app_id: str
    view: AppView
    owner: str | None
    entitled: bool | None
    status: str
    month: str
    sessions: dict[str, int]
    cost: str
    notices: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        v = self.view
        currency = v.currency or DEFAULT_CURRENCY
        return {
            "app_id": self.app_id,
            "owner": self.owner,
            "plan": v.plan,
            "status": self.status,
            "balance": v.balance if v.balance is not None else format_amount(Decimal(0), currency),
            "currency": currency,
            "threshold": v.threshold,
            "entitled": self.entitled,
            "month": self.month,
            "sessions": self.sessions["billing_sessions"],
            **self.sessions,
            "cost": self.cost,
            "expires_at": None if v.expires_at is None else _iso(v.expires_at),
            "notices": self.notices,
        }


@dataclass(frozen=True, slots=True)
class Known:
    """The balance processor's latest word on an app (``version`` 0: it has published none yet)."""

    view: AppView
    owner: str | None
    entitled: bool | None
    version: int


def views_of(scope: AccountScope) -> dict[str, Known]:
    """Every app of the account, by id, with the view the processor published for it."""
    out: dict[str, Known] = {}
    for row in scope.query("console_apps"):
        (app_id, plan, currency, status, balance, threshold, entitled, owner, expires_at) = row[:9]
        scheduled_plan, scheduled_at, request_id, days, reason, requested_at, version = row[9:16]
        known = int(version or 0) > 0
        money = str(currency or DEFAULT_CURRENCY)  # amounts as the currency writes them: JPY 100, KWD 1.500
        view = AppView(
            plan=(plan or None) if known else None,
            balance_status=str(status) if known else None,
            balance=format_amount(Decimal(str(balance)), money) if known else None,
            threshold=format_amount(Decimal(str(threshold)), money) if known else None,
            currency=str(currency) if known else None,
            expires_at=_aware(expires_at),
            scheduled_plan=scheduled_plan,
            scheduled_at=_aware(scheduled_at),
            extension_request_id=request_id,
            extension_days=None if days is None else int(days),
            extension_reason=reason,
            extension_requested_at=_aware(requested_at),
        )
        out[str(app_id)] = Known(view, owner if known else None, bool(entitled) if known else None, int(version or 0))
    return out


def apps_of(scope: AccountScope, now: datetime, catalog: PlanCatalog) -> list[AppRow]:
    """Every app of the account with its status, this billing period's sessions and cost, and notices."""
    start_ms = period_start(to_ms(now))
    usage = _month_usage(scope, start_ms)
    out: list[AppRow] = []
    for app_id, known in views_of(scope).items():
        view = known.view
        currency = view.currency or DEFAULT_CURRENCY
        sessions, costs = usage.get(app_id, (_no_sessions(), {}))
        cost = costs.get(currency, Decimal(0))
        out.append(
            AppRow(
                app_id=app_id,
                view=view,
                owner=known.owner,
                entitled=known.entitled,
                status=app_status(view, now),
                month=ms_to_datetime(start_ms).strftime("%Y-%m"),
                sessions=sessions,
                cost=format_amount(cost, currency),
                notices=notices(view, now, catalog),
            )
        )
    return out


def _month_usage(scope: AccountScope, start_ms: int) -> dict[str, tuple[dict[str, int], dict[str, Decimal]]]:
    """Per app: this period's session counts, and cost by plan currency (never converted)."""
    rows = scope.query(
        "console_month_usage", **{"from": ms_to_datetime(start_ms), "to": ms_to_datetime(next_period_start(start_ms))}
    )
    out: dict[str, tuple[dict[str, int], dict[str, Decimal]]] = {}
    for app_id, currency, usage_n, alert_n, voice_n, cost, _unpriced in rows:
        sessions, costs = out.setdefault(str(app_id), (_no_sessions(), {}))
        sessions["usage_sessions"] += int(usage_n)
        sessions["alert_sessions"] += int(alert_n)
        sessions["voice_sessions"] += int(voice_n)
        sessions["billing_sessions"] += int(usage_n) + int(alert_n)
        if currency:
            costs[str(currency)] = costs.get(str(currency), Decimal(0)) + Decimal(cost)
    return out


def _no_sessions() -> dict[str, int]:
    return {"billing_sessions": 0, "usage_sessions": 0, "voice_sessions": 0, "alert_sessions": 0}


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=ms_to_datetime(0).tzinfo)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
