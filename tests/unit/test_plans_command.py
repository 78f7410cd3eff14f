"""`metering plans` end to end on the embedded ClickHouse: the CLI's three formats, the store API.

Real chDB, real CLI (click's runner in this process), a real HTTP API; the data is written with
the sinks' writers. The figures are worked out by hand from R12 in the comments.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from cli.service import StoreEndpoints, discovery_file, token_file
from cli.usage_command import plans_text
from consumers.clickhouse import Client, SessionStore
from consumers.clickhouse.counts import key_of, recount
from consumers.clickhouse.plans import PLAN_COLUMNS, PlanStore
from consumers.reports.plans import plans_query, plans_report
from consumers.reports.usage import UsageParameterError
from pipeline.contract.decode import to_ms
from pipeline.infra.settings import Settings
from tests.balance_support import funds, plan
from tests.console_support import OPERATOR_TOKEN, serve_console
from tests.support import migrated_database
from tests.unit.test_clickhouse_plans import ACCOUNT, at, session, snapshot

HEADER = ",".join(PLAN_COLUMNS)


@pytest.fixture(scope="module")
def database(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as name:
        sessions = SessionStore(chdb_client, name)
        month = [
            session("s-1", "2026-11-05T10:00:00"),  # plan p-1: 1.00
            session("s-2", "2026-11-10T00:00:00"),  # p-2 is in force from this very instant: 1.50
            session("s-3", "2026-11-12T10:00:00", kind="alert"),  # 0.10
            session("s-4", "2026-11-13T10:00:00", kind="voice"),  # 2.00
            session("s-5", "2026-10-31T23:30:00"),  # October in UTC, 1 November in Asia/Kolkata: 1.00
            session("s-6", "2026-11-02T10:00:00", app_id="sales-bot"),  # no plan ever: unpriced
            session("s-7", "2026-11-16T10:00:00"),  # of the two plans stamped 11-15 00:00, p-3b: 3.00
            session("s-8", "2026-11-20T10:00:00"),  # voided below by a reconcile repair: not billed
        ]
        sessions.insert(month, "billing-sessions:0:0-7")
        chdb_client.insert(
            "session_voids",
            [["s-8", ACCOUNT, "support-bot", "usage", ms("2026-11-20T10:00:00"), "cs-s-8", 0, "run-1", "extra"]],
            column_names=["billing_session_id", "account_id", "app_id", "kind", "started_at",
                          "conversation_session_id", "session_index", "reconcile_run_id", "reason"],
            database=name,
        )  # fmt: skip
        recount(chdb_client, name, [key_of(ACCOUNT, "support-bot", ms("2026-11-20T10:00:00"))])  # as a repair does
        sessions.insert(month[:2], "billing-sessions:1:0-1")  # replayed under another token: counts once
        plans = PlanStore(chdb_client, name)
        plans.insert(
            [
                plan(ms("2026-10-20T00:00:00"), event_id="p-1", name="starter"),
                plan(ms("2026-11-10T00:00:00"), event_id="p-2", name="growth", usage="1.50"),
                plan(ms("2026-11-15T00:00:00"), event_id="p-3b", name="growth", usage="3.00"),
                plan(ms("2026-11-15T00:00:00"), event_id="p-3a", name="growth", usage="9.00"),  # same ms, lower id
                plan(event_id="p-9", name="basic", app_id="idle-bot", threshold="20.00"),
                funds("100.00", event_id="f-1"),
            ],
            "billing-plans:0:0-3",
        )
        plans.insert([snapshot(5, "95.40", plan_name="growth")], "balance-state:0:4-4")
        plans.insert([snapshot(3, "99.00", plan_name="starter")], "balance-state:0:2-2")  # older, arrives later
        yield name


def ms(text: str) -> int:
    return to_ms(at(text))


def run_cli(tmp_path: Path, chdb_path: Path, database: str, *args: str) -> str:
    env = {
        "METERING_DATA_DIR": str(tmp_path),
        "METERING_CLICKHOUSE_URL": f"chdb://{chdb_path}",
        "METERING_CLICKHOUSE_DATABASE": database,
    }
    result = CliRunner().invoke(main, ["plans", "--month", "2026-11", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_csv_lists_every_app_with_plan_balance_and_the_months_usage_and_cost(
    tmp_path: Path, chdb_path: Path, database: str
) -> None:
    out = run_cli(tmp_path, chdb_path, database, "--format", "csv")
    assert out.splitlines() == [
        HEADER,
        f"{ACCOUNT},idle-bot,basic,USD,,,20.00,,2026-11,0,0,0,0,0,0.00",  # a plan, no snapshot yet, no usage
        f"{ACCOUNT},sales-bot,,,,,,,2026-11,1,0,0,1,1,0.00",  # usage without a plan: unpriced, not free
        f"{ACCOUNT},support-bot,growth,USD,active,95.40,50.00,true,2026-11,3,1,1,4,0,7.60",  # 1+1.5+0.1+2+3
    ]


def test_the_month_is_a_local_month(tmp_path: Path, chdb_path: Path, database: str) -> None:
    out = run_cli(tmp_path, chdb_path, database, "--format", "csv", "--timezone", "Asia/Kolkata")
    rows = {r["app_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert (rows["support-bot"]["usage_sessions"], rows["support-bot"]["cost"]) == ("4", "8.60")


def test_json_and_table_carry_the_same_rows(tmp_path: Path, chdb_path: Path, database: str) -> None:
    as_json = json.loads(run_cli(tmp_path, chdb_path, database, "--format", "json", "--account", ACCOUNT))
    assert [r["app_id"] for r in as_json] == ["idle-bot", "sales-bot", "support-bot"]
    assert as_json[2] == {
        "account_id": ACCOUNT,
        "app_id": "support-bot",
        "plan": "growth",
        "currency": "USD",
        "status": "active",
        "balance": "95.40",
        "threshold": "50.00",
        "entitled": "true",
        "month": "2026-11",
        "usage_sessions": 3,
        "alert_sessions": 1,
        "voice_sessions": 1,
        "billing_sessions": 4,
        "unpriced_sessions": 0,
        "cost": "7.60",
    }
    assert as_json[1]["balance"] is None
    table = run_cli(tmp_path, chdb_path, database)
    assert "support-bot" in table
    assert "95.40" in table
    assert "7.60" in table
    assert run_cli(tmp_path, chdb_path, database, "--format", "json", "--account", "nobody").strip() == "[]"


def test_the_running_store_answers_the_same_text(
    tmp_path: Path, chdb_path: Path, chdb_client: Client, database: str
) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{chdb_path}", clickhouse_database=database)
    direct = plans_text(settings, account=None, month="2026-11", tz="UTC", fmt="csv")
    assert direct == plans_report(chdb_client, database, plans_query(month="2026-11", fmt="csv"))
    with serve_console(chdb_client, database) as url:
        endpoints = StoreEndpoints(os.getpid(), url, "http://127.0.0.1:1/metrics", "", database)
        discovery_file(settings).parent.mkdir(parents=True, exist_ok=True)
        discovery_file(settings).write_text(json.dumps(asdict(endpoints)))
        token_file(settings).write_text(OPERATOR_TOKEN + "\n")
        assert plans_text(settings, account=None, month="2026-11", tz="UTC", fmt="csv") == direct
        with pytest.raises(UsageParameterError, match="month") as info:
            plans_text(settings, account=None, month="2026-13", tz="UTC", fmt="csv")
        assert info.value.parameter == "month"


def test_bad_options_name_the_option(tmp_path: Path, chdb_path: Path, database: str) -> None:
    env = {"METERING_DATA_DIR": str(tmp_path), "METERING_CLICKHOUSE_URL": f"chdb://{chdb_path}"}
    result = CliRunner().invoke(main, ["plans", "--month", "November"], env=env)
    assert result.exit_code == 2
    assert "--month" in result.output
    assert "YYYY-MM" in result.output
