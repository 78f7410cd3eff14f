"""What the Plan & usage page says about an app at an instant: its status and its notices.

Pure: the balance processor's latest view of the app (its ``balance-state`` snapshot, as stored in
ClickHouse), the plan catalogue and "now" in; the status and the notices out. Computed at read
time rather than stored, because they depend on the clock: a plan expires, a scheduled
downgrade takes effect, the 30 days before an expiry begin, without any event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from pipeline.balance.catalog import PlanCatalog

AppStatus = Literal["active", "low", "depleted", "expired", "setup"]
#: A plan expiring within this is announced.
EXPIRY_NOTICE: Final = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class AppView:
    """The fields of an app's snapshot the page needs (None where the processor has not said)."""

    plan: str | None
    balance_status: str | None  # active | low | depleted
    balance: str | None
    threshold: str | None
    currency: str | None
    expires_at: datetime | None
    scheduled_plan: str | None
    scheduled_at: datetime | None
    extension_request_id: str | None = None
    extension_days: int | None = None
    extension_reason: str | None = None
    extension_requested_at: datetime | None = None


def app_status(view: AppView, now: datetime) -> AppStatus:
    """``setup`` before the first plan; ``expired`` once the plan's term is over (renew or extend it);
    else the balance's status (``active``, ``low``, ``depleted``)."""
    if view.plan is None:
        return "setup"
    if view.expires_at is not None and view.expires_at <= now:
        return "expired"
    if view.balance_status in ("low", "depleted"):
        return view.balance_status  # type: ignore[return-value]
    return "active"


def notices(view: AppView, now: datetime, catalog: PlanCatalog) -> list[dict[str, Any]]:
    """The app's notices, most pressing first: each a ``type``, a ``message`` and its details."""
    out: list[dict[str, Any]] = []
    if view.expires_at is not None:
        date = view.expires_at.date().isoformat()
        if view.expires_at <= now:
            out.append(
                _notice(
                    "plan_expired",
                    f"The {view.plan} plan expired on {date}: renew it or ask for an extension.",
                    date=date,
                )
            )
        elif view.expires_at - now <= EXPIRY_NOTICE:
            out.append(
                _notice(
                    "plan_expiring",
                    f"The {view.plan} plan expires on {date}.",
                    date=date,
                    expires_at=_iso(view.expires_at),
                )
            )
    if view.plan is not None and view.balance_status == "depleted":
        out.append(
            _notice(
                "balance_depleted",
                f"The balance is {view.balance} {view.currency}: add funds to serve users again.",
                balance=view.balance,
                currency=view.currency,
            )
        )
    elif view.plan is not None and view.balance_status == "low":
        out.append(
            _notice(
                "balance_low",
                f"The balance is {view.balance} {view.currency}, at or under {view.threshold}.",
                balance=view.balance,
                threshold=view.threshold,
                currency=view.currency,
            )
        )
    if view.scheduled_plan is not None and view.scheduled_at is not None and view.scheduled_at > now:
        current, coming = catalog.rank_of(view.plan), catalog.rank_of(view.scheduled_plan)
        kind = (
            "scheduled_downgrade"
            if current is not None and coming is not None and coming < current
            else "scheduled_change"
        )
        date = view.scheduled_at.date().isoformat()
        out.append(
            _notice(
                kind,
                f"Moves to the {view.scheduled_plan} plan on {date}.",
                plan=view.scheduled_plan,
                date=date,
                effective_at=_iso(view.scheduled_at),
            )
        )
    if view.extension_request_id is not None:
        requested = view.extension_requested_at
        out.append(
            _notice(
                "extension_pending",
                f"An extension of {view.extension_days} days is waiting for approval.",
                request_id=view.extension_request_id,
                days=view.extension_days,
                reason=view.extension_reason,
                requested_at=None if requested is None else _iso(requested),
            )
        )
    return out


def _notice(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, **details}


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
