"""Migrations on a real embedded chDB: applied once, tracked, and an edited applied file refused.

chDB opens one directory per process, so every ClickHouse test module connects to the same
session-wide path (``<basetemp>/chdb``) and each test gets its own uuid-named database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from consumers.clickhouse import Client, MigrationError, migrate
from consumers.clickhouse.migrations import Migration, load_migrations, split_statements

SHIPPED = [m.version for m in load_migrations()]
NEXT = SHIPPED[-1] + 1


@pytest.fixture
def fresh_database(chdb_client: Client) -> Iterator[str]:
    """A uuid-named database that does not exist yet (migrate creates it)."""
    name = f"t_{uuid.uuid4().hex}"
    yield name
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": name})


def tracked(client: Client, database: str) -> list[tuple[int, str, str]]:
    rows = client.query(
        "SELECT version, name, checksum FROM {db:Identifier}.schema_migrations ORDER BY version",
        parameters={"db": database},
    ).result_rows
    return [(int(v), str(n), str(c)) for v, n, c in rows]


def engines(client: Client, database: str) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}", parameters={"db": database}
    ).result_rows
    return {str(name): str(engine) for name, engine in rows}


def test_shipped_migrations_are_numbered_and_parse() -> None:
    migrations = load_migrations()
    assert [m.file for m in migrations] == [
        "001_billing_sessions.sql",
        "002_usage_15m.sql",
        "003_usage_15m_mv.sql",
        "004_reconciliation.sql",
        "005_plans_balances.sql",
        "006_usage_1h.sql",
        "010_console_plans.sql",
        "011_orders_invoices.sql",
        "020_idempotency_keys_kept.sql",
    ]
    assert [len(m.statements) for m in migrations] == [1, 1, 1, 5, 5, 7, 6, 3, 1]
    assert all(len(m.checksum) == 64 for m in migrations)


def test_migrate_creates_the_database_and_tables_and_tracks_them(chdb_client: Client, fresh_database: str) -> None:
    applied = migrate(chdb_client, fresh_database)
    assert [m.version for m in applied] == [1, 2, 3, 4, 5, 6, 10, 11, 20]
    assert engines(chdb_client, fresh_database) == {
        "billing_sessions": "ReplacingMergeTree",
        "usage_15m": "AggregatingMergeTree",
        "usage_15m_mv": "MaterializedView",
        "session_voids": "MergeTree",
        "voids_15m": "AggregatingMergeTree",
        "voids_15m_mv": "MaterializedView",
        "reconcile_runs": "ReplacingMergeTree",
        "plan_changes": "ReplacingMergeTree",
        "funds_added": "ReplacingMergeTree",
        "agent_subscriptions": "ReplacingMergeTree",
        "agent_transfers_started": "ReplacingMergeTree",
        "balance_snapshots": "ReplacingMergeTree",
        "usage_1h": "AggregatingMergeTree",
        "usage_1h_mv": "MaterializedView",
        "voids_1h": "AggregatingMergeTree",
        "voids_1h_mv": "MaterializedView",
        "usage_day_counts": "ReplacingMergeTree",
        "funds_refunded": "ReplacingMergeTree",
        "extension_events": "ReplacingMergeTree",
        "owner_changes": "ReplacingMergeTree",
        "billing_accounts": "ReplacingMergeTree",
        "orders": "ReplacingMergeTree",
        "invoices": "ReplacingMergeTree",
        "idempotency_keys": "MergeTree",
        "schema_migrations": "MergeTree",
    }
    assert tracked(chdb_client, fresh_database) == [(m.version, m.name, m.checksum) for m in load_migrations()]


def test_migrate_again_applies_nothing(chdb_client: Client, fresh_database: str) -> None:
    migrate(chdb_client, fresh_database)
    before = tracked(chdb_client, fresh_database)
    assert migrate(chdb_client, fresh_database) == []
    assert migrate(chdb_client, fresh_database) == []
    assert tracked(chdb_client, fresh_database) == before


def test_a_new_migration_is_applied_alone(chdb_client: Client, fresh_database: str) -> None:
    migrate(chdb_client, fresh_database)
    extra = Migration(
        version=NEXT,
        name="notes",
        text="-- a test table; two statements\n"
        "CREATE TABLE IF NOT EXISTS {database:Identifier}.notes (id UInt8, s String DEFAULT ';') "
        "ENGINE = MergeTree ORDER BY id;\n"
        "INSERT INTO {database:Identifier}.notes (id) VALUES (1);\n",
    )
    applied = migrate(chdb_client, fresh_database, [*load_migrations(), extra])
    assert [m.version for m in applied] == [NEXT]
    rows = chdb_client.query("SELECT id, s FROM {db:Identifier}.notes", parameters={"db": fresh_database})
    assert rows.result_rows == [(1, ";")]
    assert [v for v, _, _ in tracked(chdb_client, fresh_database)] == [*SHIPPED, NEXT]


def test_an_edited_applied_migration_is_an_error_naming_file_and_fix(chdb_client: Client, fresh_database: str) -> None:
    migrate(chdb_client, fresh_database)
    edited = [
        Migration(version=m.version, name=m.name, text=m.text + "\n-- edited\n") if m.version == 2 else m
        for m in load_migrations()
    ]
    with pytest.raises(MigrationError, match=rf"002_usage_15m\.sql changed after it was applied.*new {NEXT:03d}_"):
        migrate(chdb_client, fresh_database, edited)


def test_an_unknown_applied_migration_is_an_error(chdb_client: Client, fresh_database: str) -> None:
    migrate(chdb_client, fresh_database)
    with pytest.raises(MigrationError, match=r"003_usage_15m_mv applied, which this code does not ship"):
        migrate(chdb_client, fresh_database, load_migrations()[:2])


def test_a_failing_statement_names_the_migration_and_is_not_recorded(chdb_client: Client, fresh_database: str) -> None:
    broken = Migration(
        version=NEXT, name="broken", text="CREATE TABLE {database:Identifier}.x (a NoSuchType) ENGINE = Log"
    )
    with pytest.raises(MigrationError, match=rf"{NEXT:03d}_broken\.sql, statement 1 failed \(ClickHouse code \d+\)"):
        migrate(chdb_client, fresh_database, [*load_migrations(), broken])
    assert [v for v, _, _ in tracked(chdb_client, fresh_database)] == SHIPPED


def test_a_bad_database_name_is_refused(chdb_client: Client) -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        migrate(chdb_client, "metering`; DROP DATABASE x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;\n\nSELECT 2;\n", ["SELECT 1", "SELECT 2"]),
        ("-- only; a comment\n", []),
        ("SELECT ';' -- a ; in a comment\n; SELECT 2", ["SELECT ';' -- a ; in a comment", "SELECT 2"]),
        ("SELECT 'it''s; ok', \"a;b\", `c;d` /* x; y */", ["SELECT 'it''s; ok', \"a;b\", `c;d` /* x; y */"]),
        ("SELECT 'back\\'slash;'; SELECT 3", ["SELECT 'back\\'slash;'", "SELECT 3"]),
    ],
)
def test_split_statements(text: str, expected: list[str]) -> None:
    assert split_statements(text) == expected
