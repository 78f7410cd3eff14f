"""``/api/v1/sessions.csv``: the rules engine's billing sessions of the range, one row each, streamed.

The oracle is `metering compute --sessions` over the same events: same rows (ids, columns and
values), whatever the replays; voided sessions are left out; the range and app filters hold.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from consumers.clickhouse import Client, migrate
from consumers.clickhouse.reconcile import ReconcileRun, RepairBatch, SessionVoid, apply_batch
from pipeline import traffic
from pipeline.cli import main
from pipeline.decode import to_ms
from pipeline.sessions_export import SESSION_COLUMNS
from tests.console_support import bearer, console_settings, fill, http, make_app, token

SHAPE = traffic.TrafficShape(accounts=2, apps_per_account=3, conversations_per_minute=0.05)
T0 = to_ms(datetime(2026, 5, 1, 10, tzinfo=UTC))
ACCOUNT = "acct-00"


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sessions-export") / "events.jsonl"
    path.write_bytes(b"\n".join(traffic.encode(e) for e in traffic.events(T0, 4000, seed=9, shape=SHAPE)) + b"\n")
    return path


@pytest.fixture(scope="module")
def export_db(chdb_client: Client, events_file: Path) -> Iterator[str]:
    import json  # noqa: PLC0415

    database = f"t_{uuid.uuid4().hex}"
    migrate(chdb_client, database)
    fill(chdb_client, database, [json.loads(line) for line in events_file.read_bytes().splitlines()], replay=True)
    yield database
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": database})


@pytest.fixture(scope="module")
def client(chdb_client: Client, export_db: str) -> Iterator[TestClient]:
    with http(make_app(chdb_client, export_db)) as c:
        yield c


def compute_sessions(path: Path, first: str, last: str, tz: str) -> list[dict[str, str]]:
    args = ["compute", "--events", str(path), "--sessions", "--from", first, "--to", last, "--timezone", tz]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def app_of(path: Path) -> dict[str, str]:
    """Which app each computed session belongs to, and which account each app."""
    import json  # noqa: PLC0415

    return {e["app_id"]: e["account_id"] for e in (json.loads(x) for x in path.read_bytes().splitlines())}


def export(client: TestClient, **params: str) -> tuple[int, list[dict[str, str]], Any]:
    answer = client.get("/api/v1/sessions.csv", params=params, headers=bearer(token(ACCOUNT)))
    if answer.status_code != 200:
        return answer.status_code, [], answer
    assert answer.text.splitlines()[0] == ",".join(SESSION_COLUMNS)
    return 200, list(csv.DictReader(io.StringIO(answer.text))), answer


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_rows_equal_compute_sessions_for_the_range(client: TestClient, events_file: Path, tz: str) -> None:
    first, last = "2026-05-01", "2026-05-02"
    status, rows, answer = export(client, **{"from": first, "to": last, "timezone": tz})
    assert status == 200
    assert answer.headers["content-disposition"].startswith("attachment")
    accounts = app_of(events_file)
    expected = [r for r in compute_sessions(events_file, first, last, tz) if accounts[r["app_id"]] == ACCOUNT]
    assert len(rows) == len(expected) > 50
    assert {r["billing_session_id"] for r in rows} == {r["billing_session_id"] for r in expected}
    by_id = {r["billing_session_id"]: r for r in expected}
    for row in rows:
        assert row == by_id[row["billing_session_id"]], "every column as the rules engine has it"
    assert {r["billing_session_type"] for r in rows} == {"usage", "voice", "alert"}


def test_one_app_and_voided_sessions(
    client: TestClient, chdb_client: Client, export_db: str, events_file: Path
) -> None:
    first, last = "2026-05-02", "2026-05-02"
    _, all_rows, _ = export(client, **{"from": first, "to": last})
    app = all_rows[0]["app_id"]
    _, rows, _ = export(client, **{"from": first, "to": last, "app": app})
    assert rows == [r for r in all_rows if r["app_id"] == app]
    victim = rows[0]
    started = datetime.fromisoformat(victim["billing_session_started_at"].replace("Z", "+00:00"))
    run = ReconcileRun(
        run_id="void-test", period_from=date(2026, 5, 2), period_to=date(2026, 5, 2), timezone="UTC",
        source="test", status="done", started_ms=T0,
    )  # fmt: skip
    void = SessionVoid(
        billing_session_id=victim["billing_session_id"],
        account_id=ACCOUNT,
        app_id=app,
        kind=victim["billing_session_type"],  # type: ignore[arg-type]
        started_ms=to_ms(started),
        conversation_session_id=victim["conversation_session_id"] or None,
        session_index=0,
        reason="test",
    )
    apply_batch(chdb_client, export_db, RepairBatch(run=run, token="void-test", voids=[void]))
    _, after, _ = export(client, **{"from": first, "to": last, "app": app})
    assert [r["billing_session_id"] for r in after] == [r["billing_session_id"] for r in rows[1:]]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "2026-05-03", "to": "2026-05-01"}, "from"),
        ({"from": "2026-01-01", "to": "2026-04-30"}, "to"),
        ({"from": "May", "to": "2026-05-01"}, "from"),
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"app": ""}, "app"),
        ({"form": "2026-05-01"}, "form"),
    ],
)
def test_bad_parameters(client: TestClient, params: dict[str, str], parameter: str) -> None:
    status, _, answer = export(client, **params)
    assert status == 400
    assert answer.json()["parameter"] == parameter


def test_the_limit_can_be_raised_and_another_accounts_app_is_404(chdb_client: Client, export_db: str) -> None:
    with http(make_app(chdb_client, export_db, console_settings(export_max_days=200))) as c:
        status, rows, _ = export(c, **{"from": "2026-01-01", "to": "2026-05-01"})
        assert status == 200
        assert rows
        status, _, _ = export(c, **{"app": "app-01-0"})
        assert status == 404
