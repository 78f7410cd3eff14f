"""The plan model (docs/balances.md, "Changing plans", "Terms and extensions"): the worked examples.

Billing periods, upgrades now and downgrades at the next period, a scheduled plan replaced by a
later decision, terms that expire and extensions that move them, owners, refunds, and the
catalogue. Each docs example is a test here, named after it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from pipeline.balance.catalog import CatalogError, load_catalog, parse_catalog
from pipeline.balance.ledger import (
    AppBalance,
    BalanceConfig,
    advance,
    apply_event,
    apply_funds,
    apply_plan,
    charge,
    entitled,
)
from pipeline.balance.money import decimals_of, format_amount, is_currency, minor_units
from pipeline.balance.notices import AppView, app_status, notices
from pipeline.balance.periods import add_months, next_period_start, period_start, plan_change
from pipeline.balance.plans import TimeoutSchedule
from pipeline.contract.decode import decode_event, to_ms
from pipeline.contract.events import (
    ExtensionDeclined,
    ExtensionGranted,
    ExtensionRequested,
    FundsRefunded,
    OwnerChanged,
    PlanChanged,
    Rejection,
    ms_to_datetime,
)
from pipeline.rules.config import DAY, HOUR, MINUTE, IdleTimeouts, RulesConfig
from tests.balance_support import ACCOUNT, APP, funds, plan, session


def ms(text: str) -> int:
    return to_ms(datetime.fromisoformat(text).replace(tzinfo=UTC))


def scheduled(decided: int, effective: int, **kwargs: object) -> PlanChanged:
    """A plan decided at ``decided`` that takes effect at ``effective``."""
    base = plan(decided, **kwargs)  # type: ignore[arg-type]
    return PlanChanged(**{**_fields(base), "effective_at": ms_to_datetime(effective)})


def _fields(event: PlanChanged) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


def extension(kind: str, t: int, request: str = "r-1", days: int = 10, event_id: str | None = None) -> object:
    base = {"event_id": event_id or f"{kind}-{request}", "occurred_at": ms_to_datetime(t), "account_id": ACCOUNT}
    if kind == "request":
        return ExtensionRequested(**base, app_id=APP, request_id=request, days=days, reason="contract pending")
    if kind == "grant":
        return ExtensionGranted(**base, app_id=APP, request_id=request, days=days)
    return ExtensionDeclined(**base, app_id=APP, request_id=request, reason="no")


# -- billing periods and terms -----------------------------------------------------------------------


def test_the_billing_period_is_the_utc_calendar_month() -> None:
    assert period_start(ms("2026-11-17T23:59:59")) == ms("2026-11-01T00:00:00")
    assert next_period_start(ms("2026-11-17T10:00:00")) == ms("2026-12-01T00:00:00")
    assert next_period_start(ms("2026-12-31T23:59:59.999")) == ms("2027-01-01T00:00:00")
    assert next_period_start(ms("2026-12-01T00:00:00")) == ms("2027-01-01T00:00:00")


def test_terms_count_calendar_months_and_clamp_the_day() -> None:
    assert add_months(ms("2026-01-31T12:00:00"), 1) == ms("2026-02-28T12:00:00")
    assert add_months(ms("2028-01-31T12:00:00"), 1) == ms("2028-02-29T12:00:00")
    assert add_months(ms("2026-11-15T08:30:00"), 12) == ms("2027-11-15T08:30:00")
    assert add_months(ms("2026-11-15T08:30:00"), 14) == ms("2028-01-15T08:30:00")


# -- how a change is carried out ----------------------------------------------------------------------

NOW = ms("2026-11-17T10:00:00")
NEXT = ms("2026-12-01T00:00:00")


@pytest.mark.parametrize(
    ("current", "rank", "new", "new_rank", "expires", "expected"),
    [
        (None, None, "starter", 1, None, ("start", NOW)),
        ("starter", 1, "growth", 2, None, ("upgrade", NOW)),
        ("growth", 2, "starter", 1, None, ("downgrade", NEXT)),
        ("growth", 2, "growth", 2, None, ("renewal", NOW)),
        ("business", 3, "business", 3, ms("2027-01-10T00:00:00"), ("renewal", ms("2027-01-10T00:00:00"))),
        ("business", 3, "starter", 1, NOW - DAY, ("start", NOW)),  # expired: anything starts now
        ("growth", 2, "growth-eu", 2, None, ("switch", NOW)),
    ],
)
def test_upgrades_now_downgrades_at_the_next_period(  # noqa: PLR0917 - one parameter per column
    current: str | None,
    rank: int | None,
    new: str,
    new_rank: int,
    expires: int | None,
    expected: tuple[str, int],
) -> None:
    got = plan_change(
        current_rank=rank, current_name=current, expires_ms=expires, new_rank=new_rank, new_name=new, now_ms=NOW
    )
    assert got == expected


# -- scheduled plans --------------------------------------------------------------------------------------


def test_a_scheduled_downgrade_prices_sessions_after_the_period_start_at_the_new_plan() -> None:
    """Worked example 13: growth at 1.00 until 1 Dec, starter at 3.00 from 1 Dec."""
    state = AppBalance(app_id=APP)
    apply_plan(state, plan(ms("2026-11-01T00:00:00"), "1.00", event_id="growth", name="growth"))
    apply_funds(state, funds("100.00", ms("2026-11-01T00:00:00")))
    apply_plan(state, scheduled(NOW, NEXT, usage="3.00", event_id="starter", name="starter"))
    assert state.plan is not None
    assert state.plan.plan == "growth", "announced, not yet in force"
    assert [p.plan for p in state.plans.pending(NOW)] == ["starter"]
    config = BalanceConfig()
    charge(state, session("before", NEXT - HOUR), config)
    charge(state, session("after", NEXT + HOUR), config)
    assert state.balance == Decimal("96.00")  # 1.00 + 3.00
    assert state.plan.plan == "starter", "the clock passed its instant"


def test_a_later_decision_replaces_a_pending_downgrade() -> None:
    """Worked example 14: an upgrade decided before the downgrade took effect withdraws it."""
    state = AppBalance(app_id=APP)
    apply_plan(state, plan(ms("2026-11-01T00:00:00"), "2.00", event_id="growth", name="growth"))
    apply_plan(state, scheduled(NOW, NEXT, usage="3.00", event_id="starter", name="starter"))
    apply_plan(state, plan(NOW + HOUR, "1.00", event_id="business", name="business"))
    assert state.plans.cancelled == {"starter"}
    assert state.plans.pending(NOW + HOUR) == []
    in_force = state.plans.at(NEXT + DAY)
    assert in_force is not None
    assert in_force.plan == "business"


def test_replacing_a_pending_plan_reprices_sessions_it_had_priced_whatever_the_order() -> None:
    config = BalanceConfig()
    inputs: list[object] = [
        plan(ms("2026-11-01T00:00:00"), "2.00", event_id="growth", name="growth"),
        scheduled(NOW, NEXT, usage="3.00", event_id="starter", name="starter"),
        scheduled(NOW + HOUR, NEXT, usage="5.00", event_id="starter-2", name="basic"),
        session("s", NEXT + HOUR),
    ]
    balances = set()
    for order in (inputs, list(reversed(inputs)), [inputs[0], inputs[3], inputs[1], inputs[2]]):
        state = AppBalance(app_id=APP)
        for item in order:
            if isinstance(item, PlanChanged):
                apply_plan(state, item)
            else:
                charge(state, item, config)  # type: ignore[arg-type]
        balances.add(state.balance)
        assert state.plans.cancelled == {"starter"}
    assert balances == {Decimal("-5.00")}


def test_a_scheduled_plan_becomes_current_when_the_clock_reaches_it_and_can_cross_a_line() -> None:
    state = AppBalance(app_id=APP)
    apply_plan(state, plan(ms("2026-11-01T00:00:00"), threshold="10.00", event_id="growth", name="growth"))
    apply_funds(state, funds("60.00", ms("2026-11-01T00:00:00")))
    apply_plan(state, scheduled(NOW, NEXT, threshold="100.00", event_id="starter", name="starter"))
    assert state.status == "active"
    assert advance(state, NEXT - 1) == []
    [alert] = advance(state, NEXT)
    assert (alert.state, alert.threshold) == ("low", "100.00")


def test_effective_at_is_not_checked_against_the_clock_but_occurred_at_is() -> None:
    far = scheduled(NOW, NOW + 300 * DAY)
    ok = decode_event(msgspec.json.encode(far), NOW)
    assert not isinstance(ok, Rejection)
    future = PlanChanged(**{**_fields(far), "occurred_at": ms_to_datetime(NOW + 2 * DAY)})
    refused = decode_event(msgspec.json.encode(future), NOW)
    assert isinstance(refused, Rejection)
    assert refused.code == "out_of_range"


# -- terms, expiry, extensions --------------------------------------------------------------------------------


def term_state() -> AppBalance:
    state = AppBalance(app_id=APP)
    event = PlanChanged(
        **{**_fields(plan(ms("2026-01-15T00:00:00"), event_id="annual", name="business")), "term_months": 12}
    )
    apply_plan(state, event)
    apply_funds(state, funds("100.00", ms("2026-01-15T00:00:00")))
    return state


def test_an_expired_plan_prices_sessions_but_is_not_entitled() -> None:
    """Worked example 15: a 12-month term from 15 Jan 2026 ends 15 Jan 2027."""
    state = term_state()
    end = ms("2027-01-15T00:00:00")
    assert state.expires_at(end - 1) == end
    assert entitled(state, end - 1)
    assert state.expired(end)
    assert not entitled(state, end)
    charge(state, session("after", end + HOUR), BalanceConfig())
    assert state.balance == Decimal("99.00"), "sessions keep being priced"


def test_a_granted_extension_moves_the_end_of_the_term() -> None:
    state = term_state()
    end = ms("2027-01-15T00:00:00")
    apply_event(state, extension("request", end - 5 * DAY, days=10))  # type: ignore[arg-type]
    pending = state.pending_extension()
    assert pending is not None
    assert pending.days == 10
    assert state.expires_at(end) == end, "asking changes nothing"
    apply_event(state, extension("grant", end - 4 * DAY, days=10))  # type: ignore[arg-type]
    assert state.pending_extension() is None
    assert state.expires_at(end) == end + 10 * DAY
    assert entitled(state, end + 9 * DAY)
    assert not entitled(state, end + 10 * DAY)
    again = apply_event(state, extension("grant", end - 3 * DAY, days=10, event_id="again"))  # type: ignore[arg-type]
    assert again.outcome.name == "DUPLICATE", "a request is decided once"
    assert state.expires_at(end) == end + 10 * DAY


def test_a_declined_extension_changes_nothing_and_is_no_longer_pending() -> None:
    state = term_state()
    end = ms("2027-01-15T00:00:00")
    apply_event(state, extension("request", end - 5 * DAY))  # type: ignore[arg-type]
    apply_event(state, extension("decline", end - 4 * DAY))  # type: ignore[arg-type]
    assert state.pending_extension() is None
    assert state.extensions["r-1"].status == "declined"
    assert state.expires_at(end) == end


def test_a_renewal_starts_a_new_term() -> None:
    state = term_state()
    end = ms("2027-01-15T00:00:00")
    renewal = PlanChanged(**{**_fields(plan(end + DAY, event_id="renewal", name="business")), "term_months": 12})
    apply_plan(state, renewal)
    assert not state.expired(end + DAY)
    assert state.expired(end + DAY - 1), "expired between the end of the term and the renewal"
    assert state.expires_at(end + DAY) == ms("2028-01-16T00:00:00")


# -- owners, refunds -------------------------------------------------------------------------------------------


def test_the_latest_owner_change_wins_whatever_the_arrival_order() -> None:
    first = OwnerChanged(event_id="o1", occurred_at=ms_to_datetime(NOW), account_id=ACCOUNT, app_id=APP, user_id="ann")
    second = OwnerChanged(
        event_id="o2", occurred_at=ms_to_datetime(NOW + 1), account_id=ACCOUNT, app_id=APP, user_id="bob"
    )
    for order in ((first, second), (second, first), (second, first, second)):
        state = AppBalance(app_id=APP)
        for event in order:
            apply_event(state, event)
        assert state.owner == "bob"


def test_a_refund_takes_money_out_once() -> None:
    state = AppBalance(app_id=APP)
    apply_plan(state, plan())
    apply_funds(state, funds("100.00"))
    refund = FundsRefunded(
        event_id="r", occurred_at=ms_to_datetime(NOW), account_id=ACCOUNT, app_id=APP, amount="40.00", currency="USD"
    )
    apply_event(state, refund)
    apply_event(state, refund)
    assert state.balance == Decimal("60.00")


# -- status and notices ---------------------------------------------------------------------------------------

CATALOG = load_catalog()


def view(**fields: object) -> AppView:
    base: dict[str, object] = {
        "plan": "growth",
        "balance_status": "active",
        "balance": "500.00",
        "threshold": "50.00",
        "currency": "USD",
        "expires_at": None,
        "scheduled_plan": None,
        "scheduled_at": None,
    }
    return AppView(**{**base, **fields})  # type: ignore[arg-type]


def test_status_is_setup_expired_or_the_balances() -> None:
    now = ms_to_datetime(NOW)
    assert app_status(view(plan=None, balance_status=None), now) == "setup"
    assert app_status(view(expires_at=now), now) == "expired"
    assert app_status(view(balance_status="low"), now) == "low"
    assert app_status(view(balance_status="depleted"), now) == "depleted"
    assert app_status(view(), now) == "active"


def test_notices_say_what_is_coming_with_its_date() -> None:
    now = ms_to_datetime(NOW)
    got = notices(
        view(
            balance_status="low",
            balance="12.00",
            expires_at=ms_to_datetime(NOW + 20 * DAY),
            scheduled_plan="starter",
            scheduled_at=ms_to_datetime(NEXT),
            extension_request_id="r-1",
            extension_days=14,
            extension_reason="contract",
            extension_requested_at=now,
        ),
        now,
        CATALOG,
    )
    kinds = {n["type"]: n for n in got}
    assert set(kinds) == {"plan_expiring", "balance_low", "scheduled_downgrade", "extension_pending"}
    assert kinds["plan_expiring"]["date"] == "2026-12-07"
    assert kinds["scheduled_downgrade"]["date"] == "2026-12-01"
    assert kinds["scheduled_downgrade"]["plan"] == "starter"
    assert kinds["extension_pending"]["request_id"] == "r-1"
    assert notices(view(expires_at=ms_to_datetime(NOW + 31 * DAY)), now, CATALOG) == []
    assert [n["type"] for n in notices(view(balance_status="depleted", balance="-1.00"), now, CATALOG)] == [
        "balance_depleted"
    ]


# -- catalogue and money --------------------------------------------------------------------------------------


def test_the_shipped_catalogue_loads_and_orders_plans_by_rank() -> None:
    assert CATALOG.names == ["starter", "growth", "business"]
    business = CATALOG.get("business")
    assert business is not None
    assert (business.term_months, business.low_balance_threshold) == (12, "100.00")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "no plans"),
        ({"plans": {"a": {"rank": 1, "price_per_usage_session": 0.1}}}, "must be quoted"),
        (
            {
                "plans": {
                    "a": {
                        "rank": 1,
                        "price_per_usage_session": "-1",
                        "price_per_alert_session": "0",
                        "price_per_voice_session": "0",
                    }
                }
            },
            "must not be negative",
        ),
        ({"plans": {"a": {"rank": 1}}}, "price_per_usage_session"),
        (
            {
                "plans": {
                    "a": {
                        "rank": 1,
                        "price_per_usage_session": "1",
                        "price_per_alert_session": "0",
                        "price_per_voice_session": "0",
                        "colour": "red",
                    }
                }
            },
            "colour",
        ),
        ({"plans": {}, "extra": 1}, "no plans"),
    ],
)
def test_a_wrong_catalogue_is_refused_naming_what_is_wrong(document: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document, "test.toml")


def test_a_catalogue_file_that_does_not_exist_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path / "missing.toml")


def test_currencies_have_their_own_decimals() -> None:
    assert (minor_units("USD"), minor_units("JPY"), minor_units("KWD"), minor_units("CLF")) == (2, 0, 3, 4)
    assert decimals_of(Decimal("10.50")) == 1
    assert decimals_of(Decimal("10.125")) == 3
    assert decimals_of(Decimal("100")) == 0


def test_currencies_are_iso_4217_codes_in_use() -> None:
    assert all(is_currency(c) for c in ("USD", "EUR", "JPY", "KWD", "CHF", "INR"))
    assert not any(is_currency(c) for c in ("ZZZ", "usd", "US", "XAU", "XXX", "XTS", ""))


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [
        ("12000", "JPY", "12000"),
        ("1E+2", "JPY", "100"),
        ("0.5", "JPY", "0.5"),
        ("250.5", "USD", "250.50"),
        ("49.995", "USD", "49.995"),
        ("-5", "USD", "-5.00"),
        ("-0.00", "USD", "0.00"),
        ("0", "JPY", "0"),
        ("1.5", "KWD", "1.500"),
        ("1.5", "CLF", "1.5000"),
    ],
)
def test_amounts_are_written_with_the_currencys_minor_units_and_never_rounded(
    amount: str, currency: str, written: str
) -> None:
    assert format_amount(Decimal(amount), currency) == written


def test_a_catalogue_plan_in_a_currency_not_in_iso_4217_is_refused() -> None:
    plan = {"rank": 1, **{f"price_per_{k}_session": "1" for k in ("usage", "alert", "voice")}, "currency": "ZZZ"}
    with pytest.raises(CatalogError, match="ISO 4217"):
        parse_catalog({"plans": {"a": plan}}, "test.toml")


# -- idle timeouts of replaced plans (the rules engine's view) --------------------------------------------------


def test_a_replaced_plan_never_sets_the_idle_timeout() -> None:
    """The stream's plan feed and `metering compute` give the rules engine the timeout in force at each
    plan's instant: a scheduled downgrade to a 5-minute plan, then replaced by keeping the 30-minute
    plan, leaves 30 minutes in December."""
    schedule = TimeoutSchedule()
    timeouts = IdleTimeouts(RulesConfig())
    events = [
        plan(ms("2026-11-01T00:00:00"), event_id="business", name="business"),
        scheduled(NOW, NEXT, event_id="starter", name="starter"),
        plan(NOW + HOUR, event_id="business-again", name="business"),
    ]
    events = [PlanChanged(**{**_fields(e), "idle_timeout_minutes": 30 if e.plan == "business" else 5}) for e in events]
    for event in events:
        for change in schedule.add(event):
            timeouts.plan_changed(*change)
    assert timeouts.at(APP, NOW) == 30 * MINUTE
    assert timeouts.at(APP, NEXT + DAY) == 30 * MINUTE, "the replaced downgrade sets nothing"
    assert schedule.add(events[1]) == [], "a copy changes nothing"
    fresh, replayed = TimeoutSchedule(), IdleTimeouts(RulesConfig())
    for event in reversed(events):
        for change in fresh.add(event):
            replayed.plan_changed(*change)
    assert replayed.at(APP, NEXT + DAY) == 30 * MINUTE, "whatever the order"
    only_downgrade, engine = TimeoutSchedule(), IdleTimeouts(RulesConfig())
    for event in events[:2]:
        for change in only_downgrade.add(event):
            engine.plan_changed(*change)
    assert engine.at(APP, NEXT + DAY) == 5 * MINUTE, "a downgrade that stands sets its timeout at its instant"
    assert engine.at(APP, NEXT - 1) == 30 * MINUTE


def test_account_changed_has_its_own_topic_and_key_and_is_refused_elsewhere() -> None:
    from devtools.produce import _routes  # noqa: PLC0415
    from pipeline.contract.events import AccountChanged, OwnerChanged  # noqa: PLC0415
    from pipeline.infra.settings import Topics  # noqa: PLC0415

    routes = _routes(Topics())
    assert routes[AccountChanged] == ("billing-accounts", "account_id")
    assert routes[OwnerChanged] == ("billing-plans", "app_id")
    payload = msgspec.json.encode(
        {
            "type": "account_changed",
            "event_id": "e",
            "occurred_at": "2026-11-01T00:00:00Z",
            "account_id": "a",
            "billing_type": "enterprise",
        }
    )
    refused = decode_event(payload, NOW)
    assert isinstance(refused, Rejection)
    assert refused.code == "wrong_topic", "on an app's topic it is dead-lettered, not mistaken for an app event"
