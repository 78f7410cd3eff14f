"""R12 balances: funds in, priced final billing sessions out, one alert per crossing.

One ``AppBalance`` per app holds everything its balance depends on, as msgspec structs, so an
adapter can persist it between any two inputs and carry on after a restart as if nothing had
happened. Three inputs change it, each idempotent:

- ``apply_funds``: a ``funds_added``, deduplicated by ``event_id`` (ids kept for good: top-ups
  are few, and money is never refused);
- ``apply_plan``: a ``plan_changed``, deduplicated by ``(occurred_at, event_id)``; sessions
  already charged whose start falls in the new plan's time in force are re-priced;
- ``charge``: a final billing session, deduplicated by ``billing_session_id``.

**Order independence.** The balance is a sum, so the final funds, costs, balance and status
are the same for any order and any duplication of the same inputs, provided every input
arrives within the dedupe horizon (below) of the newest session of its app. Alerts are what
was observed in processing order: exactly one per status crossing, in the order inputs were
applied (a different order can cross differently; the end state is the same).

**Bounded dedupe of sessions.** Charged sessions are remembered by ``billing_session_id`` in
buckets by the UTC day of their *close instant* (the end of their conversation session; an
alert's delivery). Each app has a clock, the latest close instant it has charged; buckets
more than ``dedupe_horizon_ms`` (7 days by default) behind it are settled: their ids are
dropped, their cost stays. A session that closes on a settled day is *late*: it is not
charged (it might be a copy of a session already paid for) and is handed back for
reconciliation. We rely on one property of the upstream: copies of a session (an
at-least-once re-delivery after a crash, a replay of the topic) arrive before its app's
clock moves more than the horizon past it; copies later than that are late, never charged
twice. A session is emitted its idle timeout (plus lateness) after its close instant, so the
horizon must also exceed how much those delays differ within one app: up to 24 h for
conversations held open by an agent transfer, up to 14 days if an app's plan moves its idle
timeout between 5 minutes and 14 days.

**Alert ids.** ``alert_event_id`` names the app, the crossing's ordinal for the app (1, 2, ...)
and its state. Restoring the state saved before a crash and re-applying the same inputs gives
the same ids, so a consumer of ``balance-alerts`` drops the copies. Should the re-applied
order differ, a different crossing gets a different id: a consumer sees one alert too many
rather than one too few.
"""

from __future__ import annotations

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
)
from pipeline.decode import to_ms
from pipeline.events import BalanceAlert, FundsAdded, PlanChanged, ms_to_datetime, parse_decimal
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

    @property
    def plan(self) -> Plan | None:
        """The latest plan: it sets the threshold and the currency of the balance that counts."""
        return self.plans.latest()

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


def entitled(state: AppBalance, plan: Plan | None, unlimited_plans: frozenset[str] = frozenset()) -> bool:
    """May the app serve its users now? Yes on a plan without prepaid limit, else if the
    balance in the plan's currency is above zero.

    ``plan`` is the plan in force now (the caller has the clock; ``state.plan`` is the latest
    one); None means no plan, which is prepaid.
    """
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
    if closed > state.clock_ms:
        state.clock_ms = closed
        _settle(state, (closed - config.dedupe_horizon_ms) // DAY)
    return Step(Outcome.APPLIED, _crossing(state, start))


def apply_funds(state: AppBalance, event: FundsAdded) -> Step:
    """Credit a top-up in its own currency (never converted)."""
    counters = state.counters
    if event.event_id in state.funds_seen:
        counters.funds_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    t = to_ms(event.occurred_at)
    if not state.account_id:
        state.account_id = event.account_id
    state.funds_seen[event.event_id] = t
    tally = state.tally(event.currency)
    tally.funds = add(tally.funds, parse_decimal(event.amount))
    counters.funds_added += 1
    state.opened = True
    return Step(Outcome.APPLIED, _crossing(state, t))


def apply_plan(state: AppBalance, event: PlanChanged) -> Step:
    """Add a plan to the timeline and re-price what it now prices.

    The new plan is in force from its ``occurred_at`` to the next plan's; sessions starting in
    that span were priced by the plan before it (or held unpriced, if none): each moves from
    the old price to the new one. Plans are rare, and only the days from the plan's on are
    walked (a session closes at or after its start), so a plan dated now walks one day.
    Settled sessions keep their price; a plan that would change one is counted as backdated
    for reconciliation.
    """
    counters = state.counters
    plan = Plan.from_event(event)
    timeline = state.plans
    if not timeline.add(plan):
        counters.plans_duplicate += 1
        return Step(Outcome.DUPLICATE, [])
    if not state.account_id:
        state.account_id = event.account_id
    counters.plans_added += 1
    previous = timeline.before(plan)
    following = timeline.next_after(plan)
    # A following plan at the same millisecond (greater event_id) leaves the span empty.
    ends = FOREVER if following is None else following.effective_ms
    begins = plan.effective_ms
    if begins >= ends:
        return Step(Outcome.APPLIED, [])  # never in force: it prices nothing and sets nothing
    if begins <= state.settled_max_start_ms:
        counters.plans_backdated += 1
    if previous is not None:
        first_day = begins // DAY  # a session closes at or after its start: earlier days cannot hold one
        for day, bucket in state.days.items():
            if day < first_day:
                continue
            for start, code in bucket.values():
                if begins <= start < ends:
                    kind = KINDS[code]
                    state.tally(previous.currency).book(kind, previous.price(kind), -1)
                    state.tally(plan.currency).book(kind, plan.price(kind), 1)
    for sid, (start, code, day) in list(state.held.items()):
        if begins <= start < ends:
            kind = KINDS[code]
            state.tally(plan.currency).book(kind, plan.price(kind), 1)
            del state.held[sid]
            if day >= state.settled_day:
                state.days.setdefault(day, {})[sid] = (start, code)
            elif start > state.settled_max_start_ms:
                state.settled_max_start_ms = start
    for currency in [c for c, tally in state.tallies.items() if tally.empty]:
        # Re-pricing emptied it: drop it, so the state is the same as if this plan had come first.
        del state.tallies[currency]
    return Step(Outcome.APPLIED, _crossing(state, begins))


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
    plan = state.plans.latest()
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

    def plan_at(self, app_id: str, t_ms: int) -> Plan | None:
        state = self.apps.get(app_id)
        return None if state is None else state.plans.at(t_ms)

    def entitled(self, app_id: str, now_ms: int) -> bool:
        """Entitlement at ``now_ms`` (the caller's clock), by the plan in force then."""
        state = self.apps.get(app_id) or AppBalance(app_id=app_id)  # asking creates no state
        return entitled(state, state.plans.at(now_ms), self.config.unlimited_plans)

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
