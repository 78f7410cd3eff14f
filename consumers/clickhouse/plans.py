"""Plans, funds, seats, started transfers, balance snapshots, billing types, orders and invoices in
ClickHouse (migrations 005, 010 and 011).

Written by the plan sinks (``consumers.plan_sinks``) with the sink's flush contract: one call
of :meth:`PlanStore.insert` per Kafka offset range, with that range's token, into every table
the range has rows for. A retried range is dropped per table by its token; a replay under
another token is absorbed by the tables' keys (see the migration). Read back by `metering usage`
(the ``agents`` and ``active_agents`` columns), `metering plans` and the console.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any, Final

import msgspec
from clickhouse_connect.driver.client import Client

from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.store import insert_deduplicated
from consumers.clickhouse.usage import Period, named_query, usage
from pipeline.balance.money import format_money
from pipeline.contract.decode import to_ms
from pipeline.contract.events import (
    AccountChanged,
    AgentsSubscribed,
    AgentTransfer,
    BalanceSnapshot,
    ExtensionDeclined,
    ExtensionGranted,
    ExtensionRequested,
    FundsAdded,
    FundsRefunded,
    OwnerChanged,
    PlanChanged,
    PlanEvent,
)
from pipeline.orders.events import InvoiceIssued, OrderState
from pipeline.rules.agent_book import AgentRow, period_last_day, with_agents
from pipeline.rules.agents import SeatTimeline
from pipeline.rules.attribution import UsageRow

__all__ = [
    "PLAN_COLUMNS",
    "PlanRecord",
    "PlanRow",
    "PlanStore",
    "active_agents",
    "plans_overview",
    "record_key",
    "seat_timelines",
    "usage_with_agents",
]

#: What the plan sinks store: billing-plans events, started transfers, balance snapshots, the
#: accounts' billing types and the order processor's orders and invoices.
PlanRecord = PlanEvent | AgentTransfer | BalanceSnapshot | AccountChanged | OrderState | InvoiceIssued

_EVENT: Final = ("account_id", "app_id", "event_id", "occurred_at")
_PRICES: Final = ("price_per_usage_session", "price_per_alert_session", "price_per_voice_session")
_EXTENSION: Final = (*_EVENT, "type", "request_id", "days", "reason", "user_id")

#: Table -> columns written, in the order tables are written (one insert per table and token).
_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "plan_changes": (
        *_EVENT,
        "plan",
        *_PRICES,
        "currency",
        "low_balance_threshold",
        "idle_timeout_minutes",
        "effective_at",
        "term_months",
    ),
    "funds_added": (*_EVENT, "amount", "currency"),
    "funds_refunded": (*_EVENT, "amount", "currency"),
    "agent_subscriptions": (*_EVENT, "agents"),
    "extension_events": _EXTENSION,
    "owner_changes": (*_EVENT, "user_id", "changed_by"),
    "agent_transfers_started": (*_EVENT, "agent_id", "conversation_id"),
    "balance_snapshots": (
        "account_id",
        "app_id",
        "plan",
        "currency",
        "funds",
        "usage_cost",
        "alert_cost",
        "voice_cost",
        "usage_sessions",
        "alert_sessions",
        "voice_sessions",
        "unpriced_sessions",
        "balance",
        "balance_amount",
        "threshold",
        "status",
        "entitled",
        "agents",
        "version",
        "updated_at",
        "expires_at",
        "expired",
        "scheduled_plan",
        "scheduled_at",
        "owner",
        "extension_request_id",
        "extension_days",
        "extension_reason",
        "extension_requested_at",
    ),
    "billing_accounts": ("account_id", "event_id", "occurred_at", "billing_type"),
    "orders": (
        "account_id",
        "order_id",
        "app_id",
        "description",
        "amount",
        "currency",
        "payment_method",
        "payment_status",
        "provider",
        "provider_reference",
        "failure_reason",
        "billing_date",
        "invoice_id",
        "credit_note_id",
        "requested_by",
        "created_at",
        "updated_at",
        "version",
    ),
    "invoices": (
        "account_id",
        "invoice_id",
        "number",
        "kind",
        "order_id",
        "app_id",
        "issued_at",
        "billing_date",
        "currency",
        "total",
        "document",
    ),
}

#: Record type -> its table.
_TABLE_OF: Final[dict[type, str]] = {
    PlanChanged: "plan_changes",
    FundsAdded: "funds_added",
    FundsRefunded: "funds_refunded",
    AgentsSubscribed: "agent_subscriptions",
    ExtensionRequested: "extension_events",
    ExtensionGranted: "extension_events",
    ExtensionDeclined: "extension_events",
    OwnerChanged: "owner_changes",
    AgentTransfer: "agent_transfers_started",
    BalanceSnapshot: "balance_snapshots",
    AccountChanged: "billing_accounts",
    OrderState: "orders",
    InvoiceIssued: "invoices",
}

_document: Final = msgspec.json.Encoder()

#: How a record's field becomes a column value: times as epoch ms, contract money as Decimal.
_CONVERT: Final[dict[str, Callable[[Any], Any]]] = {
    **dict.fromkeys(
        ("occurred_at", "updated_at", "effective_at", "scheduled_at", "expires_at", "extension_requested_at"),
        lambda v: None if v is None else to_ms(v),
    ),
    **dict.fromkeys(("created_at", "issued_at"), to_ms),
    **dict.fromkeys(("amount", "total", "low_balance_threshold", *_PRICES), Decimal),
}


def _value(record: Any, name: str) -> Any:
    """A column's value for ``record``: its field, or what the table derives from it."""
    if name == "balance_amount":
        return Decimal(record.balance)
    if name == "type":
        return record.__struct_config__.tag
    if name == "document":
        return _document.encode(record).decode()
    if name == "user_id" and isinstance(record, ExtensionRequested):
        return record.requested_by
    value = getattr(record, name, None)
    convert = _CONVERT.get(name)
    return convert(value) if convert is not None else value


def _columns(rows: Sequence[Any], names: tuple[str, ...]) -> list[list[Any]]:
    return [[_value(r, name) for r in rows] for name in names]


def record_key(record: PlanRecord) -> str:
    """The row's identity in its table: ``(app, event_id)`` for events (R1), ``(app, version)`` for snapshots."""
    if isinstance(record, BalanceSnapshot):
        return f"balance_snapshots:{record.app_id}:{record.version}"
    if isinstance(record, AccountChanged):
        return f"billing_accounts:{record.account_id}:{record.event_id}"
    if isinstance(record, OrderState):
        return f"orders:{record.account_id}:{record.order_id}:{record.version}"
    if isinstance(record, InvoiceIssued):
        return f"invoices:{record.account_id}:{record.invoice_id}"
    return f"{_TABLE_OF[type(record)]}:{record.app_id}:{record.event_id}"


def _stored(record: PlanRecord) -> bool:
    """Transfers matter only when they start and name their agent (R11 active agents)."""
    return not isinstance(record, AgentTransfer) or (record.action == "started" and record.agent_id is not None)


class PlanStore:
    """A ``SessionWriter``-shaped writer of :data:`PlanRecord` rows; no I/O until :meth:`insert`."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = check_database_name(database)

    def insert(self, records: Sequence[PlanRecord], token: str) -> None:
        """Insert ``records`` split by table, each part with ``token`` (deduplication is per table).

        Transfers that end or name no agent are not stored (see ``_stored``).
        """
        if not token:
            raise ValueError("an insert token is required: an empty one turns token deduplication off")
        by_table: dict[str, list[Any]] = {}
        for record in records:
            if _stored(record):
                by_table.setdefault(_TABLE_OF[type(record)], []).append(record)
        for table, names in _COLUMNS.items():
            rows = by_table.get(table)
            if rows:
                self._insert(table, names, _columns(rows, names), len(rows), token)

    def _insert(self, table: str, names: tuple[str, ...], columns: list[list[Any]], n: int, token: str) -> None:
        insert_deduplicated(
            self._client,
            self._database,
            table,
            columns,
            names=names,
            token=token,
            column_oriented=True,
            where=f"insert of {n} rows into {self._database}.{table} (token {token!r})",
            retry="retry with the same token.",
            check="Check that migrations 005, 010 and 011 ran (metering run applies the migrations).",
        )


# -- reading -------------------------------------------------------------------------------


def seat_timelines(
    client: Client, database: str, *, apps: Sequence[str], account: str | None, end: date | None
) -> dict[str, SeatTimeline]:
    """Every app's seat changes up to ``end`` (local day, inclusive; None: all) as timelines."""
    rows = named_query(client, database, "seat_changes", apps=list(apps), account=account, to=end)
    timelines: dict[str, SeatTimeline] = {}
    for app_id, t_ms, event_id, seats in rows:
        timeline = timelines.get(app_id)
        if timeline is None:
            timeline = timelines[app_id] = SeatTimeline(app_id=str(app_id))
        timeline.add(int(t_ms), str(event_id), int(seats))
    return timelines


def active_agents(
    client: Client,
    database: str,
    *,
    start: date | None,
    end: date | None,
    apps: Sequence[str],
    account: str | None,
    period: Period,
    tz: str,
) -> dict[tuple[str, str, str], int]:
    """Distinct agents of the transfers started per ``(account_id, app_id, period)``."""
    rows = named_query(
        client,
        database,
        "active_agents_by_period",
        tz=tz,
        period=period,
        **{"from": start, "to": end},
        apps=list(apps),
        account=account,
    )
    return {(str(acc), str(app), str(day)): int(n) for acc, app, day, n in rows}


def usage_with_agents(
    client: Client,
    database: str,
    rows: Sequence[UsageRow],
    *,
    start: date | None,
    end: date | None,
    apps: Sequence[str],
    account: str | None,
    period: Period,
    tz: str,
) -> list[AgentRow]:
    """``rows`` (from ``usage``, same arguments) with R11's ``agents`` and ``active_agents`` appended."""
    if not rows:
        return []
    seats = seat_timelines(client, database, apps=apps, account=account, end=end)
    active = active_agents(client, database, start=start, end=end, apps=apps, account=account, period=period, tz=tz)
    return with_agents(rows, seats, active, zone_name=tz, period=period, start=start, end=end)


#: `metering plans`: one row per app, its balance read model and the month's usage and cost.
PLAN_COLUMNS: Final = (
    "account_id",
    "app_id",
    "plan",
    "currency",
    "status",
    "balance",
    "threshold",
    "entitled",
    "month",
    "usage_sessions",
    "alert_sessions",
    "voice_sessions",
    "billing_sessions",
    "unpriced_sessions",
    "cost",
)
_Text = str | None
PlanRow = tuple[str, str, _Text, _Text, _Text, _Text, _Text, _Text, str, int, int, int, int, int, str]


def plans_overview(client: Client, database: str, *, account: str | None, month: date, tz: str) -> list[PlanRow]:
    """Every app known by a plan, a balance or the month's usage, sorted by account and app.

    Plan, status, balance and entitlement are the balance processor's latest snapshot; an app it
    has not published yet shows its latest plan and no balance (empty, not guessed). The month is
    the local calendar month of ``month`` in ``tz``; its cost is priced per session by
    ``cost_by_app.sql``, summed per currency (two currencies in one month are both shown).
    """
    first = month.replace(day=1)
    last = period_last_day(first, "month")
    snapshots = {(str(r[0]), str(r[1])): r for r in named_query(client, database, "balance_latest", account=account)}
    plans = {(str(r[0]), str(r[1])): r for r in named_query(client, database, "plan_latest", account=account)}
    month_rows = usage(client, database, start=first, end=last, apps=[], account=account, period="month", tz=tz)
    sessions = {(r[0], r[1]): r for r in month_rows}
    costs: dict[tuple[str, str], list[tuple[str, Decimal]]] = {}
    unpriced: dict[tuple[str, str], int] = {}
    cost_rows = named_query(client, database, "cost_by_app", tz=tz, account=account, **{"from": first, "to": last})
    for acc, app, currency, cost, n in cost_rows:
        key = (str(acc), str(app))
        unpriced[key] = unpriced.get(key, 0) + int(n)
        if currency:
            costs.setdefault(key, []).append((str(currency), Decimal(cost)))
    out: list[PlanRow] = []
    for key in sorted(snapshots.keys() | plans.keys() | sessions.keys() | costs.keys() | unpriced.keys()):
        snap, plan, used = snapshots.get(key), plans.get(key), sessions.get(key)
        out.append(
            (
                *key,
                str(snap[2]) if snap and snap[2] is not None else (str(plan[2]) if plan else None),
                str(snap[3]) if snap else (str(plan[3]) if plan else None),
                str(snap[4]) if snap else None,
                str(snap[5]) if snap else None,
                str(snap[6]) if snap else (format_money(Decimal(plan[4])) if plan else None),
                ("true" if snap[7] else "false") if snap else None,
                first.strftime("%Y-%m"),
                *((int(used[4]), int(used[6]), int(used[5]), int(used[7])) if used else (0, 0, 0, 0)),
                unpriced.get(key, 0),
                _cost_text(costs.get(key, [])),
            )
        )
    return out


def _cost_text(costs: list[tuple[str, Decimal]]) -> str:
    """``12.50`` in the one currency of the month; ``12.50 USD + 3.00 EUR`` if the plan changed currency."""
    if not costs:
        return "0.00"
    if len(costs) == 1:
        return format_money(costs[0][1])
    return " + ".join(f"{format_money(amount)} {currency}" for currency, amount in costs)
