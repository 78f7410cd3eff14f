"""``/api/v1/usage`` equals `metering compute --by X` on the same events, hour/day/week/month, two zones.

The events (two months of realistic traffic, seat changes) are metered and stored through the
sink's own ``SessionStore``/``PlanStore`` into chDB; the oracle is `metering compute` over the same
file. All apps of an account are the sums of compute's per-app rows, except active agents, which
are distinct across apps: those are counted from the events here, independently.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import main
from consumers.clickhouse import Client
from devtools import traffic
from pipeline.contract.decode import to_ms
from pipeline.contract.events import format_ms
from pipeline.rules.attribution import period_label
from tests.console_support import bearer, console_settings, fill, http, make_app, token
from tests.support import migrated_database

SHAPE = traffic.TrafficShape(accounts=2, apps_per_account=3, conversations_per_minute=0.006)
ACCOUNT = "acct-00"
SESSION_METRICS = ("billing_sessions", "usage_sessions", "voice_sessions", "alert_sessions")
#: Two months of traffic from here, all of it in the past (compute refuses events from the future).
T0 = to_ms(datetime(2026, 5, 1, 10, tzinfo=UTC))
FIRST, LAST = date(2026, 5, 1), date(2026, 7, 5)


def seat_events() -> list[dict[str, Any]]:
    """Seat changes: carried forward, cut mid-period, in two accounts."""
    changes = [
        ("app-00-0", 0, 3),
        ("app-00-0", 9 * 24 * 60 + 13 * 60, 5),
        ("app-00-0", 20 * 24 * 60 + 2 * 60, 1),
        ("app-00-1", 2 * 24 * 60 + 30, 2),
        ("app-01-0", 0, 7),
    ]
    return [
        {
            "type": "agents_subscribed",
            "event_id": f"seats-{i}",
            "occurred_at": format_ms(T0 + minutes * 60_000),
            "account_id": app[:6].replace("app", "acct"),
            "app_id": app,
            "agents": n,
        }
        for i, (app, minutes, n) in enumerate(changes)
    ]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    evs = [*traffic.events(T0, 6000, seed=5, shape=SHAPE), *seat_events()]
    path = tmp_path_factory.mktemp("console-usage") / "events.jsonl"
    path.write_bytes(b"\n".join(traffic.encode(e) for e in evs) + b"\n")
    return path, evs


@pytest.fixture(scope="module")
def usage_db(chdb_client: Client, events: tuple[Path, list[dict[str, Any]]]) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        _, evs = events
        fill(chdb_client, database, evs, "usage", replay=True)
        yield database


@pytest.fixture(scope="module")
def client(chdb_client: Client, usage_db: str) -> Iterator[TestClient]:
    with http(make_app(chdb_client, usage_db)) as c:
        yield c


def compute_rows(path: Path, by: str, tz: str, first: date, last: date) -> list[dict[str, Any]]:
    args = ["compute", "--events", str(path), "--by", by, "--timezone", tz, "--format", "json"]
    args += ["--from", first.isoformat(), "--to", last.isoformat(), "--zero-fill"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return [r for r in rows if r["account_id"] == ACCOUNT]


def active_from_events(
    evs: list[dict[str, Any]], tz: str, by: str, apps: set[str] | None, *, first: date = FIRST, last: date = LAST
) -> dict[str, set[str]]:
    """Distinct agents of started transfers per period label, across ``apps`` (None: the account's), local days
    ``first``..``last`` only (a period cut by the range holds the days inside)."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in evs:
        if e["type"] != "agent_transfer" or e.get("action") != "started" or not e.get("agent_id"):
            continue
        if e["account_id"] != ACCOUNT or (apps is not None and e["app_id"] not in apps):
            continue
        ms = int(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")).timestamp() * 1000)
        if first <= date.fromisoformat(period_label(ms, ZoneInfo(tz), "day")) <= last:
            out[period_label(ms, ZoneInfo(tz), by)].add(e["agent_id"])  # type: ignore[arg-type]
    return out


def expected_series(
    rows: list[dict[str, Any]], evs: list[dict[str, Any]], by: str, tz: str, *, app: str | None, first: date, last: date
) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*SESSION_METRICS, "agents"), 0))
    for row in rows:
        if app is not None and row["app_id"] != app:
            continue
        for metric in (*SESSION_METRICS, "agents"):
            per[row.get("period", row.get("day"))][metric] += int(row[metric])
    active = active_from_events(evs, tz, by, {app} if app else None, first=first, last=last)
    for label, figures in per.items():
        figures["active_agents"] = len(active.get(label, set()))
    return per


def busiest_app(path: Path) -> str:
    rows = compute_rows(path, "month", "UTC", FIRST, LAST)
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row["app_id"]] += int(row["billing_sessions"])
    return max(totals, key=lambda a: totals[a])


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("by", ["day", "week", "month"])
@pytest.mark.parametrize("one_app", [False, True], ids=["all-apps", "one-app"])
def test_usage_equals_compute_by_period(
    client: TestClient, events: tuple[Path, list[dict[str, Any]]], by: str, tz: str, one_app: bool
) -> None:
    path, evs = events
    first, last = date(2026, 5, 3), date(2026, 6, 20)
    app = busiest_app(path) if one_app else None
    params = {"from": first.isoformat(), "to": last.isoformat(), "by": by, "timezone": tz}
    params.update({"app": app} if app else {})
    answer = client.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = expected_series(compute_rows(path, by, tz, first, last), evs, by, tz, app=app, first=first, last=last)
    assert [p["period"] for p in body["series"]] == sorted(expected), "one point per period, in time order"
    for point in body["series"]:
        assert {k: v for k, v in point.items() if k != "period"} == expected[point["period"]], point["period"]
    assert sum(p["billing_sessions"] for p in body["series"]) > 50, "the range holds real traffic"
    assert any(p["agents"] for p in body["series"])
    assert any(p["active_agents"] for p in body["series"])
    totals = body["totals"]
    for metric in SESSION_METRICS:
        assert totals[metric] == sum(p[metric] for p in body["series"])
    assert totals["agents"] == max(p["agents"] for p in body["series"])
    by_day = active_from_events(evs, tz, "day", {app} if app else None, first=first, last=last)
    over_range = set().union(*by_day.values())
    assert totals["active_agents"] == len(over_range)
    assert body["range"] == {"from": first.isoformat(), "to": last.isoformat(), "by": by, "timezone": tz}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("one_app", [False, True], ids=["all-apps", "one-app"])
def test_usage_by_hour_equals_compute(
    chdb_client: Client, usage_db: str, events: tuple[Path, list[dict[str, Any]]], tz: str, one_app: bool
) -> None:
    path, evs = events
    now = datetime(2026, 5, 12, 15, 40, tzinfo=UTC)
    app = busiest_app(path) if one_app else None
    with http(make_app(chdb_client, usage_db, console_settings(now=now))) as c:
        params = {"range": "24h", "timezone": tz, **({"app": app} if app else {})}
        answer = c.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    labels = [p["period"] for p in body["series"]]
    assert len(labels) == 24
    local_now = now.astimezone(ZoneInfo(tz))
    assert labels[-1] == local_now.replace(minute=0, second=0, microsecond=0).isoformat()
    day = local_now.date()
    rows = compute_rows(path, "hour", tz, day - timedelta(days=1), day)
    expected = expected_series(rows, evs, "hour", tz, app=app, first=day - timedelta(days=1), last=day)
    for point in body["series"]:
        assert {k: v for k, v in point.items() if k != "period"} == expected[point["period"]], point["period"]
    assert sum(p["billing_sessions"] for p in body["series"]) > 0
    assert body["range"]["from"] == labels[0]
    assert body["range"]["to"] == labels[-1]


def test_csv_has_the_same_rows_as_an_attachment(client: TestClient) -> None:
    params = {"from": "2026-05-01", "to": "2026-05-31", "by": "week", "timezone": "Asia/Kolkata"}
    as_json = client.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT))).json()
    answer = client.get("/api/v1/usage.csv", params=params, headers=bearer(token(ACCOUNT)))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    rows = list(csv.reader(io.StringIO(answer.text)))
    header = "period,billing_sessions,usage_sessions,voice_sessions,alert_sessions,agents,active_agents"
    assert rows[0] == header.split(",")
    assert rows[1:] == [[str(p[c]) for c in rows[0]] for p in as_json["series"]]
    assert rows[1][0] == "2026-04-27", "a week cut by the range is labelled by its Monday"


@pytest.mark.parametrize(
    ("now", "range_name", "tz", "first", "last", "by", "points"),
    [
        ("2026-05-20T03:00:00Z", "7d", "UTC", "2026-05-14", "2026-05-20", "day", 7),
        ("2026-05-20T20:00:00Z", "7d", "Asia/Kolkata", "2026-05-15", "2026-05-21", "day", 7),
        ("2026-05-20T03:00:00Z", "30d", "UTC", "2026-04-21", "2026-05-20", "day", 30),
        ("2026-06-20T03:00:00Z", "3m", "UTC", "2026-04-01", "2026-06-20", "week", 12),
    ],
)
def test_named_ranges_end_today_in_the_zone(  # noqa: PLR0917 - the parameters of the table
    chdb_client: Client, usage_db: str, now: str, range_name: str, tz: str, first: str, last: str, by: str, points: int
) -> None:
    settings = console_settings(now=datetime.fromisoformat(now.replace("Z", "+00:00")))
    with http(make_app(chdb_client, usage_db, settings)) as c:
        body = c.get(
            "/api/v1/usage", params={"range": range_name, "timezone": tz}, headers=bearer(token(ACCOUNT))
        ).json()
    assert body["range"] == {"from": first, "to": last, "by": by, "timezone": tz}
    assert len(body["series"]) == points
    labels = [p["period"] for p in body["series"]]
    assert labels == sorted(labels)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"range": "1y"}, "range"),
        ({"by": "year"}, "by"),
        ({"by": "hour"}, "by"),
        ({"range": "24h", "by": "day"}, "by"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"from": "2026-11-05"}, "to"),
        ({"from": "2026-11-05", "to": "2026-11-01"}, "from"),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "yesterday", "to": "2026-03-01"}, "from"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "to"),
        ({"range": "7d", "from": "2026-11-01"}, "from"),
        ({"app": ""}, "app"),
        ({"apps": "x"}, "apps"),
        ({"from": "0001-01-01", "to": "0001-01-02"}, "from"),
    ],
)
def test_bad_parameters_are_400_naming_them(client: TestClient, params: dict[str, str], parameter: str) -> None:
    answer = client.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT)))
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == parameter
    assert answer.json()["error"].startswith(f"{parameter}: ")


def test_unknown_app_and_another_accounts_app_are_the_same_404(client: TestClient) -> None:
    headers = bearer(token(ACCOUNT))
    missing = client.get("/api/v1/usage", params={"app": "no-such-app"}, headers=headers)
    theirs = client.get("/api/v1/usage", params={"app": "app-01-0"}, headers=headers)
    assert missing.status_code == theirs.status_code == 404
    assert missing.json()["error"].replace("no-such-app", "app-01-0") == theirs.json()["error"]


def test_a_year_and_a_day_custom_range_is_allowed(client: TestClient) -> None:
    params = {"from": "2026-01-01", "to": "2027-01-01", "by": "month"}
    answer = client.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT)))
    assert answer.status_code == 200
    assert len(answer.json()["series"]) == 13


def test_an_app_with_seats_and_no_usage_counts_in_the_accounts_agents(chdb_client: Client, database: str) -> None:
    """Seats are subscribed (and billed) whether or not the app was used: all apps' agents include them."""
    fill(chdb_client, database, [*seat_events()[:1], {**seat_events()[0], "app_id": "app-00-9", "event_id": "s9"}])
    with http(make_app(chdb_client, database)) as c:
        params = {"from": "2026-05-01", "to": "2026-05-02"}
        body = c.get("/api/v1/usage", params=params, headers=bearer(token(ACCOUNT))).json()
        one = c.get("/api/v1/usage", params={**params, "app": "app-00-9"}, headers=bearer(token(ACCOUNT))).json()
    assert [p["agents"] for p in body["series"]] == [6, 6]
    assert [p["agents"] for p in one["series"]] == [3, 3]
    assert body["totals"]["billing_sessions"] == 0


@pytest.mark.parametrize("zone_name", ["America", "Etc", "a" * 300, "Etc/", "posixrules"])
def test_zone_names_that_are_files_or_directories_are_400(client: TestClient, zone_name: str) -> None:
    """zoneinfo opens files: a directory or an over-long name is an OSError, still the caller's bad zone."""
    for path in ("/api/v1/usage", "/api/v1/sessions.csv"):
        answer = client.get(path, params={"timezone": zone_name}, headers=bearer(token(ACCOUNT)))
        assert answer.status_code in (200, 400), (path, zone_name, answer.text[:200])
        if answer.status_code == 400:
            assert answer.json()["parameter"] == "timezone"
