"""R12 plans: what each app pays per billing session, and from when.

A plan is in force from its ``occurred_at`` until the next plan of the same app. Plans are
ordered by ``(occurred_at ms, event_id)``, so two plans stamped with the same millisecond
have a fixed order everywhere: the one with the greater ``event_id`` is the one in force
(the other was in force for no instant at all). The timeline is a pure function of the set
of plan events seen, whatever order they arrived in.

Two decisions the product definition leaves open (``docs/balances.md`` gives the reasons):

- **Before the first plan** a session has no price. It is never priced at zero and never by
  a guessed plan: the ledger holds it as *unpriced* and prices it when a plan whose
  ``occurred_at`` is at or before the session's start arrives.
- **A plan without prepaid limit** is a plan whose *name* is listed in the deployment's
  ``unlimited_plans`` setting (empty by default: every plan is prepaid). The event contract
  has no such flag; see ``is_unlimited``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Collection
from decimal import Decimal
from typing import Final

from msgspec import Struct, field

from pipeline.decode import to_ms
from pipeline.events import PlanChanged, parse_decimal
from pipeline.rules.model import Kind

DEFAULT_LOW_BALANCE_THRESHOLD: Final = Decimal("50.00")
DEFAULT_CURRENCY: Final = "USD"


class Plan(Struct, frozen=True, kw_only=True):
    """One ``plan_changed``, with money as ``Decimal`` (msgspec writes it as a decimal string)."""

    app_id: str
    event_id: str
    effective_ms: int
    plan: str
    price_per_usage_session: Decimal
    price_per_alert_session: Decimal
    price_per_voice_session: Decimal
    currency: str = DEFAULT_CURRENCY
    low_balance_threshold: Decimal = DEFAULT_LOW_BALANCE_THRESHOLD
    idle_timeout_minutes: int | None = None

    @classmethod
    def from_event(cls, event: PlanChanged) -> Plan:
        return cls(
            app_id=event.app_id,
            event_id=event.event_id,
            effective_ms=to_ms(event.occurred_at),
            plan=event.plan,
            price_per_usage_session=parse_decimal(event.price_per_usage_session),
            price_per_alert_session=parse_decimal(event.price_per_alert_session),
            price_per_voice_session=parse_decimal(event.price_per_voice_session),
            currency=event.currency,
            low_balance_threshold=parse_decimal(event.low_balance_threshold),
            idle_timeout_minutes=event.idle_timeout_minutes,
        )

    @property
    def key(self) -> tuple[int, str]:
        """The plan's place in its app's timeline."""
        return (self.effective_ms, self.event_id)

    def price(self, kind: Kind) -> Decimal:
        if kind == "usage":
            return self.price_per_usage_session
        if kind == "alert":
            return self.price_per_alert_session
        return self.price_per_voice_session


def is_unlimited(plan: Plan | None, unlimited_plans: Collection[str]) -> bool:
    """The one rule for "plan without prepaid limit": its name is in ``unlimited_plans``.

    Why not something implicit: "the app never had funds" cannot tell a postpaid customer from
    one whose first top-up is late, and would make every new app free until then; a naming
    convention is invisible to whoever names plans. A setting is explicit, reviewable, and an
    app moves in or out of it with an ordinary ``plan_changed``. No plan: prepaid.
    """
    return plan is not None and plan.plan in unlimited_plans


class PlanTimeline(Struct, kw_only=True):
    """The plans of one app, sorted by ``Plan.key``; duplicates (same key) are kept once."""

    plans: list[Plan] = field(default_factory=list)

    def add(self, plan: Plan) -> bool:
        """Insert ``plan``; False if a plan with the same ``(occurred_at, event_id)`` is there.

        The contract makes ``event_id`` unique per event, so the same key is the same event
        delivered again: the first copy stands.
        """
        key = plan.key
        i = bisect_right(self.plans, key, key=_key)
        if i and self.plans[i - 1].key == key:
            return False
        self.plans.insert(i, plan)
        return True

    def at(self, t_ms: int) -> Plan | None:
        """The plan in force at ``t_ms``: the last one with ``occurred_at <= t_ms``; None before any."""
        i = bisect_right(self.plans, t_ms, key=_effective)
        return self.plans[i - 1] if i else None

    def latest(self) -> Plan | None:
        """The plan with the greatest key: the one that sets today's threshold and currency."""
        return self.plans[-1] if self.plans else None

    def before(self, plan: Plan) -> Plan | None:
        """The plan whose time in force ``plan`` ends, if any."""
        i = bisect_left(self.plans, plan.key, key=_key)
        return self.plans[i - 1] if i else None

    def next_after(self, plan: Plan) -> Plan | None:
        """The plan that ends ``plan``'s time in force, if any."""
        i = bisect_right(self.plans, plan.key, key=_key)
        return self.plans[i] if i < len(self.plans) else None


class PlanBook:
    """Every app's plan timeline: ``plan_at(app, t)`` for whoever needs a price or a timeout."""

    __slots__ = ("timelines",)

    def __init__(self) -> None:
        self.timelines: dict[str, PlanTimeline] = {}

    def apply(self, event: PlanChanged) -> bool:
        """Record a ``plan_changed``; False if it was already recorded."""
        timeline = self.timelines.setdefault(event.app_id, PlanTimeline())
        return timeline.add(Plan.from_event(event))

    def plan_at(self, app_id: str, t_ms: int) -> Plan | None:
        timeline = self.timelines.get(app_id)
        return None if timeline is None else timeline.at(t_ms)


def _key(plan: Plan) -> tuple[int, str]:
    return (plan.effective_ms, plan.event_id)


def _effective(plan: Plan) -> int:
    return plan.effective_ms
