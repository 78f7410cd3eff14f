"""§2 Plan & usage: ``GET /api/v1/apps`` and the Manage actions (plan, funds, extension, owner).

Each action is one event, published before the route answers (``202 Accepted``): a
``plan_changed``, ``extension_requested`` or ``owner_changed`` on billing-plans, applied by the
balance processor (the one writer of balances and plans); an ``order_created`` on billing-orders,
applied by the order processor, which credits the funds only once the payment succeeded. So the
page shows a change once the processor has applied it, usually within a second.

Every mutating route takes an ``Idempotency-Key`` (``console.idempotency``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

import msgspec
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from console.auth import Principal
from console.billing import (
    PROVIDERS,
    Catalog,
    Events,
    Remembered,
    Scope,
    TopicNames,
    apps_of,
    billing_type,
    require_prepaid,
    views_of,
)
from console.context import ConsoleContext
from console.deps import billing_router, console_context, require_billing_admin
from console.errors import bad_parameter, conflict
from console.idempotency import HEADER, Answer, Idempotency, RequestIds, replayed_headers
from console.tenancy import AccountScope
from pipeline.balance.catalog import CatalogPlan, PlanCatalog
from pipeline.balance.money import decimals_of, format_amount, format_money, is_currency, minor_units
from pipeline.balance.notices import AppView
from pipeline.balance.periods import plan_change
from pipeline.balance.plans import DEFAULT_CURRENCY
from pipeline.contract.decode import to_ms
from pipeline.contract.events import ExtensionRequested, OwnerChanged, ms_to_datetime
from pipeline.infra.publish import Publisher
from pipeline.infra.settings import Topics
from pipeline.orders.book import description_of
from pipeline.orders.events import OrderCreated

router = billing_router(prefix="/api/v1", tags=["plans"])
#: An amount's text: 15 digits, a point and 6 decimals fit with room for spaces (orders stay bounded, docs/orders.md).
MAX_AMOUNT_CHARACTERS: Final = 40

Context = Annotated[ConsoleContext, Depends(console_context)]
Admin = Annotated[Principal, Depends(require_billing_admin)]
Key = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Makes a retry safe: the same key and body returns the first answer and changes nothing (keys "
        "are kept); the same key with another body is 409",
    ),
]
_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"description": "accepted: published, the processor applies it within moments"}
}


@dataclass(frozen=True)
class Manage:
    """What a Manage action needs: who asks, the account, the publisher and the remembered answers."""

    principal: Principal
    scope: AccountScope
    context: ConsoleContext
    events: Publisher
    topics: Topics
    remembered: Idempotency
    route: str
    key: str | None

    def run(self, body: BaseModel, act: Callable[[RequestIds], Answer]) -> JSONResponse:
        """``act`` once per Idempotency-Key (or every time without one), as JSON."""
        answer, replayed = self.remembered.run(self.scope, self.route, self.key, body.model_dump(), act)
        headers = {"Cache-Control": "no-store", **replayed_headers(replayed)}
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)

    def now(self) -> datetime:
        """The request's instant, to the millisecond (events carry milliseconds)."""
        return ms_to_datetime(to_ms(self.context.now()))


def manage(  # noqa: PLR0917 - FastAPI passes each dependency by name
    request: Request,
    principal: Admin,
    scope: Scope,
    context: Context,
    events: Events,
    topics: TopicNames,
    remembered: Remembered,
    idempotency_key: Key = None,
) -> Manage:
    return Manage(principal, scope, context, events, topics, remembered, f"POST {request.url.path}", idempotency_key)


Action = Annotated[Manage, Depends(manage)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanChangeIn(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"plan": "growth"}]})
    plan: str = Field(min_length=1, max_length=128, description="a plan of the catalogue")
    confirm_currency_change: bool = Field(
        default=False,
        description="required (true) to move an app that holds money to a plan in another currency: its balance "
        "stays in the old currency and stops counting (currencies are never converted); without it such a change "
        "is a 400 naming plan",
    )


class FundsIn(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"amount": "100.00", "currency": "USD", "payment_method": "manual"}]},
    )
    amount: str | int | float = Field(description='a decimal amount above zero, as a string ("100.00")')
    currency: str | None = Field(
        default=None,
        max_length=3,
        description="ISO 4217 code of the app's plan in force (the default), or of its scheduled plan; the amount "
        "has at most as many decimals as the currency has. Any other currency is a 400: it would never count",
    )
    payment_method: str = Field(
        default="manual", max_length=128, description="a payment provider: manual (paid at once), transfer"
    )


class ExtensionIn(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"days": 14, "reason": "Waiting for the annual contract"}]}
    )
    days: int = Field(ge=1, le=366, description="days asked for")
    reason: str = Field(min_length=1, max_length=1000)


class OwnerIn(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": "u-42"}]})
    user_id: str = Field(min_length=1, max_length=128, description="the new owner's user id")


@router.get("/apps", summary="Every app of the account: plan, status, balance, this month's usage and cost, notices")
def apps(scope: Scope, context: Context, catalog: Catalog) -> JSONResponse:
    now = context.now()
    rows = apps_of(scope, now, catalog)
    body = {
        "account_id": scope.account_id,
        "billing_type": billing_type(scope),
        "as_of": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "apps": [row.as_json() for row in rows],
        "plans": [
            {
                "plan": name,
                "rank": catalog.plans[name].rank,
                "currency": catalog.plans[name].currency,
                "term_months": catalog.plans[name].term_months,
            }
            for name in catalog.names
        ],
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/apps/{app}/plan", status_code=202, summary="Change the app's plan", responses=_ACCEPTED)
def change_plan(app: str, body: PlanChangeIn, action: Action, catalog: Catalog) -> JSONResponse:
    """A plan of higher rank takes effect now; one of lower rank at the start of the next billing period."""
    action.scope.require_app(app)
    require_prepaid(action.scope, "Changing plans")
    chosen = catalog.get(body.plan)
    if chosen is None:
        raise bad_parameter("plan", f"unknown plan {body.plan!r}: choose one of {', '.join(catalog.names)}")

    def act(ids: RequestIds) -> Answer:
        now = action.now()
        known = views_of(action.scope).get(app)
        view = None if known is None else known.view
        current = None if view is None else view.plan
        _check_currency_change(app, view, chosen, body.confirm_currency_change)
        kind, effective_ms = plan_change(
            current_rank=catalog.rank_of(current),
            current_name=current,
            expires_ms=None if view is None or view.expires_at is None else to_ms(view.expires_at),
            new_rank=chosen.rank,
            new_name=chosen.name,
            now_ms=to_ms(now),
        )
        effective_at = ms_to_datetime(effective_ms)
        event = chosen.event(
            event_id=ids.derive("plan"),
            occurred_at=now,
            account_id=action.scope.account_id,
            app_id=app,
            effective_at=effective_at,
        )
        action.events.publish(action.topics.plans, app, msgspec.json.encode(event))
        return Answer(
            202,
            {
                "app_id": app,
                "plan": chosen.name,
                "previous_plan": current,
                "change": kind,
                "effective_at": _iso(effective_at),
                "event_id": event.event_id,
            },
        )

    return action.run(body, act)


@router.post("/apps/{app}/funds", status_code=202, summary="Add funds: creates an order", responses=_ACCEPTED)
def add_funds(app: str, body: FundsIn, action: Action, catalog: Catalog) -> JSONResponse:
    """The funds reach the balance only once the order's payment succeeded (``GET /api/v1/orders``).

    Only in a currency the balance counts: the plan in force's, or a scheduled plan's (funds for
    after the change, counting from its date).
    """
    action.scope.require_app(app)
    require_prepaid(action.scope, "Adding funds")
    if body.currency is not None:
        _check_currency(body.currency)
        _amount(body.amount, body.currency)
    providers = action.context.extras.get(PROVIDERS) or ["manual"]
    if body.payment_method not in providers:
        raise bad_parameter("payment_method", f"unknown payment method: use one of {', '.join(providers)}")

    def act(ids: RequestIds) -> Answer:
        known = views_of(action.scope).get(app)
        fundable = _fundable_currencies(None if known is None else known.view, catalog)
        currency = body.currency or next(iter(fundable))
        if currency not in fundable:
            raise bad_parameter(
                "currency",
                f"{app}'s balance is kept in {' and, from its scheduled plan, '.join(fundable)}: funds in {currency} "
                f"would never count (currencies are never converted); add funds in {next(iter(fundable))}",
            )
        amount = _amount(body.amount, currency)
        order = OrderCreated(
            event_id=ids.derive("order-created"),
            occurred_at=action.now(),
            account_id=action.scope.account_id,
            app_id=app,
            order_id=ids.derive("order"),
            amount=amount,
            currency=currency,
            payment_method=body.payment_method,
            requested_by=action.principal.user[:128] or None,
        )
        action.events.publish(action.topics.orders, action.scope.account_id, msgspec.json.encode(order))
        shown = format_amount(Decimal(amount), currency)
        answer: dict[str, Any] = {
            "order_id": order.order_id,
            "app_id": app,
            "description": description_of(order),
            "cost": shown,
            "amount": shown,
            "currency": currency,
            "payment_method": body.payment_method,
            "payment_status": "pending",
            "created_at": _iso(order.occurred_at),
        }
        counts_from = fundable[currency]
        if counts_from is not None:
            answer["counts_from"] = _iso(counts_from)
        return Answer(202, answer)

    return action.run(body, act)


@router.post(
    "/apps/{app}/extension-requests",
    status_code=202,
    summary="Ask for more days on the plan's term",
    responses=_ACCEPTED,
)
def request_extension(app: str, body: ExtensionIn, action: Action) -> JSONResponse:
    """Recorded and shown as a notice until an operator grants or declines it (`metering plans extend|decline`)."""
    action.scope.require_app(app)

    def act(ids: RequestIds) -> Answer:
        known = views_of(action.scope).get(app)
        if known is None or known.view.expires_at is None:
            raise conflict("the app's plan has no term, so there is nothing to extend")
        if known.view.extension_request_id is not None:
            raise conflict(
                f"extension request {known.view.extension_request_id} is still waiting for an operator: "
                "wait for its answer before asking again"
            )
        event = ExtensionRequested(
            event_id=ids.derive("extension-event"),
            occurred_at=action.now(),
            account_id=action.scope.account_id,
            app_id=app,
            request_id=ids.derive("extension"),
            days=body.days,
            reason=body.reason,
            requested_by=action.principal.user[:128] or None,
        )
        action.events.publish(action.topics.plans, app, msgspec.json.encode(event))
        return Answer(
            202,
            {
                "request_id": event.request_id,
                "app_id": app,
                "days": body.days,
                "reason": body.reason,
                "status": "pending",
                "requested_at": _iso(event.occurred_at),
            },
        )

    return action.run(body, act)


@router.post("/apps/{app}/owner", status_code=202, summary="Change the app's owner", responses=_ACCEPTED)
def change_owner(app: str, body: OwnerIn, action: Action) -> JSONResponse:
    action.scope.require_app(app)

    def act(ids: RequestIds) -> Answer:
        event = OwnerChanged(
            event_id=ids.derive("owner"),
            occurred_at=action.now(),
            account_id=action.scope.account_id,
            app_id=app,
            user_id=body.user_id,
            changed_by=action.principal.user[:128] or None,
        )
        action.events.publish(action.topics.plans, app, msgspec.json.encode(event))
        return Answer(202, {"app_id": app, "owner": body.user_id, "event_id": event.event_id})

    return action.run(body, act)


def _check_currency(currency: str) -> None:
    """400 naming ``currency`` unless it is an ISO 4217 currency in use."""
    if not is_currency(currency):
        raise bad_parameter(
            "currency", f"{currency!r} is not an ISO 4217 currency: three capital letters in use, e.g. USD or EUR"
        )


def _fundable_currencies(view: AppView | None, catalog: PlanCatalog) -> dict[str, datetime | None]:
    """The currencies the app's balance counts, first the plan in force's (None: from now), then a scheduled
    plan's in another currency (from its date). Without a plan the ledger keeps USD, as it does."""
    current = (view.currency if view is not None else None) or DEFAULT_CURRENCY
    out: dict[str, datetime | None] = {current: None}
    scheduled = None if view is None or view.scheduled_plan is None else catalog.get(view.scheduled_plan)
    if scheduled is not None and view is not None and scheduled.currency not in out:
        out[scheduled.currency] = view.scheduled_at
    return out


def _check_currency_change(app: str, view: AppView | None, chosen: CatalogPlan, confirmed: bool) -> None:
    """400 naming ``plan`` for a move to another currency while the app holds money, unless it is confirmed."""
    current = (view.currency if view is not None else None) or DEFAULT_CURRENCY
    balance = Decimal(view.balance) if view is not None and view.balance is not None else Decimal(0)
    if chosen.currency == current or balance.is_zero() or confirmed:
        return
    raise bad_parameter(
        "plan",
        f"{chosen.name} is priced in {chosen.currency}, and {app}'s balance of {format_amount(balance, current)} "
        f"{current} would stay in {current} and stop counting (currencies are never converted): choose a plan in "
        f"{current}, or send confirm_currency_change: true to change anyway",
    )


def _amount(value: str | int | float, currency: str) -> str:
    """The amount as the contract's decimal string; 400 naming ``amount`` otherwise (``currency`` is checked)."""
    if isinstance(value, bool):
        raise bad_parameter("amount", 'must be a decimal amount, e.g. "100.00"')
    if isinstance(value, str) and len(value) > MAX_AMOUNT_CHARACTERS:
        raise bad_parameter("amount", f'at most {MAX_AMOUNT_CHARACTERS} characters: write it like "100.00"')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise bad_parameter("amount", f'{value!r} is not a decimal amount: write it like "100.00"') from None
    if not amount.is_finite() or amount <= 0:
        raise bad_parameter("amount", "must be greater than 0")
    places = minor_units(currency)
    if decimals_of(amount) > places:
        raise bad_parameter("amount", f"{currency} has {places} decimals: {value} has more")
    if amount >= Decimal(10) ** 15:
        raise bad_parameter("amount", "must be under 1,000,000,000,000,000")
    return format_money(amount)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
