"""R12 plans: what each app pays per billing session, and from when.

A plan is in force from its ``effective_at`` (default its ``occurred_at``) until the next plan
of the same app. Plans are ordered by ``(effective_at ms, event_id)``, so two plans taking
effect at the same millisecond have a fixed order everywhere: the one with the greater
``event_id`` is the one in force (the other was in force for no instant at all). A plan
*scheduled* for later (a downgrade at the next billing period) is replaced if another plan is
decided before it takes effect. The timeline is a pure function of the set of plan events
seen, whatever order they arrived in.

Two decisions the product definition leaves open (``docs/balances.md`` gives the reasons):

- **Before the first plan** a session has no price. It is never priced at zero and never by
  a guessed plan: the ledger holds it as *unpriced* and prices it when a plan whose
  ``effective_at`` is at or before the session's start arrives.
- **A plan without prepaid limit** is a plan whose *name* is listed in the deployment's
  ``unlimited_plans`` setting (empty by default: every plan is prepaid). The event contract
  has no such flag; see ``is_unlimited``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Collection
from decimal import Decimal
from typing import Final

from msgspec import Struct, field

from pipeline.balance.periods import add_months
from pipeline.contract.decode import to_ms
from pipeline.contract.events import PlanChanged, parse_decimal
from pipeline.rules.config import DAY, MINUTE
from pipeline.rules.model import Kind

DEFAULT_LOW_BALANCE_THRESHOLD: Final = Decimal("50.00")
DEFAULT_CURRENCY: Final = "USD"
FOREVER: Final = 2**62


class Plan(Struct, frozen=True, kw_only=True):
    """One ``plan_changed``, with money as ``Decimal`` (msgspec writes it as a decimal string).

    ``effective_ms`` is when it takes effect (``effective_at``, default ``occurred_at``);
    ``decided_ms`` is when it was decided (``occurred_at``; None in states saved before plans
    could be scheduled, where the two were the same instant).
    """

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
    decided_ms: int | None = None
    term_months: int | None = None

    @classmethod
    def from_event(cls, event: PlanChanged) -> Plan:
        decided = to_ms(event.occurred_at)
        return cls(
            app_id=event.app_id,
            event_id=event.event_id,
            effective_ms=decided if event.effective_at is None else to_ms(event.effective_at),
            plan=event.plan,
            price_per_usage_session=parse_decimal(event.price_per_usage_session),
            price_per_alert_session=parse_decimal(event.price_per_alert_session),
            price_per_voice_session=parse_decimal(event.price_per_voice_session),
            currency=event.currency,
            low_balance_threshold=parse_decimal(event.low_balance_threshold),
            idle_timeout_minutes=event.idle_timeout_minutes,
            decided_ms=decided,
            term_months=event.term_months,
        )

    @property
    def key(self) -> tuple[int, str]:
        """The plan's place in its app's timeline."""
        return (self.effective_ms, self.event_id)

    @property
    def decided(self) -> int:
        return self.effective_ms if self.decided_ms is None else self.decided_ms

    @property
    def decision_key(self) -> tuple[int, str]:
        """The order in which plans were decided: a later decision replaces a change still pending."""
        return (self.decided, self.event_id)

    @property
    def scheduled(self) -> bool:
        """Decided for a later instant (a downgrade at the next billing period), not at once."""
        return self.effective_ms > self.decided

    def price(self, kind: Kind) -> Decimal:
        if kind == "usage":
            return self.price_per_usage_session
        if kind == "alert":
            return self.price_per_alert_session
        return self.price_per_voice_session

    def term_end(self, extension_days: int = 0) -> int | None:
        """When the plan's term ends: ``term_months`` calendar months after it took effect, plus extensions."""
        if self.term_months is None:
            return None
        return add_months(self.effective_ms, self.term_months) + extension_days * DAY


def is_unlimited(plan: Plan | None, unlimited_plans: Collection[str]) -> bool:
    """The one rule for "plan without prepaid limit": its name is in ``unlimited_plans``.

    Why not something implicit: "the app never had funds" cannot tell a postpaid customer from
    one whose first top-up is late, and would make every new app free until then; a naming
    convention is invisible to whoever names plans. A setting is explicit, reviewable, and an
    app moves in or out of it with an ordinary ``plan_changed``. No plan: prepaid.
    """
    return plan is not None and plan.plan in unlimited_plans


class PlanTimeline(Struct, kw_only=True):
    """The plans of one app, sorted by ``Plan.key``; each ``event_id`` is kept once (R1).

    ``cancelled`` names the scheduled plans a later decision replaced before they took effect:
    they stay in the history, and are never in force.
    """

    plans: list[Plan] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)

    def add(self, plan: Plan) -> bool:
        """Insert ``plan``; False if a plan with the same ``event_id`` is there (a copy: the first stands)."""
        if any(p.event_id == plan.event_id for p in self.plans):
            return False
        self.plans.insert(bisect_right(self.plans, plan.key, key=_key), plan)
        self.cancelled = cancelled_plans(self.plans)
        return True

    def at(self, t_ms: int) -> Plan | None:
        """The plan in force at ``t_ms``: the last one with ``effective_at <= t_ms`` not cancelled; None before any."""
        return plan_at(self.plans, self.cancelled, t_ms)

    def latest(self) -> Plan | None:
        """The plan with the greatest key that is not cancelled (it may not be in force yet)."""
        return plan_at(self.plans, self.cancelled, FOREVER)

    def pending(self, t_ms: int) -> list[Plan]:
        """The plans that take effect after ``t_ms`` (not cancelled), in order: what is still to come."""
        return [
            p for p in self.plans[bisect_right(self.plans, t_ms, key=_effective) :] if p.event_id not in self.cancelled
        ]


def plan_at(plans: list[Plan], cancelled: Collection[str], t_ms: int) -> Plan | None:
    """The greatest ``(effective_at, event_id)`` at or before ``t_ms`` among the plans not cancelled."""
    i = bisect_right(plans, t_ms, key=_effective)
    while i and plans[i - 1].event_id in cancelled:
        i -= 1
    return plans[i - 1] if i else None


def cancelled_plans(plans: list[Plan]) -> set[str]:
    """The scheduled plans replaced before they took effect: a plan decided after a scheduled one
    and before its ``effective_at`` replaces it (an upgrade, another downgrade, keeping the plan).

    A pure function of the set of plans, so the order they arrive in does not matter. Plans whose
    ``effective_at`` is their ``occurred_at`` (every plan before scheduling existed) cannot be
    replaced this way: the rule is then the plain "greatest effective_at not after the instant".
    """
    out: set[str] = set()
    for p in plans:
        if not p.scheduled:
            continue
        key = p.decision_key
        if any(q.decision_key > key and q.decided < p.effective_ms for q in plans):
            out.add(p.event_id)
    return out


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


#: (app_id, instant ms, idle timeout ms or None, event_id): one change of the rules engine's timeouts.
TimeoutChange = tuple[str, int, int | None, str]
#: Appended to a plan's ``event_id`` for the timeout in force at its instant: it sorts after the
#: plan's own id, so it wins the rules engine's tie at that instant (``TimeoutTimeline``).
_IN_FORCE: Final = "\x7f"


class TimeoutSchedule:
    """The plans' idle timeouts (R2) as the rules engine needs them, replaced plans included.

    The rules engine keeps a timeline of timeouts by instant. A plan scheduled for later and then
    replaced must not set the timeout from its instant on; so for every plan instant of the app
    this says which timeout is in force there (the plan the timeline puts in force), and only
    when that changes. The stream's plan feed and `metering compute` both use it.
    """

    __slots__ = ("_emitted", "book")

    def __init__(self) -> None:
        self.book = PlanBook()
        self._emitted: dict[tuple[str, int], int | None] = {}

    def add(self, event: PlanChanged) -> list[TimeoutChange]:
        """The changes the rules engine must apply after ``event`` (none for a copy)."""
        if not self.book.apply(event):
            return []
        app = event.app_id
        timeline = self.book.timelines[app]
        out: list[TimeoutChange] = []
        for plan in timeline.plans:
            in_force = timeline.at(plan.effective_ms)
            minutes = None if in_force is None else in_force.idle_timeout_minutes
            key = (app, plan.effective_ms)
            if key in self._emitted and self._emitted[key] == minutes:
                continue
            self._emitted[key] = minutes
            timeout = None if minutes is None else minutes * MINUTE
            out.append((app, plan.effective_ms, timeout, _instant_id(timeline, plan.effective_ms)))
        return out


def _instant_id(timeline: PlanTimeline, instant: int) -> str:
    """The greatest ``event_id`` of the plans taking effect at ``instant``, marked as the one in force."""
    return max(p.event_id for p in timeline.plans if p.effective_ms == instant) + _IN_FORCE
