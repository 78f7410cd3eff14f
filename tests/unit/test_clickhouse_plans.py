"""Migration 005 on the real embedded ClickHouse (chDB): plans, funds, seats, transfers, balances.

No fakes: every test writes through ``PlanStore`` (the sink's writer) into a migrated database of
its own and reads back through the queries `metering usage` and `metering plans` use.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from consumers.clickhouse import Client, SessionStore
from consumers.clickhouse.plans import PlanStore, active_agents, record_key, seat_timelines, usage_with_agents
from consumers.clickhouse.usage import usage
from pipeline.contract.events import AgentsSubscribed, AgentTransfer, BalanceSnapshot, BillingSessionRecord
from tests.balance_support import funds, plan

ACCOUNT = "acme"
APP = "support-bot"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def seats(n: int, when: str, event_id: str, app_id: str = APP) -> AgentsSubscribed:
    return AgentsSubscribed(event_id=event_id, occurred_at=at(when), account_id=ACCOUNT, app_id=app_id, agents=n)


def started(agent: str | None, when: str, event_id: str, app_id: str = APP, action: str = "started") -> AgentTransfer:
    return AgentTransfer(
        event_id=event_id,
        occurred_at=at(when),
        account_id=ACCOUNT,
        app_id=app_id,
        conversation_id=f"c-{event_id}",
        action=action,  # type: ignore[arg-type]
        agent_id=agent,
    )


def snapshot(
    version: int, balance: str, status: str = "active", app_id: str = APP, plan_name: str = "starter"
) -> BalanceSnapshot:
    return BalanceSnapshot(
        account_id=ACCOUNT,
        app_id=app_id,
        plan=plan_name,
        currency="USD",
        funds="100.00",
        usage_cost="0.00",
        alert_cost="0.00",
        voice_cost="0.00",
        usage_sessions=version,
        alert_sessions=0,
        voice_sessions=0,
        unpriced_sessions=0,
        balance=balance,
        threshold="50.00",
        status=status,  # type: ignore[arg-type]
        entitled=status != "depleted",
        agents=3,
        version=version,
        updated_at=at("2026-11-01T10:00:00"),
    )


def session(sid: str, when: str, app_id: str = APP, kind: str = "usage") -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=sid,
        kind=kind,  # type: ignore[arg-type]
        account_id=ACCOUNT,
        app_id=app_id,
        conversation_session_id=None if kind == "alert" else f"cs-{sid}",
        conversation_id=None if kind == "alert" else f"c-{sid}",
        user_id="u-1",
        channel="web",
        session_index=0,
        started_at=at(when),
        ended_at=at(when),
    )


def count(client: Client, database: str, table: str, final: bool = False) -> int:
    text = f"SELECT count() FROM {{db:Identifier}}.{table}{' FINAL' if final else ''}"
    return int(client.query(text, parameters={"db": database}).result_rows[0][0])


def test_migration_005_creates_the_tables(chdb_client: Client, database: str) -> None:
    query = "SELECT name, engine FROM system.tables WHERE database = {db:String}"
    tables = {str(row[0]): str(row[1]) for row in chdb_client.query(query, parameters={"db": database}).result_rows}
    for name in ("plan_changes", "funds_added", "agent_subscriptions", "agent_transfers_started", "balance_snapshots"):
        assert tables.get(name) == "ReplacingMergeTree", name


def test_every_record_lands_in_its_table_and_a_retried_block_is_dropped(chdb_client: Client, database: str) -> None:
    store = PlanStore(chdb_client, database)
    block: list[Any] = [
        plan(event_id="p-1"),
        funds("100.00", event_id="f-1"),
        funds("25.50", event_id="f-2"),
        seats(3, "2026-11-01T09:00:00", "s-1"),
        started("ana", "2026-11-01T10:00:00", "t-1"),
        snapshot(1, "100.00"),
    ]
    store.insert(block, "billing-plans:0:0-5")
    store.insert(block, "billing-plans:0:0-5")  # the sink retrying after a failed commit
    expected = {
        "plan_changes": 1,
        "funds_added": 2,
        "agent_subscriptions": 1,
        "agent_transfers_started": 1,
        "balance_snapshots": 1,
    }
    assert {t: count(chdb_client, database, t) for t in expected} == expected
    total = chdb_client.command("SELECT sum(amount) FROM {db:Identifier}.funds_added", parameters={"db": database})
    assert str(total).rstrip("0") == "125.5"


def test_a_replay_under_new_tokens_is_absorbed_by_the_keys(chdb_client: Client, database: str) -> None:
    store = PlanStore(chdb_client, database)
    for table in ("plan_changes", "funds_added", "agent_subscriptions"):  # so the copies stay until FINAL
        chdb_client.command(
            "SYSTEM STOP MERGES {db:Identifier}.{t:Identifier}", parameters={"db": database, "t": table}
        )
    block: list[Any] = [plan(event_id="p-1"), funds("10.00", event_id="f-1"), seats(2, "2026-11-01T09:00:00", "s-1")]
    store.insert(block, "billing-plans:0:0-2")
    store.insert(block, "billing-plans:0:7-9")  # a reset consumer group re-reads under other offsets
    for table in ("plan_changes", "funds_added", "agent_subscriptions"):
        assert count(chdb_client, database, table) == 2  # not merged yet: both copies are there
        assert count(chdb_client, database, table, final=True) == 1


def test_the_latest_snapshot_wins_by_version_whatever_the_insert_order(chdb_client: Client, database: str) -> None:
    store = PlanStore(chdb_client, database)
    store.insert([snapshot(7, "12.00", "low")], "balance-state:0:5-5")
    store.insert([snapshot(3, "80.00")], "balance-state:0:1-1")  # an older version arriving later
    store.insert([snapshot(7, "12.00", "low")], "balance-state:0:9-9")  # a copy of the newest
    rows = chdb_client.query(
        "SELECT app_id, balance, status, version FROM {db:Identifier}.balance_snapshots FINAL",
        parameters={"db": database},
    ).result_rows
    assert rows == [(APP, "12.00", "low", 7)]


def test_record_keys_follow_r1_and_the_snapshot_version() -> None:
    assert record_key(funds("1.00", event_id="e-1")) == f"funds_added:{APP}:e-1"
    assert record_key(funds("1.00", event_id="e-1", app_id="other")) != record_key(funds("1.00", event_id="e-1"))
    assert record_key(snapshot(4, "1.00")) == f"balance_snapshots:{APP}:4"


def test_seats_take_the_highest_of_a_day_and_carry_forward(chdb_client: Client, database: str) -> None:
    store = PlanStore(chdb_client, database)
    store.insert(
        [
            seats(2, "2026-11-01T08:00:00", "s-1"),
            seats(9, "2026-11-03T09:00:00", "s-2"),  # raised, then cut the same day
            seats(4, "2026-11-03T15:00:00", "s-3"),
        ],
        "billing-plans:0:0-2",
    )
    store.insert([seats(2, "2026-11-01T08:00:00", "s-1")], "billing-plans:1:0-0")  # a copy
    timelines = seat_timelines(chdb_client, database, apps=[], account=None, end=None)
    per_day = timelines[APP].per_day("UTC", date(2026, 10, 31), date(2026, 11, 6))
    assert per_day == {
        "2026-10-31": 0,
        "2026-11-01": 2,
        "2026-11-02": 2,
        "2026-11-03": 9,
        "2026-11-04": 4,
        "2026-11-05": 4,
        "2026-11-06": 4,
    }


def test_active_agents_are_distinct_agents_of_transfers_started_that_day(chdb_client: Client, database: str) -> None:
    store = PlanStore(chdb_client, database)
    store.insert(
        [
            started("ana", "2026-11-01T09:00:00", "t-1"),
            started("ana", "2026-11-01T17:00:00", "t-2"),
            started("bo", "2026-11-01T23:30:00", "t-3"),  # 2026-11-02 in Asia/Kolkata
            started("cy", "2026-11-02T10:00:00", "t-4"),
        ],
        "agent-transfers:0:0-3",
    )
    store.insert([started("cy", "2026-11-02T10:00:00", "t-4")], "agent-transfers:0:0-0")  # replayed
    common: dict[str, Any] = {"start": None, "end": None, "apps": [], "account": None}
    assert active_agents(chdb_client, database, period="day", tz="UTC", **common) == {
        (ACCOUNT, APP, "2026-11-01"): 2,
        (ACCOUNT, APP, "2026-11-02"): 1,
    }
    assert active_agents(chdb_client, database, period="day", tz="Asia/Kolkata", **common) == {
        (ACCOUNT, APP, "2026-11-01"): 1,
        (ACCOUNT, APP, "2026-11-02"): 2,
    }
    assert active_agents(chdb_client, database, period="month", tz="UTC", **common) == {
        (ACCOUNT, APP, "2026-11-01"): 3,
    }


def test_usage_rows_gain_agents_and_active_agents_without_new_rows(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(
        [session("b-1", "2026-11-01T10:00:00"), session("b-2", "2026-11-04T10:00:00")], "billing-sessions:0:0-1"
    )
    PlanStore(chdb_client, database).insert(
        [
            seats(5, "2026-11-01T00:00:00", "s-1"),
            seats(7, "2026-11-01T12:00:00", "s-2"),
            started("ana", "2026-11-01T10:05:00", "t-1"),
            started("bo", "2026-11-02T10:05:00", "t-2"),  # a day without sessions: no row
        ],
        "billing-plans:0:0-3",
    )
    query: dict[str, Any] = {"start": None, "end": None, "apps": [], "account": None, "period": "day", "tz": "UTC"}
    rows = usage(chdb_client, database, **query)
    assert usage_with_agents(chdb_client, database, rows, **query) == [
        (ACCOUNT, APP, "2026-11-01", 1, 1, 0, 0, 1, 7, 1),
        (ACCOUNT, APP, "2026-11-04", 1, 1, 0, 0, 1, 7, 0),
    ]
    month = {**query, "period": "month", "start": date(2026, 11, 2)}
    month_rows = usage(chdb_client, database, **month)
    assert usage_with_agents(chdb_client, database, month_rows, **month) == [
        (ACCOUNT, APP, "2026-11-01", 1, 1, 0, 0, 1, 7, 1),  # named by the month's first day, as usage does
    ]
