"""Properties of the balance ledger over generated plans, top-ups and sessions (hypothesis).

- any order and any duplication of the same inputs give the same final money and status, and
  the ones a naive reference computes from scratch;
- the alerts are exactly the crossings of the status in processing order, one per crossing,
  with distinct ids;
- saving and restoring the state between any two inputs changes nothing, alerts included;
- with a short horizon and any order, no session is ever charged twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from itertools import pairwise

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.balance.ledger import (
    ALERT_ON,
    AppBalance,
    BalanceConfig,
    Status,
    Step,
    apply_funds,
    apply_plan,
    charge,
    status_of,
)
from pipeline.contract.decode import to_ms
from pipeline.contract.events import BalanceAlert, FundsAdded, PlanChanged
from pipeline.rules.config import DAY, HOUR, MINUTE
from pipeline.rules.meter import Outcome
from pipeline.rules.model import BillingSession, Kind
from tests.balance_support import APP, funds, plan, session
from tests.support import T0

Input = PlanChanged | FundsAdded | BillingSession
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = BalanceConfig()
PRICES = ("0", "0.005", "0.10", "1.00", "2.50", "7.333333")
AMOUNTS = ("0.01", "1.00", "10.00", "25.50", "60.00", "99.999999")
KINDS: tuple[Kind, ...] = ("usage", "alert", "voice")


@st.composite
def plans(draw: st.DrawFn) -> list[PlanChanged]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        # Few distinct instants, so that plans tie at the same millisecond now and then.
        t = T0 + draw(st.sampled_from([-2 * HOUR, 0, 0, 3 * HOUR, 7 * HOUR + 1, 20 * HOUR]))
        out.append(
            plan(
                t,
                draw(st.sampled_from(PRICES)),
                draw(st.sampled_from(PRICES)),
                draw(st.sampled_from(PRICES)),
                event_id=f"plan-{draw(st.sampled_from('abcdef'))}{i}",
                currency=draw(st.sampled_from(["USD", "USD", "EUR"])),
                threshold=draw(st.sampled_from(["0", "5.00", "50.00"])),
            )
        )
    return out


@st.composite
def top_ups(draw: st.DrawFn) -> list[FundsAdded]:
    return [
        funds(
            draw(st.sampled_from(AMOUNTS)),
            T0 + draw(st.integers(-3 * HOUR, 30 * HOUR)),
            event_id=f"funds-{i}",
            currency=draw(st.sampled_from(["USD", "USD", "USD", "EUR"])),
        )
        for i in range(draw(st.integers(0, 4)))
    ]


@st.composite
def sessions(draw: st.DrawFn, spread: int = 30 * HOUR) -> list[BillingSession]:
    return [
        session(
            f"s{i}",
            T0 + draw(st.integers(-4 * HOUR, spread)),
            draw(st.sampled_from(KINDS)),
            length=draw(st.integers(0, 15 * MINUTE)),
        )
        for i in range(draw(st.integers(1, 25)))
    ]


@st.composite
def shuffled_with_copies(draw: st.DrawFn, inputs: Sequence[Input]) -> list[Input]:
    """The same inputs in another order, some of them delivered more than once."""
    copies = draw(st.lists(st.sampled_from(list(inputs)), max_size=len(inputs))) if inputs else []
    return draw(st.permutations([*inputs, *copies]))


def apply(state: AppBalance, item: Input, config: BalanceConfig = CONFIG) -> Step:
    if isinstance(item, PlanChanged):
        return apply_plan(state, item)
    if isinstance(item, FundsAdded):
        return apply_funds(state, item)
    return charge(state, item, config)


def run(inputs: Sequence[Input], config: BalanceConfig = CONFIG) -> tuple[AppBalance, list[BalanceAlert]]:
    state = AppBalance(app_id=APP)
    alerts: list[BalanceAlert] = []
    for item in inputs:
        alerts += apply(state, item, config).alerts
    return state, alerts


def reference(inputs: Sequence[Input]) -> tuple[Decimal, Status, int]:
    """Balance, status and unpriced count from scratch: distinct inputs, naive plan lookup."""
    plan_events = {(to_ms(p.occurred_at), p.event_id): p for p in inputs if isinstance(p, PlanChanged)}
    timeline = [plan_events[k] for k in sorted(plan_events)]
    latest = timeline[-1] if timeline else None
    currency = latest.currency if latest else "USD"
    threshold = Decimal(latest.low_balance_threshold) if latest else Decimal("50.00")
    balance = Decimal(0)
    for f in {f.event_id: f for f in inputs if isinstance(f, FundsAdded)}.values():
        if f.currency == currency:
            balance += Decimal(f.amount)
    unpriced = 0
    for s in {s.billing_session_id: s for s in inputs if isinstance(s, BillingSession)}.values():
        in_force = [p for p in timeline if to_ms(p.occurred_at) <= s.started_ms]
        if not in_force:
            unpriced += 1
            continue
        p = in_force[-1]
        price = {
            "usage": p.price_per_usage_session,
            "alert": p.price_per_alert_session,
            "voice": p.price_per_voice_session,
        }[s.kind]
        if p.currency == currency:
            balance -= Decimal(price)
    return balance, status_of(balance, threshold), unpriced


@st.composite
def everything(draw: st.DrawFn) -> list[Input]:
    inputs: list[Input] = [*draw(plans()), *draw(top_ups()), *draw(sessions())]
    return draw(st.permutations(inputs))


@PROPERTY
@given(st.data())
def test_any_order_and_any_copies_give_the_same_money_and_status(data: st.DataObject) -> None:
    inputs = data.draw(everything())
    other = data.draw(shuffled_with_copies(inputs))
    a, _ = run(inputs)
    b, _ = run(other)
    assert a.tallies == b.tallies
    assert (a.balance, a.status, a.held, a.days) == (b.balance, b.status, b.held, b.days)
    assert a.counters.sessions_charged == b.counters.sessions_charged
    assert b.counters.sessions_duplicate + b.counters.funds_duplicate + b.counters.plans_duplicate == len(other) - len(
        inputs
    )
    assert (a.balance, a.status, a.unpriced) == reference(inputs)


@PROPERTY
@given(st.data())
def test_alerts_are_the_crossings_in_processing_order_once_each(data: st.DataObject) -> None:
    inputs = data.draw(shuffled_with_copies(data.draw(everything())))
    state = AppBalance(app_id=APP)
    reported: Status = "active"
    opened = False
    alerts: list[BalanceAlert] = []
    for item in inputs:
        step = apply(state, item)
        assert len(step.alerts) <= 1
        opened = opened or (step.outcome is Outcome.APPLIED and not isinstance(item, PlanChanged))
        expected = None
        if opened:
            expected = ALERT_ON.get((reported, state.status))
            reported = state.status
        assert [a.state for a in step.alerts] == ([expected] if expected else [])
        alerts += step.alerts
    ids = [a.alert_event_id for a in alerts]
    assert len(set(ids)) == len(ids)
    for before, after in pairwise(alerts):
        assert (before.state, after.state) not in {("low", "low"), ("recovered", "recovered")}
    if alerts:
        last = alerts[-1].state
        assert state.status == {"low": "low", "recovered": "active"}.get(last, state.status)


@PROPERTY
@given(st.data())
def test_saving_and_restoring_between_any_two_inputs_changes_nothing(data: st.DataObject) -> None:
    inputs = data.draw(shuffled_with_copies(data.draw(everything())))
    straight, straight_alerts = run(inputs)
    state = AppBalance(app_id=APP)
    alerts: list[BalanceAlert] = []
    for i, item in enumerate(inputs):
        codec = msgspec.json if i % 2 else msgspec.msgpack
        state = codec.decode(codec.encode(state), type=AppBalance)
        alerts += apply(state, item).alerts
    assert alerts == straight_alerts
    assert msgspec.json.encode(state) == msgspec.json.encode(straight)


@PROPERTY
@given(st.data())
def test_a_replay_from_any_saved_state_re_emits_the_same_alert_ids(data: st.DataObject) -> None:
    inputs = data.draw(shuffled_with_copies(data.draw(everything())))
    cut = data.draw(st.integers(0, len(inputs)))
    saved, _ = run(inputs[:cut])
    checkpoint = msgspec.msgpack.encode(saved)
    first = [a for item in inputs[cut:] for a in apply(saved, item).alerts]
    restored = msgspec.msgpack.decode(checkpoint, type=AppBalance)
    again = [a for item in inputs[cut:] for a in apply(restored, item).alerts]
    assert [a.alert_event_id for a in again] == [a.alert_event_id for a in first]


@PROPERTY
@given(st.data())
def test_with_a_short_horizon_no_session_is_ever_charged_twice(data: st.DataObject) -> None:
    config = BalanceConfig(dedupe_horizon_ms=DAY)
    distinct = data.draw(sessions(spread=5 * DAY))
    inputs: list[Input] = [plan(T0 - DAY, usage="1", alert="1", voice="1"), funds("1000.00")]
    inputs += data.draw(shuffled_with_copies(distinct))
    state = AppBalance(app_id=APP)
    charged: list[str] = []
    for item in inputs:
        if apply(state, item, config).outcome is Outcome.APPLIED and isinstance(item, BillingSession):
            charged.append(item.billing_session_id)
    assert len(charged) == len(set(charged))
    assert state.balance == Decimal(1000 - len(charged))
    c = state.counters
    assert c.sessions_charged + c.sessions_duplicate + c.sessions_late == len(inputs) - 2
