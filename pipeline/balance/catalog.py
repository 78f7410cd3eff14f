"""The plan catalogue: the plans an account admin may choose, with their rank, prices and terms.

A TOML file (``METERING_PLAN_CATALOG``; the default ships beside this module as
``catalog.toml``), read once at start-up and validated with the event contract's own types,
so a catalogue plan always makes a valid ``plan_changed``. The catalogue is what the console
offers and prices new changes with; the balance processor prices sessions by the events
themselves, so editing the catalogue never re-prices the past.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Struct

from pipeline.balance.money import is_currency
from pipeline.contract.events import (
    Currency,
    DecimalString,
    Id,
    IdleTimeoutMinutes,
    PlanChanged,
    TermMonths,
)

DEFAULT_CATALOG: Final = Path(__file__).with_name("catalog.toml")


class CatalogError(ValueError):
    """The catalogue file cannot be used; the message names the file, the plan and the field."""


class CatalogPlan(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One plan of the catalogue, as written in the file (money as decimal strings)."""

    rank: Annotated[int, Meta(ge=0, le=1_000_000)]
    price_per_usage_session: DecimalString
    price_per_alert_session: DecimalString
    price_per_voice_session: DecimalString
    currency: Currency = "USD"
    low_balance_threshold: DecimalString = "50.00"
    idle_timeout_minutes: IdleTimeoutMinutes | None = None
    term_months: TermMonths | None = None
    name: Id = "-"  # filled from the table's name

    def event(
        self, *, event_id: str, occurred_at: datetime, account_id: str, app_id: str, effective_at: datetime
    ) -> PlanChanged:
        """The ``plan_changed`` that puts an app on this plan from ``effective_at``."""
        return PlanChanged(
            event_id=event_id,
            occurred_at=occurred_at,
            account_id=account_id,
            app_id=app_id,
            plan=self.name,
            price_per_usage_session=self.price_per_usage_session,
            price_per_alert_session=self.price_per_alert_session,
            price_per_voice_session=self.price_per_voice_session,
            currency=self.currency,
            low_balance_threshold=self.low_balance_threshold,
            idle_timeout_minutes=self.idle_timeout_minutes,
            effective_at=None if effective_at == occurred_at else effective_at,
            term_months=self.term_months,
        )


@dataclass(frozen=True)
class PlanCatalog:
    """The plans by name; ``source`` says where they were read from (for messages)."""

    plans: dict[str, CatalogPlan]
    source: str = "catalogue"

    def get(self, name: str) -> CatalogPlan | None:
        return self.plans.get(name)

    def rank_of(self, name: str | None) -> int | None:
        """The rank of a plan by name; None for no plan or a plan not in the catalogue (set by an operator)."""
        plan = None if name is None else self.plans.get(name)
        return None if plan is None else plan.rank

    @property
    def names(self) -> list[str]:
        """Plan names, by rank then name: the order the console lists them in."""
        return sorted(self.plans, key=lambda n: (self.plans[n].rank, n))


def load_catalog(path: Path | None = None) -> PlanCatalog:
    """Read and validate a catalogue file (default: the shipped one); CatalogError says what is wrong."""
    path = path or DEFAULT_CATALOG
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"plan catalogue {path}: cannot be read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"plan catalogue {path}: not valid TOML ({exc})") from exc
    return parse_catalog(document, str(path))


def parse_catalog(document: dict[str, Any], source: str) -> PlanCatalog:
    """A catalogue from a parsed document ``{"plans": {name: {...}}}``."""
    tables = document.get("plans")
    if not isinstance(tables, dict) or not tables:
        raise CatalogError(f"plan catalogue {source}: no plans; add at least one [plans.<name>] table")
    unknown = sorted(set(document) - {"plans"})
    if unknown:
        raise CatalogError(
            f"plan catalogue {source}: unknown top-level key(s) {', '.join(unknown)}; only [plans.<name>]"
        )
    plans: dict[str, CatalogPlan] = {}
    for name, table in tables.items():
        where = f"plan catalogue {source}, plan {name!r}"
        if not isinstance(table, dict):
            raise CatalogError(f"{where}: expected a table [plans.{name}]")
        floats = sorted(k for k, v in table.items() if isinstance(v, float))
        if floats:
            raise CatalogError(f'{where}: {", ".join(floats)} must be quoted decimal strings ("0.05"), not numbers')
        if "name" in table:
            raise CatalogError(f"{where}: the plan's name is its table's name; remove the name field")
        try:
            plan = msgspec.convert({**table, "name": name}, CatalogPlan)
        except msgspec.ValidationError as exc:
            raise CatalogError(f"{where}: {exc}") from exc
        problem = _money_problem(plan)
        if problem:
            raise CatalogError(f"{where}: {problem}")
        plans[name] = plan
    return PlanCatalog(plans, source)


_PRICES: Final = (
    "price_per_usage_session",
    "price_per_alert_session",
    "price_per_voice_session",
    "low_balance_threshold",
)


def _money_problem(plan: CatalogPlan) -> str:
    if not is_currency(plan.currency):
        return f"currency {plan.currency!r} is not an ISO 4217 currency in use (e.g. USD, EUR, JPY)"
    for field in _PRICES:
        if Decimal(getattr(plan, field)) < 0:
            return f"{field} must not be negative"
    return ""
