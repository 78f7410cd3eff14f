"""The usage HTTP API on the session's embedded chDB: `metering compute`'s CSV, clear 400s, probes.

Also `metering usage`/`migrate` logic (``cli.usage_command``): asking a running store
found through its discovery file, or opening the embedded database directly.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import OperationalError

from cli.main import main
from cli.service import StoreEndpoints, discovery_file, find_running_store, token_file
from cli.usage_command import migrate_text, usage_text
from consumers.clickhouse import Client, SessionStore, usage
from consumers.clickhouse.migrations import load_migrations
from consumers.clickhouse.plans import PlanStore, usage_with_agents
from consumers.reports.usage import UsageParameterError, usage_columns, usage_query, usage_report
from devtools import traffic
from pipeline.contract.decode import decode_event
from pipeline.contract.events import AgentsSubscribed, AgentTransfer, Rejection
from pipeline.infra.report import render
from pipeline.infra.settings import Settings
from pipeline.stream.records import billing_session_record
from tests.console_support import OPERATOR_TOKEN, serve_console
from tests.support import T0, meter_run, migrated_database

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usage-api") / "events.jsonl"
    path.write_bytes(b"\n".join(traffic.encode(ev) for ev in traffic.events(T0, 2500, seed=11)) + b"\n")
    return path


@pytest.fixture(scope="module")
def filled(chdb_client: Client, events_file: Path) -> Iterator[str]:
    """A database of this module holding the billing sessions of ``events_file``, in two blocks."""
    with migrated_database(chdb_client) as database:
        events = [json.loads(line) for line in events_file.read_bytes().splitlines()]
        records = [billing_session_record(s) for s in meter_run(events)]
        store = SessionStore(chdb_client, database)
        half = len(records) // 2
        store.insert(records[:half], "unit:0:0-1")
        store.insert(records[half:], "unit:0:2-3")
        # Seats and started transfers, as the plan sinks store them: the agents columns of usage.
        now = T0 + 86_400_000 * 400
        plan_records = [
            decoded[1]
            for line in events_file.read_bytes().splitlines()
            if not isinstance(decoded := decode_event(line, now), Rejection)
        ]
        PlanStore(chdb_client, database).insert(
            [r for r in plan_records if isinstance(r, (AgentsSubscribed, AgentTransfer))], "unit:plans:0-1"
        )
        yield database


@pytest.fixture(scope="module")
def api(chdb_client: Client, filled: str) -> Iterator[str]:
    with serve_console(chdb_client, filled) as url:
        yield url


def get(url: str) -> tuple[int, str, str]:
    """GET with the store's operator token, as `metering usage` sends it."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def error(url: str) -> dict[str, Any]:
    status, content_type, body = get(url)
    assert status == 400, body
    assert content_type == "application/json"
    payload: dict[str, Any] = json.loads(body)
    return payload


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_csv_by_day_is_byte_identical_to_metering_compute(api: str, events_file: Path, tz: str) -> None:
    computed = CliRunner().invoke(main, ["compute", "--events", str(events_file), "--timezone", tz])
    assert computed.exit_code == 0
    status, content_type, body = get(f"{api}/usage?by=day&format=csv&timezone={tz}")
    assert status == 200
    assert content_type == "text/csv; charset=utf-8"
    assert body == computed.stdout
    assert len(body.splitlines()) > 5


@pytest.mark.parametrize(("by", "fmt"), [("week", "csv"), ("month", "json"), ("day", "table")])
def test_every_period_and_format_renders_the_rows_usage_returns(
    api: str, chdb_client: Client, filled: str, by: str, fmt: str
) -> None:
    selection: dict[str, Any] = {
        "start": None,
        "end": None,
        "apps": [],
        "account": None,
        "period": by,
        "tz": "Europe/Paris",
    }
    rows = usage_with_agents(chdb_client, filled, usage(chdb_client, filled, **selection), **selection)
    assert any(row[-1] for row in rows), "some active agents"
    expected = render(usage_columns(by), rows, fmt, title=f"Usage by {by} (Europe/Paris)")  # type: ignore[arg-type]
    status, _, body = get(f"{api}/usage?by={by}&format={fmt}&timezone=Europe/Paris")
    assert status == 200
    assert body == expected
    if by == "week":
        assert body.splitlines()[0].split(",")[2] == "week"


def test_filters_by_app_account_and_days(api: str, chdb_client: Client, filled: str) -> None:
    all_rows = usage(chdb_client, filled, start=None, end=None, apps=[], account=None, period="day", tz="UTC")
    (account, app_a, day, *_), (_, app_b, *_) = all_rows[0], next(r for r in all_rows if r[1] != all_rows[0][1])
    status, _, body = get(f"{api}/usage?app={app_a}&app={app_b}&account={account}&from={day}&to={day}&format=json")
    assert status == 200
    got = json.loads(body)
    assert got
    assert {(r["account_id"], r["day"]) for r in got} == {(account, day)}
    assert {r["app_id"] for r in got} <= {app_a, app_b}


@pytest.mark.parametrize(
    ("query", "parameter", "fix_mentions"),
    [
        ("from=2026-13-01", "from", "YYYY-MM-DD"),
        ("to=yesterday", "to", "YYYY-MM-DD"),
        ("from=2026-11-05&to=2026-11-01", "from", "swap"),
        ("timezone=Mars/Olympus", "timezone", "IANA"),
        ("by=year", "by", "day, week, month"),
        ("format=xml", "format", "csv, json, table"),
        ("by=day&by=week", "by", "once"),
        ("form=2026-11-01", "form", "from, to, app"),
        ("app=", "app", "app id"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter_and_the_fix(
    api: str, query: str, parameter: str, fix_mentions: str
) -> None:
    payload = error(f"{api}/usage?{query}")
    assert payload["parameter"] == parameter
    assert fix_mentions in payload["fix"]
    assert payload["error"].startswith(f"{parameter}: ")


def test_health_and_readiness(api: str) -> None:
    assert get(f"{api}/healthz")[0] == 200
    status, _, body = get(f"{api}/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})


class UnreachableClient:
    """A FAKE client whose every call fails as an unreachable ClickHouse server does."""

    def command(self, *args: object, **kwargs: object) -> None:
        raise OperationalError("Error HTTPConnectionPool(host='ch', port=8123): connection refused")

    def query(self, *args: object, **kwargs: object) -> None:
        raise OperationalError("Error HTTPConnectionPool(host='ch', port=8123): connection refused")


def test_readiness_fails_with_the_reason_while_clickhouse_does_not_answer() -> None:
    with serve_console(UnreachableClient(), "metering", open_handle=False) as url:  # type: ignore[arg-type]
        assert get(f"{url}/healthz")[0] == 200
        status, _, body = get(f"{url}/readyz")
        assert status == 503
        assert "connection refused" in json.loads(body)["reason"]
        status, _, body = get(f"{url}/usage")
        assert status == 503
        assert "unavailable" in json.loads(body)["error"] or "failed" in json.loads(body)["error"]


def test_a_database_without_tables_is_a_503_saying_to_migrate(chdb_client: Client) -> None:
    with serve_console(chdb_client, "t_never_migrated") as url:
        status, _, body = get(f"{url}/usage")
        assert status == 503
        assert "run the migrations" in json.loads(body)["error"]


def test_unknown_paths_and_methods(api: str) -> None:
    assert get(f"{api}/nope")[0] == 404
    request = urllib.request.Request(f"{api}/usage", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        OPENER.open(request, timeout=10)
    assert info.value.code == 405


def test_stop_releases_the_port(chdb_client: Client, database: str) -> None:
    with serve_console(chdb_client, database) as url:
        assert get(f"{url}/healthz")[0] == 200
    with pytest.raises(urllib.error.URLError):
        OPENER.open(f"{url}/healthz", timeout=2)


def test_the_operators_routes_refuse_a_missing_or_wrong_token(api: str) -> None:
    for headers in ({}, {"Authorization": "Bearer guess"}):
        request = urllib.request.Request(f"{api}/usage?by=day", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            OPENER.open(request, timeout=10)
        assert info.value.code == 401


# -- metering usage / migrate ----------------------------------------------------------------------


def settings_for(tmp_path: Path, chdb_path: Path, database: str) -> Settings:
    return Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{chdb_path}", clickhouse_database=database)


def announce(settings: Settings, api: str) -> None:
    """Write the discovery file a running store would write (this process plays the store)."""
    endpoints = StoreEndpoints(
        os.getpid(), api, "http://127.0.0.1:1/metrics", settings.clickhouse_url, settings.clickhouse_database
    )
    discovery_file(settings).parent.mkdir(parents=True, exist_ok=True)
    discovery_file(settings).write_text(json.dumps(asdict(endpoints)))
    token_file(settings).write_text(OPERATOR_TOKEN + "\n")


def test_usage_text_asks_the_running_store_and_matches_a_direct_query(
    api: str, chdb_client: Client, filled: str, tmp_path: Path, chdb_path: Path
) -> None:
    settings = settings_for(tmp_path, chdb_path, filled)
    options: dict[str, Any] = {
        "start": None,
        "end": None,
        "apps": [],
        "account": None,
        "by": "day",
        "tz": "Asia/Kolkata",
        "fmt": "csv",
    }
    direct = usage_text(settings, **options)  # no discovery file: the database is opened here
    assert direct == usage_report(chdb_client, filled, usage_query(**{**options, "apps": ()}))
    announce(settings, api)
    assert find_running_store(settings) == api
    assert usage_text(settings, **options) == direct
    with pytest.raises(UsageParameterError, match="timezone") as info:
        usage_text(settings, **{**options, "tz": "Nowhere/Land"})
    assert info.value.parameter == "timezone"


def test_a_stale_discovery_file_is_ignored(tmp_path: Path, chdb_path: Path, filled: str) -> None:
    settings = settings_for(tmp_path, chdb_path, filled)
    announce(settings, "http://127.0.0.1:9")  # nothing listens there
    assert find_running_store(settings) is None
    out = usage_text(
        settings, start=date(2026, 11, 1), end=None, apps=[], account=None, by="month", tz="UTC", fmt="csv"
    )
    assert out.splitlines()[0].split(",")[2] == "month"


def test_migrate_text_defers_to_a_running_store_or_lists_the_migrations(
    api: str, tmp_path: Path, chdb_path: Path, chdb_client: Client
) -> None:
    fresh = f"t_migrate_{os.getpid()}"
    settings = settings_for(tmp_path, chdb_path, fresh)
    try:
        shipped = len(load_migrations())
        first = migrate_text(settings)
        assert f"{shipped} migration(s) applied now, {shipped} in total" in first
        assert re.search(r"001_billing_sessions\.sql +applied now", first)
        assert f"0 migration(s) applied now, {shipped} in total" in migrate_text(settings)
        announce(settings, api)
        assert "applies migrations when it starts" in migrate_text(settings)
    finally:
        chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": fresh})
