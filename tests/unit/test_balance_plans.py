"""R12 plans: the plan in force at an instant, ties, duplicates, and the unlimited-plan rule."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from pipeline.balance.plans import Plan, PlanBook, PlanTimeline, is_unlimited
from pipeline.contract.events import PlanChanged
from pipeline.rules.config import HOUR, MINUTE
from tests.balance_support import APP, plan
from tests.support import T0


def timeline(*events: PlanChanged) -> PlanTimeline:
    t = PlanTimeline()
    for e in events:
        t.add(Plan.from_event(e))
    return t


def usage_price(p: Plan | None) -> Decimal:
    assert p is not None, "no plan in force"
    return p.price("usage")


def test_prices_are_exact_decimals_with_contract_defaults() -> None:
    p = Plan.from_event(plan(usage="0.005", alert="0.000001", voice="123456789012345.999999"))
    assert p.price("usage") == Decimal("0.005")
    assert p.price("alert") == Decimal("0.000001")
    assert p.price("voice") == Decimal("123456789012345.999999")
    assert p.low_balance_threshold == Decimal("50.00")
    assert p.currency == "USD"
    assert p.idle_timeout_minutes is None


def test_plan_in_force_is_the_latest_at_or_before_the_instant() -> None:
    t = timeline(plan(T0, "1.00", event_id="a"), plan(T0 + HOUR, "2.00", event_id="b"))
    assert t.at(T0 - 1) is None
    assert usage_price(t.at(T0)) == Decimal("1.00")
    assert usage_price(t.at(T0 + HOUR - 1)) == Decimal("1.00")
    assert usage_price(t.at(T0 + HOUR)) == Decimal("2.00")
    assert usage_price(t.at(T0 + 100 * HOUR)) == Decimal("2.00")


def test_plans_at_the_same_millisecond_are_ordered_by_event_id_whatever_the_arrival() -> None:
    first = timeline(plan(T0, "1.00", event_id="b"), plan(T0, "2.00", event_id="a"))
    second = timeline(plan(T0, "2.00", event_id="a"), plan(T0, "1.00", event_id="b"))
    for t in (first, second):
        in_force = t.at(T0)
        assert in_force is not None
        assert in_force.event_id == "b"
        assert [p.event_id for p in t.plans] == ["a", "b"]
    assert first == second


def test_a_plan_delivered_twice_is_kept_once() -> None:
    t = PlanTimeline()
    assert t.add(Plan.from_event(plan(T0, event_id="p")))
    assert not t.add(Plan.from_event(plan(T0, event_id="p")))
    assert len(t.plans) == 1


def test_pending_lists_the_plans_still_to_come_and_latest_the_last() -> None:
    a, b, c = (Plan.from_event(plan(T0 + i * MINUTE, event_id=f"p{i}")) for i in range(3))
    t = PlanTimeline()
    for p in (c, a, b):
        t.add(p)
    assert t.pending(T0) == [b, c]
    assert t.pending(T0 + 2 * MINUTE) == []
    assert t.latest() == c


def test_plan_book_answers_per_app() -> None:
    book = PlanBook()
    assert book.apply(plan(T0, "1.00"))
    assert not book.apply(plan(T0, "1.00"))
    assert book.apply(plan(T0, "3.00", app_id="other-app"))
    assert usage_price(book.plan_at(APP, T0)) == Decimal("1.00")
    assert usage_price(book.plan_at("other-app", T0)) == Decimal("3.00")
    assert book.plan_at(APP, T0 - 1) is None
    assert book.plan_at("no-such-app", T0) is None


def test_unlimited_is_by_configured_plan_name_only() -> None:
    enterprise = Plan.from_event(plan(name="enterprise"))
    starter = Plan.from_event(plan(name="starter"))
    assert is_unlimited(enterprise, {"enterprise"})
    assert not is_unlimited(starter, {"enterprise"})
    assert not is_unlimited(enterprise, frozenset())
    assert not is_unlimited(None, {"enterprise"})


def test_a_timeline_survives_serialisation() -> None:
    t = timeline(plan(T0, "0.005", event_id="a"), plan(T0 + HOUR, "1.10", currency="EUR", event_id="b"))
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(t), type=PlanTimeline) == t
