"""R12 balances: funds in, priced final billing sessions out, one alert per crossing.

One ``AppBalance`` per app holds everything its balance depends on (msgspec structs an adapter persists
between any two inputs). Three idempotent inputs change it: ``apply_funds``, ``apply_plan`` (re-prices the
sessions the new plan covers) and ``charge``. Order independence, the dedupe horizon, late sessions and
alert ids: docs/balances.md ("Balance", "Balance alerts").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Final, Literal

from msgspec import Struct, field

from pipeline.balance.money import ZERO, add, format_money, sub
from pipeline.balance.plans import (
    DEFAULT_CURRENCY,
    DEFAULT_LOW_BALANCE_THRESHOLD,
    Plan,
    PlanTimeline,
    is_unlimited,
    plan_at,
)
from pipeline.contract.decode import to_ms
from pipeline.contract.events import (
    BalanceAlert,
    ExtensionDeclined,
    ExtensionGranted,
    ExtensionRequested,
    FundsAdded,
    FundsRefunded,
    OwnerChanged,
    PlanChanged,
    ms_to_datetime,
    parse_decimal,
)
from pipeline.rules.billing import derived_id
from pipeline.rules.config import DAY
from pipeline.rules.meter import Outcome
from pipeline.rules.model import BillingSession, Kind

Status = Literal["active", "low", "depleted"]
AlertState = Literal["low", "depleted", "recovered"]

NEVER: Final = -(2**62)
FOREVER: Final = 2**62
KINDS: Final[tuple[Kind, ...]] = ("usage", "alert", "voice")
_CODE: Final[dict[str, int]] = {kind: i for i, kind in enumerate(KINDS)}

#: Which alert a change of status produces (R12); every other change produces none.
#: - active -> depleted in one step is one ``depleted``: the state the app is in now. A ``low``
#:   in the same instant would page people twice for one event.
#: - depleted -> low (funds added, but not above the threshold) is none: it crosses neither
#:   the threshold downward nor zero downward, nor the threshold upward. The next crossing
#:   (``recovered`` above the threshold, or ``depleted`` again) is reported as usual.
ALERT_ON: Final[dict[tuple[Status, Status], AlertState]] = {
    ("active", "low"): "low",
    ("active", "depleted"): "depleted",
    ("low", "depleted"): "depleted",
    ("low", "active"): "recovered",
    ("depleted", "active"): "recovered",
}


class BalanceConfigError(ValueError):
    """A balance parameter is outside what the rules allow."""


@dataclass(frozen=True)
class BalanceConfig:
    """Parameters of the ledger.

    ``dedupe_horizon_ms``: how long (event time, behind the app's newest session) charged
    session ids are remembered; at least a day, 7 days by default like R1.
    ``unlimited_plans``: names of plans without prepaid limit (see ``plans.is_unlimited``).
    """

    dedupe_horizon_ms: int = 7 * DAY
    unlimited_plans: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.dedupe_horizon_ms < DAY:
            raise BalanceConfigError(
                f"balance dedupe horizon {self.dedupe_horizon_ms} ms is under one day (86400000 ms)"
            )


class Tally(Struct, kw_only=True):
    """Money of one app in one currency: funds in, cost and session count by kind."""

    funds: Decimal = ZERO
    usage_cost: Decimal = ZERO
    alert_cost: Decimal = ZERO
    voice_cost: Decimal = ZERO
    usage_sessions: int = 0
    alert_sessions: int = 0
    voice_sessions: int = 0

    @property
    def cost(self) -> Decimal:
        return add(add(self.usage_cost, self.alert_cost), self.voice_cost)

    @property
    def balance(self) -> Decimal:
        return sub(self.funds, self.cost)

    @property
    def empty(self) -> bool:
        """No funds and no sessions (so no cost either): the same as no tally at all."""
        return self.funds == 0 and self.usage_sessions == self.alert_sessions == self.voice_sessions == 0

    def book(self, kind: Kind, price: Decimal, sessions: int) -> None:
        """Add (``sessions`` = 1) or take back (-1) one session of ``kind`` at ``price``."""
        move = add if sessions > 0 else sub  # not ``-price``: unary minus rounds in the ambient context
        if kind == "usage":
            self.usage_cost = move(self.usage_cost, price)
            self.usage_sessions += sessions
        elif kind == "alert":
            self.alert_cost = move(self.alert_cost, price)
            self.alert_sessions += sessions
        else:
            self.voice_cost = move(self.voice_cost, price)
            self.voice_sessions += sessions


class Counters(Struct, kw_only=True):
    """What happened to every input of the app: nothing disappears unexplained."""

    sessions_charged: int = 0
    sessions_duplicate: int = 0
    sessions_late: int = 0
    funds_added: int = 0
    funds_duplicate: int = 0
    plans_added: int = 0
    plans_duplicate: int = 0
    #: plans dated at or before a session already settled: settled sessions keep the price they
    #: had; reconciliation re-rates them.
    plans_backdated: int = 0
    alerts: int = 0
    refunds: int = 0
    #: extension requests, grants and declines applied; decisions that found no pending request
    extension_events: int = 0
    extension_unmatched: int = 0
    owner_changes: int = 0
    #: copies of refunds, extension and owner events (dropped by event_id)
    other_duplicate: int = 0


ExtensionStatus = Literal["pending", "granted", "declined"]


class Extension(Struct, kw_only=True):
    """An extension request and, once an operator decided, its outcome.

    ``plan_event_id`` is the plan in force when it was asked for: a grant moves the end of that
    plan's term (a later plan has a term of its own).
    """

    request_id: str
    days: int
    reason: str
    requested_ms: int
    requested_by: str | None = None
    plan_event_id: str | None = None
    status: ExtensionStatus = "pending"
    granted_days: int = 0
    decided_ms: int | None = None
    decline_reason: str | None = None


#: A charged, priced session still within the horizon: (started ms, kind code).
Charged = tuple[int, int]
#: A session held without a price: (started ms, kind code, UTC day of its close instant).
Held = tuple[int, int, int]


class AppBalance(Struct, kw_only=True):
    """Everything one app's balance depends on. Build with ``AppBalance(app_id=...)``.

    ``tallies`` is by currency: funds and costs are never converted. The balance that counts
    (status, alerts, entitlement) is the one in the currency of the app's latest plan.
    ``alerted`` is the status as last reported by the alert stream: ``active`` until the
    app's first funds or session (``opened``), so putting a plan in place before the first
    top-up pages nobody.
    """

    app_id: str
    account_id: str = ""
    plans: PlanTimeline = field(default_factory=PlanTimeline)
    tallies: dict[str, Tally] = field(default_factory=dict)
    #: top-up event_id -> occurred_at ms, kept for good (the dedupe of money)
    funds_seen: dict[str, int] = field(default_factory=dict)
    #: priced sessions by UTC day (epoch days) of their close instant: the dedupe of sessions
    days: dict[int, dict[str, Charged]] = field(default_factory=dict)
    #: sessions without a plan at their start, by billing_session_id, until one arrives
    held: dict[str, Held] = field(default_factory=dict)
    #: latest close instant charged: the app's event-time clock for the horizon
    clock_ms: int = NEVER
    #: days before this one are settled: ids dropped, their sessions are late if seen again
    settled_day: int = NEVER
    #: latest start of a settled session: a plan dated at or before it is backdated
    settled_max_start_ms: int = NEVER
    opened: bool = False
    alerted: Status = "active"
    #: alerts produced so far: the ordinal of the next one, minus one
    crossings: int = 0
    counters: Counters = field(default_factory=Counters)
    #: the app's event clock: the latest instant an input was stamped with (or ``advance`` moved it to);
    #: the plan in force then is the current plan
    seen_ms: int = NEVER
    #: who answers for the app, and the (occurred_at ms, event_id) of the change that said so
    owner: str | None = None
    owner_key: tuple[int, str] | None = None
    extensions: dict[str, Extension] = field(default_factory=dict)
    #: event ids of refunds and of owner changes applied (their dedupe)
    refunds_seen: dict[str, int] = field(default_factory=dict)
    owner_events: list[str] = field(default_factory=list)

    @property
    def plan(self) -> Plan | None:
        """The current plan (in force at the app's event clock): it sets the threshold and the currency.

        A plan stamped a little in the future (R10 allows 24 h) moves the clock and so is current
        as soon as it arrives; a plan scheduled for later (``effective_at``) becomes current when
        the clock reaches it (``advance``), not when it is announced.
        """
        return self.plans.at(self.seen_ms)

    @property
    def currency(self) -> str:
        plan = self.plan
        return DEFAULT_CURRENCY if plan is None else plan.currency

    @property
    def threshold(self) -> Decimal:
        plan = self.plan
        return DEFAULT_LOW_BALANCE_THRESHOLD if plan is None else plan.low_balance_threshold

    def balance_in(self, currency: str) -> Decimal:
        tally = self.tallies.get(currency)
        return ZERO if tally is None else tally.balance

    @property
    def balance(self) -> Decimal:
        return self.balance_in(self.currency)

    @property
    def status(self) -> Status:
        return status_of(self.balance, self.threshold)

    @property
    def unpriced(self) -> int:
        """Sessions charged before any plan covering their start: held, not yet in any cost."""
        return len(self.held)

    def tally(self, currency: str) -> Tally:
        tally = self.tallies.get(currency)
        if tally is None:
            tally = self.tallies[currency] = Tally()
        return tally

    def extension_days(self, plan: Plan) -> int:
        """Days granted to extend ``plan``'s term."""
        return sum(e.granted_days for e in self.extensions.values() if e.plan_event_id == plan.event_id)

    def expires_at(self, t_ms: int) -> int | None:
        """When the term of the plan in force at ``t_ms`` ends (extensions included); None without a term."""
        plan = self.plans.at(t_ms)
        return None if plan is None else plan.term_end(self.extension_days(plan))

    def expired(self, t_ms: int) -> bool:
        """The plan in force at ``t_ms`` has a term, and it is over: the app is not entitled until renewed."""
        end = self.expires_at(t_ms)
        return end is not None and end <= t_ms

    def pending_extension(self) -> Extension | None:
        """The latest request still waiting for an operator."""
        pending = [e for e in self.extensions.values() if e.status == "pending"]
        return max(pending, key=lambda e: (e.requested_ms, e.request_id)) if pending else None

    def _saw(self, t_ms: int) -> None:
        self.seen_ms = max(self.seen_ms, t_ms)


def status_of(balance: Decimal, threshold: Decimal) -> Status:
    """depleted: at or below zero; low: above zero, at or below the threshold; else active.

    A threshold at or below zero leaves no room for ``low``: the app goes from active to
    depleted.
    """
    if balance <= 0:
        return "depleted"
    if balance <= threshold:
        return "low"
    return "active"


def entitled(state: AppBalance, now_ms: int, unlimited_plans: frozenset[str] = frozenset()) -> bool:
    """May the app serve its users at ``now_ms`` (the caller's clock)? Not if the plan in force
    has expired; yes on a plan without prepaid limit; else if the balance in the plan's currency
    is above zero. No plan means prepaid.
    """
    if state.expired(now_ms):
        return False
    plan = state.plans.at(now_ms)
    if is_unlimited(plan, unlimited_plans):
        return True
    currency = state.currency if plan is None else plan.currency
    return state.balance_in(currency) > 0


class Step(Struct, frozen=True):
    """What one input did: applied, duplicate or late, and the alerts it produced."""

    outcome: Outcome
    alerts: list[BalanceAlert]


def close_instant(session: BillingSession) -> int:
    """When a session's conversation session closed: what its dedupe bucket is keyed by."""
    if session.conversation_ended_ms is not None:
        return session.conversation_ended_ms
    return session.ended_ms


def charge(state: AppBalance, session: BillingSession, config: BalanceConfig) -> Step:
    """Charge one final billing session at the price of the plan in force at its start."""
    counters = state.counters
    sid = session.billing_session_id
    closed = close_instant(session)
    day = closed // DAY
    bucket = state.days.get(day)
    if sid in state.held or (bucket is not None and sid in bucket):
        counters.sessions_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    if day < state.settled_day:
        counters.sessions_late += 1
        return Step(Outcome.LATE, [])
    if not state.account_id:
        state.account_id = session.account_id
    start = session.started_ms
    code = _CODE[session.kind]
    plan = state.plans.at(start)
    if plan is None:
        state.held[sid] = (start, code, day)
    else:
        if bucket is None:
            bucket = state.days[day] = {}
        bucket[sid] = (start, code)
        state.tally(plan.currency).book(session.kind, plan.price(session.kind), 1)
    counters.sessions_charged += 1
    state.opened = True
    state._saw(closed)
    if closed > state.clock_ms:
        state.clock_ms = closed
        _settle(state, (closed - config.dedupe_horizon_ms) // DAY)
    return Step(Outcome.APPLIED, _crossing(state, start))


def apply_funds(state: AppBalance, event: FundsAdded) -> Step:
    """Credit a top-up in its own currency (never converted)."""
    step = _book_funds(state, event, state.funds_seen, add)
    if step.outcome == Outcome.DUPLICATE:
        state.counters.funds_duplicate += 1
    else:
        state.counters.funds_added += 1
    return step


def apply_refund(state: AppBalance, event: FundsRefunded) -> Step:
    """Take money paid back out of the funds, in its own currency (a refunded order)."""
    step = _book_funds(state, event, state.refunds_seen, sub)
    if step.outcome == Outcome.DUPLICATE:
        state.counters.other_duplicate += 1
    else:
        state.counters.refunds += 1
    return step


def _book_funds(
    state: AppBalance,
    event: FundsAdded | FundsRefunded,
    seen: dict[str, int],
    change: Callable[[Decimal, Decimal], Decimal],
) -> Step:
    """Move the funds of the event's currency by its amount (``add`` or ``sub``), once per event id."""
    if event.event_id in seen:
        return Step(Outcome.DUPLICATE, [])
    t = to_ms(event.occurred_at)
    if not state.account_id:
        state.account_id = event.account_id
    seen[event.event_id] = t
    tally = state.tally(event.currency)
    tally.funds = change(tally.funds, parse_decimal(event.amount))
    state.opened = True
    state._saw(t)
    return Step(Outcome.APPLIED, _crossing(state, t))


def request_extension(state: AppBalance, event: ExtensionRequested) -> Step:
    """Record a request for more days on the term of the plan in force when it was made."""
    if event.request_id in state.extensions:
        state.counters.other_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    t = to_ms(event.occurred_at)
    plan = state.plans.at(t)
    state.extensions[event.request_id] = Extension(
        request_id=event.request_id,
        days=event.days,
        reason=event.reason,
        requested_ms=t,
        requested_by=event.requested_by,
        plan_event_id=None if plan is None else plan.event_id,
    )
    state.counters.extension_events += 1
    state._saw(t)
    return Step(Outcome.APPLIED, [])


def decide_extension(state: AppBalance, event: ExtensionGranted | ExtensionDeclined) -> Step:
    """An operator's decision on a pending request; a grant moves the end of that plan's term."""
    request = state.extensions.get(event.request_id)
    if request is None or request.status != "pending":
        if request is None:
            state.counters.extension_unmatched += 1
        else:
            state.counters.other_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    t = to_ms(event.occurred_at)
    request.decided_ms = t
    if isinstance(event, ExtensionGranted):
        request.status = "granted"
        request.granted_days = event.days
    else:
        request.status = "declined"
        request.decline_reason = event.reason
    state.counters.extension_events += 1
    state._saw(t)
    return Step(Outcome.APPLIED, [])


def change_owner(state: AppBalance, event: OwnerChanged) -> Step:
    """The latest change (by occurred_at, then event_id) names the owner, whatever the arrival order."""
    if event.event_id in state.owner_events:
        state.counters.other_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    state.owner_events.append(event.event_id)
    key = (to_ms(event.occurred_at), event.event_id)
    if state.owner_key is None or key > state.owner_key:
        state.owner, state.owner_key = event.user_id, key
    state.counters.owner_changes += 1
    state._saw(key[0])
    return Step(Outcome.APPLIED, [])


def advance(state: AppBalance, t_ms: int) -> list[BalanceAlert]:
    """Move the app's clock to ``t_ms`` with no input: a scheduled plan may become current then
    (its threshold and currency count from that instant), which can cross a line."""
    if t_ms <= state.seen_ms:
        return []
    state.seen_ms = t_ms
    return _crossing(state, t_ms)


def apply_plan(state: AppBalance, event: PlanChanged) -> Step:  # noqa: PLR0912 - the plan timeline's cases (first, replaced, superseded, same instant) side by side
    """Add a plan to the timeline and re-price what it now prices.

    The new plan is in force from its ``effective_at`` to the next plan's; sessions starting in
    that span were priced by the plan before it (or held unpriced, if none): each moves from
    the old price to the new one. A plan decided while a scheduled one is pending replaces it
    (``plans.cancelled_plans``): the sessions of the replaced plan's span move too. Plans are
    rare, and only the days from the earliest changed instant on are walked (a session closes
    at or after its start), so a plan dated now walks one day. Settled sessions keep their
    price; a plan that would change one is counted as backdated for reconciliation.
    """
    counters = state.counters
    plan = Plan.from_event(event)
    timeline = state.plans
    old_plans, old_cancelled = list(timeline.plans), timeline.cancelled
    if not timeline.add(plan):
        counters.plans_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    if not state.account_id:
        state.account_id = event.account_id
    counters.plans_added += 1
    state._saw(plan.decided)
    changed = timeline.cancelled ^ old_cancelled
    affected = [p.effective_ms for p in timeline.plans if p.event_id in changed]
    if _in_force_some_time(timeline, plan):
        affected.append(plan.effective_ms)
    if not affected:
        return Step(Outcome.APPLIED, _crossing(state, plan.decided))  # it prices nothing
    begins = min(affected)
    if begins <= state.settled_max_start_ms:
        counters.plans_backdated += 1
    first_day = begins // DAY  # a session closes at or after its start: earlier days cannot hold one
    for day, bucket in state.days.items():
        if day < first_day:
            continue
        unpriced: list[str] = []
        for sid, (start, code) in bucket.items():
            if start < begins:
                continue
            before, after = plan_at(old_plans, old_cancelled, start), timeline.at(start)
            if before is after:
                continue
            kind = KINDS[code]
            if before is not None:
                state.tally(before.currency).book(kind, before.price(kind), -1)
            if after is None:
                unpriced.append(sid)
            else:
                state.tally(after.currency).book(kind, after.price(kind), 1)
        for sid in unpriced:  # its plan was replaced before it took effect, and none was in force before
            start, code = bucket.pop(sid)
            state.held[sid] = (start, code, day)
    for sid, (start, code, day) in list(state.held.items()):
        in_force = timeline.at(start) if start >= begins else None
        if in_force is not None:
            kind = KINDS[code]
            state.tally(in_force.currency).book(kind, in_force.price(kind), 1)
            del state.held[sid]
            if day >= state.settled_day:
                state.days.setdefault(day, {})[sid] = (start, code)
            elif start > state.settled_max_start_ms:
                state.settled_max_start_ms = start
    for currency in [c for c, tally in state.tallies.items() if tally.empty]:
        # Re-pricing emptied it: drop it, so the state is the same as if this plan had come first.
        del state.tallies[currency]
    return Step(Outcome.APPLIED, _crossing(state, begins))


#: The billing-plans events an app's balance applies (seats are ``pipeline.rules.agents``'s).
LedgerEvent = (
    PlanChanged | FundsAdded | FundsRefunded | ExtensionRequested | ExtensionGranted | ExtensionDeclined | OwnerChanged
)


def apply_event(state: AppBalance, event: LedgerEvent) -> Step:
    """Apply one billing-plans event to its app's state (each kind is idempotent by its id)."""
    if isinstance(event, PlanChanged):
        return apply_plan(state, event)
    if isinstance(event, FundsAdded):
        return apply_funds(state, event)
    if isinstance(event, FundsRefunded):
        return apply_refund(state, event)
    if isinstance(event, ExtensionRequested):
        return request_extension(state, event)
    if isinstance(event, OwnerChanged):
        return change_owner(state, event)
    return decide_extension(state, event)


def _in_force_some_time(timeline: PlanTimeline, plan: Plan) -> bool:
    """Not replaced, and no plan takes effect at the same millisecond with a greater ``event_id``."""
    return timeline.at(plan.effective_ms) is plan


def _settle(state: AppBalance, limit: int) -> None:
    """Forget the ids of the days before ``limit``: their sessions stay paid for, never again."""
    if limit <= state.settled_day:
        return
    state.settled_day = limit
    for day in [d for d in state.days if d < limit]:
        for start, _ in state.days.pop(day).values():
            state.settled_max_start_ms = max(state.settled_max_start_ms, start)


def _crossing(state: AppBalance, at_ms: int) -> list[BalanceAlert]:
    """The alert for the status change the last input caused, if it is a crossing."""
    if not state.opened:
        return []
    plan = state.plan
    if plan is None:
        currency, threshold = DEFAULT_CURRENCY, DEFAULT_LOW_BALANCE_THRESHOLD
    else:
        currency, threshold = plan.currency, plan.low_balance_threshold
    tally = state.tallies.get(currency)
    balance = ZERO if tally is None else tally.balance
    status = status_of(balance, threshold)
    before = state.alerted
    state.alerted = status
    alert_state = ALERT_ON.get((before, status))
    if alert_state is None:
        return []
    state.crossings += 1
    state.counters.alerts += 1
    return [
        BalanceAlert(
            alert_event_id=alert_event_id(state.app_id, state.crossings, alert_state),
            account_id=state.account_id,
            app_id=state.app_id,
            state=alert_state,
            balance=format_money(balance),
            threshold=format_money(threshold),
            currency=currency,
            occurred_at=ms_to_datetime(at_ms),
        )
    ]


def alert_event_id(app_id: str, ordinal: int, alert_state: str) -> str:
    """``balance|{app_id}|{ordinal}|{state}``, as every derived id (docs/billing-rules.md)."""
    return derived_id(f"balance|{app_id}|{ordinal}|{alert_state}")


@dataclass(slots=True)
class LedgerStats:
    """Counters of all apps, summed for metrics (per-app figures stay in the states)."""

    sessions_charged: int = 0
    sessions_duplicate: int = 0
    sessions_late: int = 0
    sessions_unpriced: int = 0
    funds_added: int = 0
    funds_duplicate: int = 0
    plans_added: int = 0
    plans_duplicate: int = 0
    plans_backdated: int = 0
    alerts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Ledger:
    """The balances of every app an adapter owns, with the late sessions to hand on."""

    def __init__(self, config: BalanceConfig | None = None) -> None:
        self.config = config or BalanceConfig()
        self.apps: dict[str, AppBalance] = {}
        #: Sessions that closed on a settled day: not charged, for the late topic / reconciliation.
        self.late: list[BillingSession] = []

    def app(self, app_id: str) -> AppBalance:
        state = self.apps.get(app_id)
        if state is None:
            state = self.apps[app_id] = AppBalance(app_id=app_id)
        return state

    def charge(self, session: BillingSession) -> list[BalanceAlert]:
        step = charge(self.app(session.app_id), session, self.config)
        if step.outcome is Outcome.LATE:
            self.late.append(session)
        return step.alerts

    def apply_funds(self, event: FundsAdded) -> list[BalanceAlert]:
        return apply_funds(self.app(event.app_id), event).alerts

    def apply_plan(self, event: PlanChanged) -> list[BalanceAlert]:
        return apply_plan(self.app(event.app_id), event).alerts

    def apply(self, event: LedgerEvent) -> list[BalanceAlert]:
        """Any billing-plans event but seats (``pipeline.rules.agents`` keeps those)."""
        return apply_event(self.app(event.app_id), event).alerts

    def plan_at(self, app_id: str, t_ms: int) -> Plan | None:
        state = self.apps.get(app_id)
        return None if state is None else state.plans.at(t_ms)

    def entitled(self, app_id: str, now_ms: int) -> bool:
        """Entitlement at ``now_ms`` (the caller's clock), by the plan in force then."""
        state = self.apps.get(app_id) or AppBalance(app_id=app_id)  # asking creates no state
        return entitled(state, now_ms, self.config.unlimited_plans)

    def restore(self, states: list[AppBalance]) -> None:
        """Load persisted states (after a restart or a rebalance)."""
        for state in states:
            self.apps[state.app_id] = state

    def stats(self) -> LedgerStats:
        total = LedgerStats()
        for state in self.apps.values():
            c = state.counters
            total.sessions_charged += c.sessions_charged
            total.sessions_duplicate += c.sessions_duplicate
            total.sessions_late += c.sessions_late
            total.sessions_unpriced += state.unpriced
            total.funds_added += c.funds_added
            total.funds_duplicate += c.funds_duplicate
            total.plans_added += c.plans_added
            total.plans_duplicate += c.plans_duplicate
            total.plans_backdated += c.plans_backdated
            total.alerts += c.alerts
        return total
