"""The idle timeout in force for an app (R2, R12): configuration, then plans, in a fixed order."""

from __future__ import annotations

import itertools

from pipeline.rules.config import MINUTE, IdleTimeouts, RulesConfig

T = 1_790_000_000_000


def test_a_plan_sets_the_timeout_from_its_instant_on() -> None:
    timeouts = IdleTimeouts(RulesConfig())
    timeouts.plan_changed("app", T, 30 * MINUTE, "p1")
    assert timeouts.at("app", T - 1) == 15 * MINUTE
    assert timeouts.at("app", T) == 30 * MINUTE
    assert timeouts.at("other", T) == 15 * MINUTE


def test_plans_of_the_same_millisecond_resolve_by_event_id_in_any_arrival_order() -> None:
    plans = [("p-a", 20 * MINUTE), ("p-c", 40 * MINUTE), ("p-b", None)]
    for order in itertools.permutations(plans):
        timeouts = IdleTimeouts(RulesConfig())
        for event_id, timeout in order:
            timeouts.plan_changed("app", T, timeout, event_id)
        assert timeouts.at("app", T) == 40 * MINUTE, order


def test_a_plan_without_a_timeout_goes_back_to_the_configured_one() -> None:
    timeouts = IdleTimeouts(RulesConfig(app_idle_timeout_ms={"app": 10 * MINUTE}))
    timeouts.plan_changed("app", T, 30 * MINUTE, "p1")
    timeouts.plan_changed("app", T + MINUTE, None, "p2")
    assert timeouts.at("app", T + MINUTE) == 10 * MINUTE
