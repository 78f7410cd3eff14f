"""The Grafana dashboards (deploy/grafana/dashboards) against real data in the embedded ClickHouse.

No Grafana runs here: ``tests/grafana.py`` turns a panel's SQL into what ClickHouse would receive
from Grafana and its ClickHouse data source (variables as Grafana formats them, "All" included,
the plugin's macros as its backend expands them; sources cited there). With that, every
ClickHouse panel and variable query of both dashboards is run, and

- "Usage per app" equals `metering usage` for the same days, zone, period and filters, after
  the stream wrote the sessions and a replay wrote them again, and after `metering reconcile
  --repair` voided some (the voids are subtracted, as in every usage query);
- the time series and the per-app drill-down add up to the same figures;
- no variable lets free text into SQL (the time zone is one of the server's zone names, ids are
  quoted whatever characters they hold);
- every PromQL expression parses (``promtool check rules``) for several selections, odd ids
  included, and names only metrics the processes register;
- every Prometheus panel over a per-app series (a metric with ``account_id``/``app_id`` labels in
  the registry) selects exactly the chosen apps, "All" included: its expanded matchers applied to
  look-alike label values, and asked of a real Prometheus scraping those values.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server

import sql
from cli.main import main
from consumers.clickhouse import Client, SessionStore, migrate
from consumers.clickhouse.plans import PlanStore
from consumers.clickhouse.usage import named_query
from consumers.grafana import DASHBOARDS, render
from consumers.grafana.bind import BindingError, bind
from consumers.grafana.variables import MATCH_ALL, ZONE_NAME
from devtools import traffic
from pipeline.contract.decode import decode_event
from pipeline.contract.events import AlertDelivered, BalanceSnapshot, ConversationTurn, format_ms, ms_to_datetime
from pipeline.infra.settings import Settings
from pipeline.rules.attribution import USAGE_COLUMNS, zone
from pipeline.rules.config import DAY, HOUR
from pipeline.stream.records import billing_session_record
from tests.grafana import (
    ALL,
    Grafana,
    Selector,
    panels,
    promql_metric_names,
    promql_selectors,
    promql_selects,
    repeated_row,
)
from tests.integration.prometheus_server import PrometheusServer
from tests.late_traffic import late_scenarios, stream_run, write_stream
from tests.metric_names import exported_series
from tests.support import T0, Conversation, in_time_order

DIRECTORY = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
FIRST, LAST = date(2026, 11, 1), date(2026, 11, 2)
NOW = T0 + 30 * DAY
#: Ids with quotes, backslashes, regex metacharacters, a newline and UTF-8: what the event contract
#: allows, and what SQL quoting and PromQL regexes must survive.
ODD_ACCOUNT, ODD_APPS = "o'neil\\co", ("bot\\", "it's \\'quoted\\'", 'a.b|c*(d) "é"\n2')
USAGE = "usage_by_period"


def dashboard(name: str) -> dict[str, Any]:
    return json.loads((DIRECTORY / name).read_text())


METERING, BALANCES = "metering.json", "metering-balances.json"


def panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in panels(board) if p["title"] == title]
    return found


def sql_of(board: dict[str, Any], title: str) -> str:
    (target,) = panel(board, title)["targets"]
    return str(target["rawSql"])


# -- generated from the product's SQL ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_the_committed_dashboards_are_what_make_dashboards_writes(name: str) -> None:
    assert (DIRECTORY / name).read_text() == render(name), (
        f"deploy/grafana/dashboards/{name} differs from what consumers/grafana makes of sql/queries: "
        "run `make dashboards` and commit the result"
    )


def _clickhouse_targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for p in panels(board):
        for target in p["targets"]:
            if target["datasource"]["type"] == "grafana-clickhouse-datasource":
                yield p, target


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_clickhouse_panel_runs_a_named_query_and_subtracts_voids(name: str) -> None:
    board = dashboard(name)
    for p, target in _clickhouse_targets(board):
        found = re.match(r"-- sql/queries/(\w+)\.sql, its parameters bound", target["rawSql"])
        assert found, f"{p['title']}: not generated from a named query"
        query = found.group(1)
        shipped = {line.strip() for line in target["rawSql"].splitlines()}
        lines = [line.strip() for line in sql.query(query).splitlines() if "{" not in line]
        assert [line for line in lines if line not in shipped] == [], f"{p['title']}: not the text of {query}.sql"
        tables = set(re.findall(r"FROM \{database:Identifier\}\.(\w+)", sql.query(query)))
        if "usage_15m" in tables:
            assert "voids_15m" in tables, f"{query}.sql reads usage_15m without subtracting voids_15m"
        if "billing_sessions" in tables:
            assert "session_voids" in tables, f"{query}.sql reads billing_sessions without leaving voided ones out"


def test_a_query_parameter_the_dashboards_cannot_bind_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql, "query", lambda name: "-- new\nSELECT {threshold:UInt8}")
    with pytest.raises(BindingError, match=r"\{threshold:UInt8\}"):
        bind("anything")


# -- the data: what the stream wrote, a replay of it, late events for reconcile -------------------------------


def _odd_ids() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, app in enumerate(ODD_APPS):
        convo = Conversation(conversation_id=f"odd-{i}", account_id=ODD_ACCOUNT, app_id=app, start=T0 + i * HOUR)
        out += convo.user(0).bot(2).user(20).bot(31).events
    return out


@pytest.fixture(scope="module")
def events() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(arrival order, late): the reconcile scenarios, background traffic and odd ids; late ones last."""
    on_time, late = late_scenarios()
    background = list(traffic.events(T0 - HOUR, 1500, seed=11))
    return [*in_time_order([*on_time, *background, *_odd_ids()]), *late], late


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory, events: Any) -> Path:
    path = tmp_path_factory.mktemp("dashboards") / "events.jsonl"
    path.write_bytes(b"".join(traffic.encode(ev) + b"\n" for ev in events[0]))
    return path


def _plan_events() -> list[dict[str, Any]]:
    """Plans, funds and seats of every app of the traffic: the balances dashboard's tables need them."""
    out: list[dict[str, Any]] = []
    for i, (account, app) in enumerate(traffic.apps()):
        base = {"account_id": account, "app_id": app, "occurred_at": format_ms(T0 - DAY + i * 1000)}
        out.append(base | {"type": "plan_changed", "event_id": f"plan-{i}", "plan": "starter",
                           "price_per_usage_session": "0.50", "price_per_alert_session": "0.05",
                           "price_per_voice_session": "1.00", "currency": "EUR" if i % 5 == 0 else "USD",
                           "low_balance_threshold": "10.00"})  # fmt: skip
        out.append(base | {"type": "funds_added", "event_id": f"funds-{i}", "amount": "100.00"})
        out.append(base | {"type": "agents_subscribed", "event_id": f"seats-{i}", "agents": 3 + i % 4})
    return out


def _balance_apps() -> list[tuple[str, str]]:
    """The (account, app) pairs with a balance: the traffic's and the odd ids."""
    return [*traffic.apps(), *((ODD_ACCOUNT, app) for app in ODD_APPS)]


def _snapshots() -> list[BalanceSnapshot]:
    statuses = ("active", "low", "depleted")
    return [
        BalanceSnapshot(
            account_id=account, app_id=app, plan="starter", currency="USD", funds="100.00", usage_cost="0.00",
            alert_cost="0.00", voice_cost="0.00", usage_sessions=version, alert_sessions=0, voice_sessions=0,
            unpriced_sessions=0, balance=f"{50 - 30 * (i % 3)}.00", threshold="10.00", status=statuses[i % 3],  # type: ignore[arg-type]
            entitled=statuses[i % 3] != "depleted", agents=3, version=version,
            updated_at=ms_to_datetime(T0 + version * 1000),
        )
        for i, (account, app) in enumerate(_balance_apps())
        for version in (1, 2)  # the read model keeps the highest version
    ]  # fmt: skip


def _fill(client: Client, database: str, arrival: list[dict[str, Any]]) -> None:
    migrate(client, database)
    sessions, _ = stream_run(arrival)
    write_stream(client, database, sessions)  # as the sink writes them
    # a replay (a reset consumer group): every session again, under another insert token
    SessionStore(client, database).insert([billing_session_record(s) for s in sessions], "replay-after-a-crash")
    decoded = [decode_event(traffic.encode(ev), NOW) for ev in [*arrival, *_plan_events()]]
    # the plan sinks read billing-plans and the transfers: turns and alerts are not theirs
    events_only = (d[1] for d in decoded if isinstance(d, tuple))
    records = [e for e in events_only if not isinstance(e, ConversationTurn | AlertDelivered)]
    store = PlanStore(client, database)
    store.insert(records, "plans-and-transfers")  # PlanStore keeps plans, funds, seats and started transfers
    store.insert(_snapshots(), "balance-state")


@pytest.fixture(scope="module")
def replayed(chdb_client: Client, events: Any) -> Iterator[str]:
    database = f"t_{uuid.uuid4().hex}"
    _fill(chdb_client, database, events[0])
    yield database
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": database})


def settings_env(tmp_path: Path, chdb_path: Path, database: str) -> dict[str, str]:
    settings = Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{chdb_path}", clickhouse_database=database)
    return settings.to_env()


@pytest.fixture(scope="module")
def repaired(
    chdb_client: Client, events: Any, events_file: Path, chdb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Another database filled the same way, then `metering reconcile --repair` (which voids sessions)."""
    database = f"t_{uuid.uuid4().hex}"
    _fill(chdb_client, database, events[0])
    env = settings_env(tmp_path_factory.mktemp("reconcile"), chdb_path, database)
    days = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    result = CliRunner().invoke(main, ["reconcile", *days, "--archive", str(events_file), "--repair",
                                       "--timezone", "UTC", "--format", "json"], env=env)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    yield database, summary
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": database})


# -- Grafana and `metering usage` side by side ---------------------------------------------------------------


def grafana(
    client: Client, name: str, database: str, start: datetime, end: datetime, *, interval_s: int = 60
) -> Grafana:
    g = Grafana(
        dashboard(name), lambda text: [tuple(r) for r in client.query(text).result_rows], start, end, interval_s
    )
    return g.select("database", database)


def local_days(first: date, last: date, tz: str) -> tuple[datetime, datetime]:
    """The time range Grafana sends for "these days" in ``tz``: midnight to 23:59:59.999."""
    zone_ = ZoneInfo(tz)
    start = datetime.combine(first, time(), zone_)
    return start, datetime.combine(last + timedelta(days=1), time(), zone_) - timedelta(milliseconds=1)


Row = tuple[str, str, str, int, int, int, int, int]
Scope = dict[str, tuple[str, str]]  # a repeated row's variable: (value, text)


def metering_usage(
    env: dict[str, str], first: date, last: date, *, by: str, tz: str, account: str | None = None,
    apps: Sequence[str] = (),
) -> list[Row]:  # fmt: skip
    """`metering usage` as typed: its eight usage columns, one tuple per line of its JSON output."""
    args = ["usage", "--from", first.isoformat(), "--to", last.isoformat(), "--by", by, "--timezone", tz]
    args += ["--format", "json", *(["--account", account] if account else [])]
    args += [a for app in apps for a in ("--app", app)]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    columns = ("account_id", "app_id", by, *USAGE_COLUMNS[3:])
    return [tuple(r[c] for c in columns) for r in json.loads(result.stdout)]  # type: ignore[misc]


def usage_panel(g: Grafana, title: str = "Usage per app", scoped: Scope | None = None) -> list[Row]:
    rows = g.query(sql_of(g.dashboard, title), scoped)  # type: ignore[arg-type]
    return sorted((str(a), str(b), str(d), *(int(n) for n in rest)) for a, b, d, *rest in rows)  # type: ignore[misc]


@pytest.mark.parametrize(("tz", "by"), [("UTC", "day"), ("Asia/Kolkata", "day"), ("America/New_York", "week"),
                                        ("Australia/Eucla", "month")])  # fmt: skip
def test_usage_per_app_equals_metering_usage_after_a_replay(
    chdb_client: Client, replayed: str, chdb_path: Path, tmp_path: Path, *, tz: str, by: str
) -> None:
    stored = chdb_client.query("SELECT count(), uniqExact(billing_session_id) FROM {db:Identifier}.billing_sessions",
                               parameters={"db": replayed}).result_rows[0]  # fmt: skip
    assert stored[0] >= 2 * stored[1], "the replay wrote every session a second time"
    g = grafana(chdb_client, METERING, replayed, *local_days(FIRST, LAST, tz)).select("tz", tz).select("by", by)
    shown = usage_panel(g)
    assert shown, "the panel shows usage"
    assert shown == metering_usage(settings_env(tmp_path, chdb_path, replayed), FIRST, LAST, by=by, tz=tz)


def test_usage_per_app_equals_metering_usage_after_a_repair_that_voids_sessions(
    chdb_client: Client, replayed: str, repaired: tuple[str, dict[str, Any]], chdb_path: Path, tmp_path: Path
) -> None:
    database, summary = repaired
    assert summary["repair"]["voided"] > 0, "the repair voided sessions"
    assert summary["repair"]["inserted"] > 0
    start, end = local_days(FIRST, LAST, "UTC")
    after = usage_panel(grafana(chdb_client, METERING, database, start, end))
    assert after == metering_usage(settings_env(tmp_path, chdb_path, database), FIRST, LAST, by="day", tz="UTC")
    assert after != usage_panel(grafana(chdb_client, METERING, replayed, start, end)), "the repair changed figures"
    # without the voids (the dashboard before: usage_15m alone) Grafana would show more sessions
    counted = chdb_client.query(
        "SELECT sum(n) FROM (SELECT toInt64(uniqExactMerge(sessions)) AS n FROM {db:Identifier}.usage_15m "
        "WHERE bucket >= {a:DateTime} AND bucket <= {b:DateTime} GROUP BY account_id, app_id, kind, bucket)",
        parameters={"db": database, "a": start.replace(tzinfo=None), "b": end.replace(tzinfo=None)},
    ).result_rows[0][0]
    assert counted > sum(r[4] + r[5] + r[6] for r in after)


def test_the_account_and_app_variables_filter_as_metering_usage_does(
    chdb_client: Client, replayed: str, chdb_path: Path, tmp_path: Path
) -> None:
    env = settings_env(tmp_path, chdb_path, replayed)
    g = grafana(chdb_client, METERING, replayed, *local_days(FIRST, LAST, "UTC"))
    accounts = dict(g.options("account"))
    assert ODD_ACCOUNT in accounts.values()
    stored = chdb_client.query("SELECT DISTINCT account_id FROM {db:Identifier}.billing_sessions",
                               parameters={"db": replayed}).result_rows  # fmt: skip
    assert sorted(accounts.values()) == sorted(r[0] for r in stored)
    for value, account in [(v, t) for v, t in accounts.items() if t in ("acme", "acct-03", ODD_ACCOUNT)]:
        g.select("account", value).select("app", [ALL])
        assert usage_panel(g) == metering_usage(env, FIRST, LAST, by="day", tz="UTC", account=account), account
        apps = g.options("app")
        assert apps, f"the app variable lists {account}'s apps"
        chosen = apps[:2]
        g.select("app", [v for v, _ in chosen])
        expected = metering_usage(env, FIRST, LAST, by="day", tz="UTC", account=account, apps=[t for _, t in chosen])
        assert usage_panel(g) == expected
        assert expected, f"{account}: {chosen} have usage"
    assert {t for _, t in g.select("account", ALL).options("app")} >= {*ODD_APPS, "support-bot"}


def test_the_time_range_reports_the_whole_local_days_it_touches(
    chdb_client: Client, replayed: str, chdb_path: Path, tmp_path: Path
) -> None:
    """A range inside a day ("last 6 hours") shows that day's usage: `metering usage` counts whole days."""
    tz = "Asia/Kolkata"
    start = datetime.combine(FIRST, time(10, 7), ZoneInfo(tz))
    g = grafana(chdb_client, METERING, replayed, start, start + timedelta(hours=6)).select("tz", tz)
    expected = metering_usage(settings_env(tmp_path, chdb_path, replayed), FIRST, FIRST, by="day", tz=tz)
    assert usage_panel(g) == expected
    assert {r[2] for r in expected} == {FIRST.isoformat()}


def _by_kind(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, kind, n in rows:
        out[kind] = out.get(kind, 0) + int(n)
    return out


def _usage_totals(rows: Sequence[Row]) -> dict[str, int]:
    return {"usage": sum(r[4] for r in rows), "voice": sum(r[5] for r in rows), "alert": sum(r[6] for r in rows)}


@pytest.mark.parametrize("interval_s", [20, 900, 3600, 86400])
def test_the_time_series_add_up_to_the_usage_table(
    chdb_client: Client, repaired: tuple[str, dict[str, Any]], interval_s: int
) -> None:
    database, _ = repaired
    g = grafana(chdb_client, METERING, database, *local_days(FIRST, LAST, "UTC"), interval_s=interval_s)
    table = usage_panel(g)
    by_kind = g.query(sql_of(g.dashboard, "Billing sessions by kind"))
    assert {k: v for k, v in _by_kind(by_kind).items() if v} == {k: v for k, v in _usage_totals(table).items() if v}
    step = max(900, -(-interval_s // 900) * 900)
    assert all(int(t.timestamp()) % step == 0 for t, _, _ in by_kind), "steps of whole 15-minute buckets"
    conversations = g.query(sql_of(g.dashboard, "Conversations"))
    assert sum(n for _, n in conversations) == sum(r[3] for r in table)
    if interval_s == 86400:  # a UTC day per step: the daily rows of the table
        per_day: dict[str, int] = {}
        for _, _, d, _, u, v, a, _ in table:
            per_day[d] = per_day.get(d, 0) + u + v + a
        assert {t.date().isoformat(): n for t, n in _sum_by_time(by_kind).items()} == per_day


def _sum_by_time(rows: list[tuple[Any, ...]]) -> dict[datetime, int]:
    out: dict[datetime, int] = {}
    for t, _, n in rows:
        out[t] = out.get(t, 0) + int(n)
    return out


def test_the_drill_down_row_repeats_per_app_and_agrees_with_metering_usage(
    chdb_client: Client, replayed: str, chdb_path: Path, tmp_path: Path
) -> None:
    board = dashboard(METERING)
    drill = [p for p in panels(board) if repeated_row(board, p) == "app"]
    titles = {p["title"] for p in drill}
    assert titles >= {"${app:text}: billing sessions by kind", "${app:text}: active agents per ${by}"}
    env = settings_env(tmp_path, chdb_path, replayed)
    g = grafana(chdb_client, METERING, replayed, *local_days(FIRST, LAST, "UTC"))
    options = g.options("app")  # "All": Grafana draws the row once per option
    picked = [o for o in options if o[1] in ("support-bot", "app-01-2", ODD_APPS[1])]
    assert len(picked) == 3
    for value, app in picked:
        scoped = {"app": (value, app)}
        expected = [r for r in metering_usage(env, FIRST, LAST, by="day", tz="UTC", apps=[app]) if r[1] == app]
        assert usage_panel(g, "${app:text}: usage per ${by}", scoped) == expected, app
        by_kind = g.query(sql_of(board, "${app:text}: billing sessions by kind"), scoped)
        assert {k: v for k, v in _by_kind(by_kind).items() if v} == {
            k: v for k, v in _usage_totals(expected).items() if v
        }
        agents = g.query(sql_of(board, "${app:text}: active agents per ${by}"), scoped)
        shown = sorted((str(period), int(n)) for *_, period, n in agents)
        printed = _active_agents(env, app)
        assert shown == printed, app
        seats = g.query(sql_of(board, "${app:text}: seat changes"), scoped)
        assert len(seats) == (1 if app.startswith("app-") else 0)


def _active_agents(env: dict[str, str], app: str) -> list[tuple[str, int]]:
    """The active_agents column of `metering usage --app` (R11), where it is not zero."""
    args = ["usage", "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--app", app, "--format", "json"]
    rows = json.loads(CliRunner().invoke(main, args, env=env).stdout)
    return sorted((r["day"], r["active_agents"]) for r in rows if r["app_id"] == app and r["active_agents"])


def test_top_apps_and_channels_are_their_named_queries(
    chdb_client: Client, repaired: tuple[str, dict[str, Any]]
) -> None:
    database, _ = repaired
    tz = "Asia/Kolkata"
    g = grafana(chdb_client, METERING, database, *local_days(FIRST, LAST, tz)).select("tz", tz)
    days = {"tz": tz, "from": FIRST, "to": LAST}
    top = named_query(chdb_client, database, "top_apps", limit=10, **days)
    assert len(top) == 10
    assert g.query(sql_of(g.dashboard, "Top apps by billing sessions")) == top
    channels: dict[str, list[int]] = {}
    for _, _, _, channel, kind, n in named_query(chdb_client, database, "sessions_by_channel", apps=[], account=None,
                                                 **days):  # fmt: skip
        channels.setdefault(channel, [0, 0, 0])[("usage", "voice", "alert").index(kind)] += n
    shown = g.query(sql_of(g.dashboard, "Sessions by channel"))
    assert {c: list(n) for c, *n in shown} == channels
    assert "" in channels, "alerts have no channel"


# -- every query runs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DASHBOARDS))
@pytest.mark.parametrize("selection", ["all", "chosen"])
def test_every_clickhouse_panel_and_variable_query_runs(
    chdb_client: Client, repaired: tuple[str, dict[str, Any]], name: str, selection: str
) -> None:
    database, _ = repaired
    g = grafana(chdb_client, name, database, *local_days(FIRST, LAST, "Asia/Kolkata")).select("tz", "Asia/Kolkata")
    if selection == "chosen":
        account = next(v for v, t in g.options("account") if t == "acct-01")
        g.select("account", account).select("app", [v for v, _ in g.options("app")][:2])
    for variable in g.variables.values():
        if variable["type"] == "query":
            assert g.options(variable["name"]), f"variable {variable['name']} lists nothing"
    app_options = g.options("app")
    shown: dict[str, bool] = {}
    for p, target in _clickhouse_targets(g.dashboard):
        scopes: list[Scope | None] = [None]
        if repeated_row(g.dashboard, p) == "app":  # drawn once per app: run it for several
            scopes = [{"app": option} for option in app_options[:8]]
        for scoped in scopes:
            rows = g.query(target["rawSql"], scoped)
            shown[p["title"]] = shown.get(p["title"], False) or bool(rows)
    assert all(shown.values()), f"panels that show nothing on days of traffic: {[t for t, s in shown.items() if not s]}"


def test_the_balance_tables_are_the_read_model_and_the_cost_query(chdb_client: Client, replayed: str) -> None:
    tz = "Europe/Paris"
    g = grafana(chdb_client, BALANCES, replayed, *local_days(FIRST, LAST, tz)).select("tz", tz)
    latest = named_query(chdb_client, replayed, "balance_latest", account=None)
    assert sorted(g.query(sql_of(g.dashboard, "Balance and status per app"))) == sorted(latest)
    assert {s for *_, s, _, _, _ in latest} == {"active", "low", "depleted"}
    by_status = dict(g.query(sql_of(g.dashboard, "Apps by status")))
    assert by_status == {s: sum(1 for r in latest if r[4] == s) for s in ("active", "low", "depleted")}
    cost = named_query(chdb_client, replayed, "cost_by_app", tz=tz, account=None, **{"from": FIRST, "to": LAST})
    assert sorted(g.query(sql_of(g.dashboard, "Cost per app"))) == sorted(cost)
    assert cost
    account = next(v for v, t in g.options("account") if t == "acct-02")
    chosen = g.select("account", account).options("app")[1:3]
    g.select("app", [v for v, _ in chosen])
    assert sorted(g.query(sql_of(g.dashboard, "Balance and status per app"))) == sorted(
        r for r in latest if r[0] == "acct-02" and r[1] in {t for _, t in chosen}
    )


# -- variables: no free text into SQL -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_no_variable_lets_free_text_into_sql(name: str) -> None:
    board = dashboard(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {v["type"] for v in variables.values()} <= {"datasource", "constant", "query", "custom"}, "no text box"
    for v in variables.values():
        if v["type"] in ("query", "custom"):
            assert v["allowCustomValue"] is False, v["name"]
        if v.get("includeAll"):
            assert v["allValue"] == "''", f"{v['name']}: 'All' is the empty string, read as no filter"
    assert {"account", "app", "tz"} <= variables.keys()
    assert variables["app"]["multi"] is True
    assert variables["app"]["includeAll"] is True
    assert re.fullmatch(r"[A-Za-z_]\w*", variables["database"]["query"]), "an identifier"
    sqls = [t["rawSql"] for _, t in _clickhouse_targets(board)]
    sqls += [v["query"] for v in variables.values() if v["type"] == "query"]
    for text in sqls:
        for found in re.finditer(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[", text):
            whole, var, fmt = found.group(0), found.group(1), found.group(2)
            if whole.startswith("$__") or whole == "${database}":
                continue  # the plugin's macros, the hidden constant
            assert var in variables, f"{whole}: not a variable of the dashboard"
            assert fmt == "singlequote", f"{whole}: a variable in SQL must be quoted"


def test_the_time_zone_is_one_of_the_zones_metering_usage_accepts(chdb_client: Client, replayed: str) -> None:
    g = grafana(chdb_client, METERING, replayed, *local_days(FIRST, LAST, "UTC"))
    zones = [value for value, _ in g.options("tz")]
    assert len(zones) > 400
    assert zones[0] == "UTC"
    for name in zones:
        assert re.fullmatch(ZONE_NAME, name), name
        zone(name)  # UnknownZoneError if `metering usage --timezone` would refuse it
    with pytest.raises(AssertionError, match="not among the options"):
        g.select("tz", "UTC') OR 1=1 --")


def test_odd_ids_are_quoted_whatever_characters_they_hold(
    chdb_client: Client, replayed: str, chdb_path: Path, tmp_path: Path
) -> None:
    g = grafana(chdb_client, METERING, replayed, *local_days(FIRST, LAST, "UTC"))
    account = next(v for v, t in g.options("account") if t == ODD_ACCOUNT)
    g.select("account", account)
    apps = g.options("app")
    assert sorted(t for _, t in apps) == sorted(ODD_APPS)
    g.select("app", [v for v, _ in apps])
    rows = usage_panel(g)
    assert {r[1] for r in rows} == set(ODD_APPS)
    env = settings_env(tmp_path, chdb_path, replayed)
    assert rows == metering_usage(env, FIRST, LAST, by="day", tz="UTC", account=ODD_ACCOUNT, apps=ODD_APPS)


# -- the emulation itself, against the plugin's documented examples ---------------------------------------


def test_the_emulated_macros_expand_as_the_plugin_documents() -> None:
    """docs/sources/query-editor.md of grafana/clickhouse-datasource, "Macros": its output examples."""
    start, end = datetime.fromtimestamp(1415792726, UTC), datetime.fromtimestamp(1447328726, UTC)
    g = Grafana(dashboard(METERING), lambda text: [], start, end, interval_s=20)
    assert g.macros("$__timeFilter(time)") == "time >= toDateTime(1415792726) AND time <= toDateTime(1447328726)"
    assert g.macros("$__fromTime AND $__toTime") == "toDateTime(1415792726) AND toDateTime(1447328726)"
    assert g.macros("$__timeInterval(column)") == "toStartOfInterval(toDateTime(column), INTERVAL 20 second)"
    assert g.macros("$__interval_s") == "20"
    assert g.macros("$__dateFilter(date)") == "date >= toDate('2014-11-12') AND date <= toDate('2015-11-12')"
    # Grafana's template service: "All" with a custom value pastes it unformatted; singlequote escapes '
    g.selected.update(app=[ALL], account="it's")
    assert g.interpolate("[${app:singlequote}] ${account:singlequote} $__interval") == "[''] 'it\\'s' 20s"
    # the Prometheus data source: a format in the expression wins over its own escaping; raw is the value as is
    board = dashboard(BALANCES)
    g = Grafana(board, lambda text: [], start, end)
    g.selected.update(app_regex="a\\\\x2Eb|c", account_regex=MATCH_ALL)
    assert g.promql('x{a=~"${account_regex:raw}", b=~"${app_regex:raw}"}[$__rate_interval]') == (
        'x{a=~"(?s:.*)", b=~"a\\\\x2Eb|c"}[1m]'
    )
    with pytest.raises(AssertionError, match="raw format"):
        g.promql('x{a=~"${app_regex}"}')


# -- Prometheus ----------------------------------------------------------------------------------------------


def _promql_targets(names: Sequence[str] = tuple(DASHBOARDS)) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name in names:
        board = dashboard(name)
        for p in panels(board):
            for target in p["targets"]:
                if "expr" in target:
                    yield name, p, target


def per_app_series() -> dict[str, frozenset[str]]:
    """Series names whose metric has an ``account_id`` or ``app_id`` label, with its labels.

    Read from the registry every process serves, once every module has registered its metrics
    (``exported_series``); prometheus_client keeps a metric's label names in ``_labelnames``.
    """
    exported_series()
    out = {}
    for name, collector in REGISTRY._names_to_collectors.items():
        labels = frozenset(getattr(collector, "_labelnames", ()))
        if labels & {"account_id", "app_id"}:
            out[name] = labels
    return out


#: (account, apps) by their text; None is "All".
Selection = tuple[str | None, list[str] | None]
SELECTIONS: list[Selection] = [
    (None, None),
    ("acct-02", None),
    ("acct-02", ["app-02-1", "app-02-3"]),
    (ODD_ACCOUNT, list(ODD_APPS)),  # quotes, backslashes, regex metacharacters, a newline, UTF-8
    (None, [ODD_APPS[2], "app-05-0"]),  # apps of any account
]


def choose(g: Grafana, selection: Selection) -> Grafana:
    account, apps = selection
    g.select("account", ALL if account is None else next(v for v, t in g.options("account") if t == account))
    g.select("app", [ALL] if apps is None else [v for v, t in g.options("app") if t in apps])
    return g


def chosen(pairs: Sequence[tuple[str, str]], selection: Selection) -> set[tuple[str, str]]:
    """What the selection means, as the SQL reads it: the account (or every one), the apps (or every one)."""
    account, apps = selection
    return {(a, b) for a, b in pairs if account in (None, a) and (apps is None or b in apps)}


def _series_pairs(chdb_client: Client, database: str) -> list[tuple[str, str]]:
    """Every app with a balance, and look-alikes: a prefix, a suffix, metacharacters read as such, other accounts."""
    pairs = [tuple(r) for r in chdb_client.query(
        "SELECT DISTINCT account_id, app_id FROM {db:Identifier}.balance_snapshots", parameters={"db": database}
    ).result_rows]  # fmt: skip
    assert len(pairs) == len(_balance_apps())
    decoys = {(a, variant) for a, b in pairs for variant in (b + "x", "x" + b, b.replace(".", "X"), b + "\n")}
    decoys |= {("acct-07", b) for _, b in pairs} | {(a + "x", b) for a, b in pairs}
    return sorted({*pairs, *decoys})


def _per_app_selectors(expr: str, per_app: dict[str, frozenset[str]]) -> list[Selector]:
    return [s for s in promql_selectors(expr) if s.metric in per_app]


def test_every_prometheus_panel_over_a_per_app_series_takes_the_account_and_app_variables() -> None:
    """Every selector of a per-app series carries both matchers; a bare name (no selector) would not."""
    per_app = per_app_series()
    assert {"metering_app_balance", "metering_app_balance_status"} <= per_app.keys()
    wanted = {("account_id", "=~", "${account_regex:raw}"), ("app_id", "=~", "${app_regex:raw}")}
    seen = set()
    for name, p, t in _promql_targets():
        for metric in promql_metric_names(t["expr"]) & per_app.keys():
            seen.add(metric)
            selectors = [s for s in promql_selectors(t["expr"]) if s.metric == metric]
            named = len(re.findall(rf"\b{metric}\b", t["expr"]))
            assert len(selectors) == named, f"{p['title']}: {metric} without label matchers"
            for selector in selectors:
                assert wanted <= set(selector.matchers), f"{p['title']}: {selector.text} ignores the selection"
        if "${account_regex" in t["expr"] or "${app_regex" in t["expr"]:
            variables = {v["name"]: v for v in dashboard(name)["templating"]["list"]}
            assert {"account_regex", "app_regex"} <= variables.keys(), f"{name} lacks the PromQL variables"
    assert seen >= {"metering_app_balance", "metering_app_balance_status"}


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_the_promql_variables_are_hidden_and_computed_from_the_selection(name: str) -> None:
    variables = {v["name"]: v for v in dashboard(name)["templating"]["list"]}
    if name == BALANCES:
        assert {"account_regex", "app_regex"} <= variables.keys()
    for regex in ("account_regex", "app_regex"):
        if regex not in variables:
            continue
        v = variables[regex]
        assert (v["type"], v["hide"], v["multi"], v["includeAll"]) == ("query", 2, False, False), regex
        assert v["current"]["value"] == MATCH_ALL, "its value for the default selection, All"
        assert re.findall(r"\$\{(\w+):(\w+)\}", v["query"]) == [(regex.removesuffix("_regex"), "singlequote")]


def test_the_promql_variables_follow_the_selection_as_grafana_refreshes(chdb_client: Client, replayed: str) -> None:
    """A changed variable re-validates the query variables naming it (and theirs): MultiValueVariable's rules."""
    g = grafana(chdb_client, BALANCES, replayed, *local_days(FIRST, LAST, "UTC"))
    assert (g.selected["account_regex"], g.selected["app_regex"]) == (MATCH_ALL, MATCH_ALL)
    choose(g, ("acct-02", ["app-02-1", "app-02-3"]))
    assert (g.selected["account_regex"], g.selected["app_regex"]) == ("acct-02", "app-02-1|app-02-3")
    # another account: the chosen apps are no options any more, so Grafana takes the first option
    g.select("account", next(v for v, t in g.options("account") if t == "acct-03"))
    assert g.selected["app"] == [g.options("app")[0][0]] == ["app-03-0"]
    assert (g.selected["account_regex"], g.selected["app_regex"]) == ("acct-03", "app-03-0")
    g.select("app", [ALL])
    assert g.selected["app_regex"] == MATCH_ALL


@pytest.mark.parametrize("selection", SELECTIONS, ids=range(len(SELECTIONS)))
def test_the_per_app_prometheus_panels_select_exactly_the_chosen_apps(
    chdb_client: Client, replayed: str, selection: Selection
) -> None:
    """The matchers Prometheus would receive, applied (anchored, as Prometheus does) to look-alike label values."""
    per_app = per_app_series()
    pairs = _series_pairs(chdb_client, replayed)
    g = choose(grafana(chdb_client, BALANCES, replayed, *local_days(FIRST, LAST, "UTC")), selection)
    expected = chosen(pairs, selection)
    assert expected, "the selection has apps"
    checked = 0
    for _, p, t in _promql_targets([BALANCES]):
        for selector in _per_app_selectors(g.promql(t["expr"]), per_app):
            matchers = [m for m in selector.matchers if m[0] in ("account_id", "app_id")]
            selected = {(a, b) for a, b in pairs if promql_selects(matchers, {"account_id": a, "app_id": b})}
            assert selected == expected, f"{p['title']}: {selector.text}"
            checked += 1
    assert checked >= 2


@pytest.mark.integration
def test_a_real_prometheus_returns_exactly_the_chosen_apps(chdb_client: Client, replayed: str, tmp_path: Path) -> None:
    """The balance gauges of every look-alike app, scraped by Debian's prometheus; each panel asked as Grafana would."""
    registry = CollectorRegistry()
    balance = Gauge("metering_app_balance", "stand-in", ["account_id", "app_id", "currency"], registry=registry)
    status = Gauge("metering_app_balance_status", "stand-in", ["account_id", "app_id", "status"], registry=registry)
    pairs = _series_pairs(chdb_client, replayed)
    for i, (account, app) in enumerate(pairs):
        balance.labels(account, app, "USD").set(i - 100)
        for j, name in enumerate(("active", "low", "depleted")):
            status.labels(account, app, name).set(int(i % 3 == j))
    http, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    server = PrometheusServer(tmp_path / "prometheus", {"metering-balance": [f"127.0.0.1:{http.server_port}"]})
    try:
        server.wait_ready()
        deadline = monotonic() + 60
        while not _scraped(server, len(pairs)):
            assert monotonic() < deadline, f"not scraped: {server.target_health()}\n{server.logs()}"
            sleep(0.5)
        g = grafana(chdb_client, BALANCES, replayed, *local_days(FIRST, LAST, "UTC"))
        per_app = per_app_series()
        for selection in SELECTIONS:
            choose(g, selection)
            expected = chosen(pairs, selection)
            for _, p, t in _promql_targets([BALANCES]):
                expr = g.promql(t["expr"])
                shown = server.query(expr)  # the panel's own expression runs
                for selector in _per_app_selectors(expr, per_app):
                    found = server.query(f"group by (account_id, app_id) ({selector.text})")
                    got = {(r["metric"]["account_id"], r["metric"]["app_id"]) for r in found}
                    assert got == expected, f"{p['title']}, {selection}: {selector.text}"
                if expr.startswith("bottomk"):
                    assert len(shown) == min(10, len(expected))
    finally:
        server.stop()
        http.shutdown()
        http.server_close()
        thread.join(timeout=5)


def _scraped(server: PrometheusServer, series: int) -> bool:
    result = server.query("count(metering_app_balance)")
    return bool(result) and int(float(result[0]["value"][1])) == series


def test_every_promql_expression_parses(chdb_client: Client, replayed: str, tmp_path: Path) -> None:
    """Each expression, variables substituted for every selection, as a recording rule promtool must accept."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: run `make prometheus-tools` (installs Debian's prometheus package)")
    rules = []
    for name in DASHBOARDS:
        g = grafana(chdb_client, name, replayed, *local_days(FIRST, LAST, "UTC"))
        for i, selection in enumerate(SELECTIONS):
            choose(g, selection)
            rules += [{"record": f"dashboard:{g.dashboard['uid'].replace('-', '_')}:panel_{p['id']}_{t['refId']}:{i}",
                       "expr": g.promql(t["expr"])} for _, p, t in _promql_targets([name])]  # fmt: skip
    assert len(rules) > 20 * len(SELECTIONS)
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_metric_the_dashboards_name_is_exported() -> None:
    exported = exported_series()
    used: dict[str, str] = {}
    for name, p, t in _promql_targets():
        g = Grafana(dashboard(name), lambda text: [], datetime.now(UTC), datetime.now(UTC))  # the saved selection
        for metric in promql_metric_names(g.promql(t["expr"])):
            used[metric] = p["title"]
    assert "metering_entitlement_answers_total" in used
    missing = {m: title for m, title in used.items() if m not in exported}
    assert not missing, f"PromQL names metrics no process registers (panel by metric): {missing}"


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"x|y"}[5m]))) / on (job) group_left '
            'b_total offset 1m + count by (status) (c == 1) and bottomk(10, d) * 1e3')  # fmt: skip
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


def test_the_matcher_reader_unquotes_and_anchors_as_prometheus_does() -> None:
    (selector,) = promql_selectors('x{a="q\\"\\\\\\n", b=~"b\\\\x2E|c", c!~"d"}')
    assert selector.matchers == [("a", "=", 'q"\\\n'), ("b", "=~", "b\\x2E|c"), ("c", "!~", "d")]
    assert promql_selects(selector.matchers, {"a": 'q"\\\n', "b": "b.", "c": "dd"})
    assert not promql_selects(selector.matchers, {"a": 'q"\\\n', "b": "bX", "c": "dd"}), "\\x2E is a dot, no wildcard"
    assert not promql_selects(selector.matchers, {"a": 'q"\\\n', "b": "cc", "c": "dd"}), "anchored at both ends"
    assert not promql_selects(selector.matchers, {"a": 'q"\\\n', "b": "c", "c": "d"})
    with pytest.raises(ValueError, match="unknown escape"):
        promql_selectors('x{a=~"a\\.b"}')  # what Grafana's regex format writes: PromQL refuses it
