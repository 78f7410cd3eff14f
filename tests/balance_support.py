"""Builders for the balance tests: plans, top-ups and billing sessions with readable defaults."""

from __future__ import annotations

from pipeline.contract.events import FundsAdded, PlanChanged, ms_to_datetime
from pipeline.rules.config import MINUTE
from pipeline.rules.model import BillingSession, Kind
from tests.support import T0

APP = "support-bot"
ACCOUNT = "acme"


def plan(
    t: int = T0,
    usage: str = "1.00",
    alert: str = "0.10",
    voice: str = "2.00",
    *,
    event_id: str = "plan-1",
    name: str = "starter",
    currency: str = "USD",
    threshold: str = "50.00",
    app_id: str = APP,
) -> PlanChanged:
    return PlanChanged(
        event_id=event_id,
        occurred_at=ms_to_datetime(t),
        account_id=ACCOUNT,
        app_id=app_id,
        plan=name,
        price_per_usage_session=usage,
        price_per_alert_session=alert,
        price_per_voice_session=voice,
        currency=currency,
        low_balance_threshold=threshold,
    )


def funds(
    amount: str, t: int = T0, *, event_id: str = "funds-1", currency: str = "USD", app_id: str = APP
) -> FundsAdded:
    return FundsAdded(
        event_id=event_id,
        occurred_at=ms_to_datetime(t),
        account_id=ACCOUNT,
        app_id=app_id,
        amount=amount,
        currency=currency,
    )


def session(
    sid: str,
    start: int = T0,
    kind: Kind = "usage",
    *,
    length: int = 15 * MINUTE,
    closed: int | None = None,
    app_id: str = APP,
) -> BillingSession:
    """A billing session; ``closed`` is its conversation session's end (the dedupe bucket)."""
    end = start if kind == "alert" else start + length
    conversation_end = None if kind == "alert" else (end if closed is None else closed)
    return BillingSession(
        billing_session_id=sid,
        kind=kind,
        account_id=ACCOUNT,
        app_id=app_id,
        conversation_session_id=None if kind == "alert" else f"cs-{sid}",
        conversation_id=None if kind == "alert" else f"c-{sid}",
        user_id="u-1",
        channel="web" if kind == "usage" else ("voice" if kind == "voice" else None),
        session_index=0,
        started_ms=start,
        ended_ms=end,
        conversation_started_ms=None if kind == "alert" else start,
        conversation_ended_ms=conversation_end,
    )
