"""The browser tests' account data: about 100 days of realistic traffic, metered by the real engine.

Conversations come from :mod:`devtools.traffic` (the demo's generator), a day at a time with a
weekday rhythm so the graphs have a shape; the rules engine (:class:`~pipeline.rules.meter.Meter`,
the one the workers and `metering compute` run) turns them into billing sessions. The tests then
publish those sessions, the transfers and the plan events to the real topics, so the store's sinks
and the balance processor take them from there, as in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from devtools.traffic import TrafficShape, apps, live
from pipeline.balance.catalog import load_catalog
from pipeline.contract.events import format_ms, ms_to_datetime
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.rules.model import BillingSession
from tests.support import in_time_order, meter_run

DAY: Final = 24 * 60 * MINUTE
#: After the plans (a day before the traffic), some apps subscribe more seats: 85 days later.
SEATS_GROW_AFTER: Final = 85 * DAY
#: Three accounts of three apps each: acct-00 prepaid (the admin's), acct-01 enterprise, acct-02 prepaid.
SHAPE: Final = TrafficShape(accounts=3, apps_per_account=3, duplicate_share=0.0)
#: Conversations per day on a weekday, Monday first; weekends are quiet.
WEEKDAY_CONVERSATIONS: Final = (70, 85, 80, 90, 75, 30, 20)


@dataclass(frozen=True)
class Traffic:
    events: list[dict[str, Any]]
    sessions: list[BillingSession]

    def transfers(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "agent_transfer"]


def all_apps() -> list[tuple[str, str]]:
    return apps(SHAPE)


def make_traffic(end_ms: int, days: int, seed: int = 11) -> Traffic:
    """``days`` whole UTC days of traffic ending at ``end_ms``'s day, and its billing sessions."""
    first_day = end_ms // DAY - days + 1
    events: list[dict[str, Any]] = []
    for n in range(days):
        start = (first_day + n) * DAY
        stop = min(start + DAY, end_ms)
        weekday = (first_day + n + 3) % 7  # 1970-01-01 was a Thursday
        per_day = WEEKDAY_CONVERSATIONS[weekday] * (1 + 0.25 * ((n * 7919) % 5) / 4)
        rate = per_day * 10.2 / 86_400  # events/s: about 10.2 events per conversation
        for due, event in live(start, rate, seed + n, shape=SHAPE, conversation_prefix=f"d{n}-"):
            if due >= stop:
                break
            events.append(event)
    events = in_time_order(events)
    sessions = meter_run(events, RulesConfig())
    return Traffic(events, sessions)


def plan_events(at_ms: int) -> list[dict[str, Any]]:
    """A catalogue plan, funds and seats for every app (billing-plans), as the platform's admin tools send them."""
    catalog = load_catalog()
    names = [p.name for p in sorted(catalog.plans.values(), key=lambda p: p.rank)]
    occurred_at = ms_to_datetime(at_ms)
    out: list[dict[str, Any]] = []
    for i, (account, app) in enumerate(all_apps()):
        chosen = catalog.plans[names[i % len(names)]]
        plan = chosen.event(
            event_id=f"bt-plan-{app}", occurred_at=occurred_at, account_id=account, app_id=app, effective_at=occurred_at
        )
        out.append({k: v for k, v in msgspec.to_builtins(plan).items() if v is not None})
        base = {"occurred_at": format_ms(at_ms), "account_id": account, "app_id": app}
        funds = {"amount": "2500.00", "currency": chosen.currency}
        out.append({"type": "funds_added", "event_id": f"bt-funds-{app}", **base, **funds})
        out.append({"type": "agents_subscribed", "event_id": f"bt-seats-{app}", **base, "agents": 3 + i % 4})
        if i % 3 == 0:  # a team that grew during the traffic's days: the Agents line has a step
            later = {**base, "occurred_at": format_ms(at_ms + SEATS_GROW_AFTER)}
            out.append({"type": "agents_subscribed", "event_id": f"bt-seats-{app}-2", **later, "agents": 5 + i % 4})
    return out


def seats(account: str) -> int:
    """The account's seats at the end of the traffic (the highest, as they only grow)."""
    latest: dict[str, int] = {}
    for e in plan_events(0):
        if e["type"] == "agents_subscribed" and e["account_id"] == account:
            latest[e["app_id"]] = e["agents"]
    return sum(latest.values())
