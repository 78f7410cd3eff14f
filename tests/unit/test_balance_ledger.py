"""R12 balances, worked examples: one test per example of ``docs/balances.md``.

Unless said otherwise the plan is 1.00 per usage session, 0.10 per alert session, 2.00 per
voice session, threshold 50.00, USD, in force from T0.
"""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest

import schemas
from pipeline.balance.ledger import (
    AppBalance,
    BalanceConfig,
    BalanceConfigError,
    Ledger,
    advance,
    alert_event_id,
    apply_funds,
    apply_plan,
    charge,
    entitled,
)
from pipeline.contract.events import BalanceAlert, FundsAdded, PlanChanged, ms_to_datetime
from pipeline.rules.billing import derived_id
from pipeline.rules.config import DAY, HOUR, MINUTE
from pipeline.rules.meter import Outcome
from pipeline.rules.model import BillingSession
from tests.balance_support import APP, funds, plan, session
from tests.support import T0

Input = PlanChanged | FundsAdded | BillingSession
ALERT_SCHEMA = schemas.validator("balance_alert")


def feed(ledger: Ledger, *inputs: Input) -> list[BalanceAlert]:
    alerts: list[BalanceAlert] = []
    for item in inputs:
        if isinstance(item, PlanChanged):
            alerts += ledger.apply_plan(item)
        elif isinstance(item, FundsAdded):
            alerts += ledger.apply_funds(item)
        else:
            alerts += ledger.charge(item)
    for alert in alerts:
        errors = list(ALERT_SCHEMA.iter_errors(json.loads(msgspec.json.encode(alert))))
        assert not errors, errors
    return alerts


def usage(first: int, count: int, start: int = T0 + HOUR) -> list[BillingSession]:
    """Usage sessions u<first> .. u<first + count - 1>; u<i> starts i minutes after ``start``."""
    return [session(f"u{i}", start + i * MINUTE) for i in range(first, first + count)]


def states(alerts: list[BalanceAlert]) -> list[tuple[str, str]]:
    return [(a.state, a.balance) for a in alerts]


@pytest.fixture
def ledger() -> Ledger:
    led = Ledger()
    feed(led, plan(), funds("60.00"))
    return led


# -- crossings ---------------------------------------------------------------------------------


def test_low_threshold_crossing_is_reported_once(ledger: Ledger) -> None:
    assert feed(ledger, *usage(1, 9)) == []  # 60 -> 51: still above 50
    alerts = feed(ledger, *usage(10, 1))
    assert states(alerts) == [("low", "50.00")]  # at the threshold is low
    low = alerts[0]
    assert (low.threshold, low.currency, low.account_id, low.app_id) == ("50.00", "USD", "acme", APP)
    assert low.occurred_at == ms_to_datetime(T0 + HOUR + 10 * MINUTE)  # the start of the session that crossed
    assert feed(ledger, *usage(11, 20)) == []  # 49 .. 30: still low, nothing more
    assert ledger.app(APP).status == "low"


def test_depletion_at_zero_then_the_balance_goes_negative(ledger: Ledger) -> None:
    feed(ledger, *usage(1, 59))
    alerts = feed(ledger, *usage(60, 1))
    assert states(alerts) == [("depleted", "0.00")]
    assert feed(ledger, *usage(61, 5)) == []  # sessions under way are never lost
    state = ledger.app(APP)
    assert state.balance == Decimal("-5.00")
    assert state.status == "depleted"
    assert not ledger.entitled(APP, T0 + DAY)


def test_recovery_above_the_threshold(ledger: Ledger) -> None:
    alerts = feed(ledger, *usage(1, 65), funds("100.00", event_id="top-up"))
    assert states(alerts) == [("low", "50.00"), ("depleted", "0.00"), ("recovered", "95.00")]
    assert [a.alert_event_id for a in alerts] == [
        alert_event_id(APP, 1, "low"),
        alert_event_id(APP, 2, "depleted"),
        alert_event_id(APP, 3, "recovered"),
    ]
    assert ledger.entitled(APP, T0 + DAY)


def test_recovery_to_exactly_the_threshold_is_not_recovery(ledger: Ledger) -> None:
    feed(ledger, *usage(1, 20))  # 40.00, low
    assert feed(ledger, funds("10.00", event_id="top-up")) == []  # 50.00: still low
    assert states(feed(ledger, funds("0.01", event_id="cent"))) == [("recovered", "50.01")]


def test_direct_active_to_depleted_is_one_depleted_alert(ledger: Ledger) -> None:
    big = session("call", T0 + HOUR, "voice")
    feed(ledger, plan(T0, voice="100.00", event_id="plan-2"))
    assert states(feed(ledger, big)) == [("depleted", "-40.00")]


def test_funds_while_depleted_that_stay_under_the_threshold_alert_nobody(ledger: Ledger) -> None:
    """depleted -> low is no crossing of R12; the app serves again and the next crossing is reported."""
    feed(ledger, *usage(1, 70))  # -10.00
    assert feed(ledger, funds("30.00", event_id="small")) == []
    state = ledger.app(APP)
    assert (state.balance, state.status) == (Decimal("20.00"), "low")
    assert ledger.entitled(APP, T0 + DAY)
    again = feed(ledger, *usage(71, 20))
    assert states(again) == [("depleted", "0.00")]
    assert again[0].alert_event_id == alert_event_id(APP, 3, "depleted")  # low, depleted, depleted
    assert states(feed(ledger, funds("100.00", event_id="big"))) == [("recovered", "100.00")]


def test_a_plan_that_raises_the_threshold_can_make_the_balance_low() -> None:
    ledger = Ledger()
    feed(ledger, plan(), funds("100.00"))
    alerts = feed(ledger, plan(T0 + HOUR, threshold="150.00", event_id="plan-2"))
    assert [(a.state, a.threshold) for a in alerts] == [("low", "150.00")]
    assert states(feed(ledger, plan(T0 + 2 * HOUR, threshold="20", event_id="plan-3"))) == [("recovered", "100.00")]


def test_a_zero_threshold_goes_from_active_straight_to_depleted() -> None:
    ledger = Ledger()
    feed(ledger, plan(threshold="0"), funds("2.00"))
    assert feed(ledger, *usage(1, 1)) == []
    assert states(feed(ledger, *usage(2, 1))) == [("depleted", "0.00")]


def test_putting_a_plan_in_place_before_the_first_top_up_pages_nobody() -> None:
    ledger = Ledger()
    assert feed(ledger, plan()) == []
    assert ledger.app(APP).status == "depleted"  # nothing paid: not serving
    assert feed(ledger, funds("1000.00")) == []
    assert feed(Ledger(), funds("1000.00"), plan()) == []


def test_an_app_charged_without_funds_is_reported_depleted() -> None:
    ledger = Ledger()
    feed(ledger, plan())
    assert states(feed(ledger, *usage(1, 1))) == [("depleted", "-1.00")]


def test_first_top_up_under_the_threshold_is_reported_low() -> None:
    ledger = Ledger()
    assert states(feed(ledger, plan(), funds("30.00"))) == [("low", "30.00")]


# -- money ----------------------------------------------------------------------------------------


def test_a_million_sessions_at_half_a_cent_are_exactly_five_thousand() -> None:
    """0.005 x 1,000,000 summed as binary floats is not 5000; as decimals it is, to the last digit."""
    assert sum(0.005 for _ in range(1_000_000)) != 5000.0
    ledger = Ledger()
    feed(ledger, plan(alert="0.005"), funds("5000.00"))
    alerts: list[BalanceAlert] = []
    for i in range(1_000_000):
        alerts += ledger.charge(session(f"a{i}", T0 + i, "alert"))
    tally = ledger.app(APP).tallies["USD"]
    assert tally.alert_cost == Decimal("5000")
    assert tally.alert_sessions == 1_000_000
    assert tally.balance == 0
    assert states(alerts) == [("low", "50.00"), ("depleted", "0.00")]
    assert alerts[0].occurred_at == ms_to_datetime(T0 + 990_000 - 1)  # after 990,000 sessions: 50.000
    assert alerts[1].occurred_at == ms_to_datetime(T0 + 1_000_000 - 1)


def test_sixth_decimal_place_prices_and_balances_are_kept_exactly() -> None:
    ledger = Ledger()
    feed(ledger, plan(usage="0.000001"), funds("50.000003"))
    alerts = feed(ledger, *usage(1, 3))
    assert ledger.app(APP).balance == Decimal("50")
    assert states(alerts) == [("low", "50.00")]


def test_money_is_written_the_same_way_whatever_the_history() -> None:
    ledger = Ledger()
    feed(ledger, plan(usage="0.100"), funds("60.0"))
    alerts = feed(ledger, *usage(1, 100))  # 60.0 - 100 x 0.100 = 50.000
    assert states(alerts) == [("low", "50.00")]


# -- prices by the plan in force at the session's start ------------------------------------------


def test_plan_change_mid_day_prices_each_session_by_its_start() -> None:
    noon = T0 + 2 * HOUR
    ledger = Ledger()
    feed(ledger, plan(T0, usage="0.05"), plan(noon, usage="0.10", event_id="plan-2"), funds("1000.00"))
    feed(
        ledger,
        session("before", noon - 1, length=30 * MINUTE),  # runs past the change: still the old price
        session("at", noon),
        session("after", noon + HOUR),
    )
    tally = ledger.app(APP).tallies["USD"]
    assert tally.usage_cost == Decimal("0.25")
    assert tally.usage_sessions == 3


def test_plans_at_the_same_millisecond_the_greater_event_id_prices() -> None:
    ledger = Ledger()
    feed(ledger, funds("100.00"), plan(T0, usage="2.00", event_id="b"), plan(T0, usage="1.00", event_id="a"))
    feed(ledger, session("s", T0))
    assert ledger.app(APP).balance == Decimal("98.00")


def test_a_plan_that_arrives_after_the_sessions_it_prices_re_prices_them() -> None:
    ledger = Ledger()
    feed(ledger, plan(T0, usage="1.00"), funds("100.00"))
    feed(ledger, session("a", T0 + HOUR), session("b", T0 + 3 * HOUR), session("c", T0 + 5 * HOUR))
    assert ledger.app(APP).balance == Decimal("97.00")
    feed(ledger, plan(T0 + 2 * HOUR, usage="3.00", event_id="plan-2"))  # b and c now cost 3.00
    assert ledger.app(APP).balance == Decimal("93.00")
    feed(ledger, plan(T0 + 4 * HOUR, usage="0.50", event_id="plan-3"))  # and c 0.50
    assert ledger.app(APP).balance == Decimal("95.50")
    assert ledger.app(APP).tallies["USD"].usage_sessions == 3


def test_a_session_before_any_plan_is_held_unpriced_never_free() -> None:
    ledger = Ledger()
    feed(ledger, funds("100.00"))
    feed(ledger, session("early", T0 - HOUR), session("earlier", T0 - 2 * HOUR, "voice"))
    state = ledger.app(APP)
    assert state.unpriced == 2
    assert ledger.stats().sessions_unpriced == 2
    assert state.balance == Decimal("100.00")  # not charged yet, but not forgotten either
    feed(ledger, plan(T0))  # in force only from T0: it prices neither
    assert state.unpriced == 2
    feed(ledger, plan(T0 - 90 * MINUTE, usage="1.50", voice="4.00", event_id="back-dated"))
    assert state.unpriced == 1  # "early" is priced, "earlier" started before any plan
    assert state.balance == Decimal("98.50")
    feed(ledger, plan(T0 - DAY, voice="4.00", event_id="older"))
    assert state.unpriced == 0
    assert state.balance == Decimal("94.50")
    assert state.counters.sessions_charged == 2
    assert feed(ledger, session("early", T0 - HOUR)) == []
    assert state.counters.sessions_duplicate == 1


def test_each_currency_has_its_own_tally_and_the_plans_currency_counts() -> None:
    ledger = Ledger()
    feed(ledger, plan(currency="USD"), funds("100.00"), funds("500.00", event_id="eur", currency="EUR"))
    feed(ledger, *usage(1, 10))
    state = ledger.app(APP)
    assert state.balance == Decimal("90.00")
    assert state.tallies["EUR"].balance == Decimal("500.00")  # kept apart, never converted
    alerts = feed(ledger, plan(T0 + DAY, usage="1.00", currency="EUR", threshold="600", event_id="euro-plan"))
    assert [(a.state, a.balance, a.currency) for a in alerts] == [("low", "500.00", "EUR")]
    assert state.tallies["USD"].balance == Decimal("90.00")


def test_re_pricing_into_another_currency_leaves_the_state_a_plan_first_order_gives() -> None:
    euro = plan(T0, usage="1.00", currency="EUR", event_id="euro")
    dollar = plan(T0 + HOUR, usage="2.00", currency="USD", event_id="dollar")
    s = session("s", T0 + 2 * HOUR)
    plans_first, sessions_first = Ledger(), Ledger()
    feed(plans_first, euro, dollar, s)
    feed(sessions_first, euro, s, dollar)
    assert sessions_first.app(APP).tallies == plans_first.app(APP).tallies
    assert list(sessions_first.app(APP).tallies) == ["USD"]


# -- idempotence and the horizon -------------------------------------------------------------------


def test_duplicates_are_charged_and_credited_once(ledger: Ledger) -> None:
    s = session("s", T0 + HOUR)
    feed(ledger, s, s, funds("60.00"), plan(), s)
    state = ledger.app(APP)
    assert state.balance == Decimal("59.00")
    c = state.counters
    assert (c.sessions_charged, c.sessions_duplicate) == (1, 2)
    assert (c.funds_added, c.funds_duplicate) == (1, 1)
    assert (c.plans_added, c.plans_duplicate) == (1, 1)


def test_a_session_closing_on_a_settled_day_is_late_never_charged_twice() -> None:
    ledger = Ledger(BalanceConfig(dedupe_horizon_ms=2 * DAY))
    feed(ledger, plan(), funds("100.00"))
    old = session("old", T0 + HOUR)
    feed(ledger, old, session("now", T0 + 4 * DAY))
    state = ledger.app(APP)
    assert state.balance == Decimal("98.00")
    assert not any("old" in day for day in state.days.values())  # its id is forgotten ...
    assert feed(ledger, old) == []  # ... so its copy is refused rather than charged again
    assert feed(ledger, session("new-but-old", T0 + 2 * HOUR)) == []  # a new one too: late, not lost
    assert state.balance == Decimal("98.00")
    assert state.counters.sessions_late == 2
    assert [s.billing_session_id for s in ledger.late] == ["old", "new-but-old"]
    assert len(state.days) == 1


def test_a_plan_dated_before_settled_sessions_is_counted_for_reconciliation() -> None:
    ledger = Ledger(BalanceConfig(dedupe_horizon_ms=DAY))
    feed(ledger, plan(usage="1.00"), funds("100.00"), session("old", T0 + HOUR), session("new", T0 + 3 * DAY))
    feed(ledger, plan(T0 + 30 * MINUTE, usage="5.00", event_id="back-dated"))
    state = ledger.app(APP)
    assert state.counters.plans_backdated == 1
    assert state.balance == Decimal("94.00")  # "new" re-priced at 5.00; settled "old" keeps 1.00


def test_the_session_bucket_is_the_day_its_conversation_closed() -> None:
    ledger = Ledger(BalanceConfig(dedupe_horizon_ms=DAY))
    feed(ledger, plan(), funds("100.00"))
    long_one = session("long", T0, closed=T0 + 3 * DAY)  # started long ago, final only now
    assert charge(ledger.app(APP), long_one, ledger.config).outcome is Outcome.APPLIED
    assert (T0 + 3 * DAY) // DAY in ledger.app(APP).days


def test_horizon_under_a_day_is_refused() -> None:
    with pytest.raises(BalanceConfigError, match="under one day"):
        BalanceConfig(dedupe_horizon_ms=HOUR)


# -- alert ids, persistence ---------------------------------------------------------------------------


def test_alert_ids_are_derived_from_app_ordinal_and_state() -> None:
    assert alert_event_id(APP, 1, "low") == derived_id(f"balance|{APP}|1|low")
    assert alert_event_id(APP, 1, "low") != alert_event_id(APP, 1, "depleted")
    assert alert_event_id(APP, 1, "low") != alert_event_id("other", 1, "low")


def test_a_replay_from_the_saved_state_re_emits_the_same_alert_ids() -> None:
    inputs: list[Input] = [plan(), funds("60.00"), *usage(1, 70), funds("200.00", event_id="f2")]
    first = Ledger()
    feed(first, *inputs[:5])
    saved = msgspec.msgpack.encode(first.app(APP))
    before_crash = feed(first, *inputs[5:])
    restarted = Ledger()
    restarted.restore([msgspec.msgpack.decode(saved, type=AppBalance)])
    replayed = feed(restarted, *inputs[5:])
    assert replayed == before_crash
    assert msgspec.json.encode(restarted.app(APP)) == msgspec.json.encode(first.app(APP))


def test_the_state_is_plain_data() -> None:
    ledger = Ledger()
    feed(ledger, plan(), funds("60.00"), *usage(1, 3), session("early", T0 - HOUR))
    state = ledger.app(APP)
    document = json.loads(msgspec.json.encode(state))
    assert document["tallies"]["USD"]["funds"] == "60.00"  # money as decimal strings
    assert document["held"] == {"early": [T0 - HOUR, 0, (T0 - HOUR + 15 * MINUTE) // DAY]}
    assert msgspec.json.decode(msgspec.json.encode(state), type=AppBalance) == state


# -- entitlement --------------------------------------------------------------------------------------


def test_entitled_while_the_balance_is_above_zero() -> None:
    state = AppBalance(app_id=APP)
    now = T0 + 2 * HOUR
    assert not entitled(state, now)  # nothing paid
    apply_plan(state, plan())
    assert not entitled(state, now)
    apply_funds(state, funds("1.00"))
    assert entitled(state, now)
    charge(state, session("s", T0 + HOUR), BalanceConfig())
    assert state.balance == 0
    assert not entitled(state, now)  # zero is depleted


def test_an_unlimited_plan_serves_whatever_the_balance() -> None:
    ledger = Ledger(BalanceConfig(unlimited_plans=frozenset({"enterprise"})))
    feed(ledger, plan(T0, name="enterprise"), *usage(1, 5))
    assert ledger.app(APP).balance == Decimal("-5.00")  # still charged: finance invoices it
    assert ledger.entitled(APP, T0 + DAY)
    feed(ledger, plan(T0 + 2 * DAY, name="starter", event_id="downgrade"))
    assert ledger.entitled(APP, T0 + DAY)  # entitlement follows the plan in force at the instant asked
    assert not ledger.entitled(APP, T0 + 2 * DAY)


def test_ledger_stats_add_up_every_input() -> None:
    ledger = Ledger()
    s = session("s", T0 + HOUR)
    feed(ledger, plan(), plan(), funds("60.00"), s, s, session("x", T0 - HOUR))
    assert ledger.stats().as_dict() == {
        "sessions_charged": 2,
        "sessions_duplicate": 1,
        "sessions_late": 0,
        "sessions_unpriced": 1,
        "funds_added": 1,
        "funds_duplicate": 0,
        "plans_added": 1,
        "plans_duplicate": 1,
        "plans_backdated": 0,
        "alerts": 0,
    }
    assert ledger.plan_at(APP, T0) is not None
    assert ledger.plan_at("unknown", T0) is None


def test_funds_in_a_scheduled_plans_currency_count_from_its_date_and_nothing_before() -> None:
    """What the console accepts (docs/balances.md, "Money"): funds in the currency of the plan in force, or of a
    plan scheduled for later. Funds for a scheduled EUR plan are kept beside the USD balance and count from the
    plan's date; until then the USD balance alone decides status and entitlement. (An order in any other
    currency is refused by the console: it would never count.)"""
    state = AppBalance(app_id=APP)
    switch = T0 + 10 * DAY
    apply_plan(state, plan(T0, currency="USD"))
    apply_funds(state, funds("60.00", T0 + MINUTE))
    scheduled = msgspec.structs.replace(
        plan(T0 + HOUR, currency="EUR", event_id="plan-eur", name="basic-eur", threshold="10.00"),
        effective_at=ms_to_datetime(switch),
    )
    apply_plan(state, scheduled)
    apply_funds(state, funds("80.00", T0 + 2 * HOUR, event_id="funds-eur", currency="EUR"))
    assert (state.currency, state.balance, state.status) == ("USD", Decimal("60.00"), "active")
    assert str(state.tallies["EUR"].funds) == "80.00", "kept, not counted yet"
    assert entitled(state, T0 + 3 * HOUR)
    advance(state, switch)  # the processor moves the app's clock at the plan's instant
    assert (state.currency, state.balance, state.status) == ("EUR", Decimal("80.00"), "active")
    assert entitled(state, switch + MINUTE), "the app is not depleted at the switch"
