"""`metering reconcile` on the session's embedded chDB: late events become billable, exactly once.

ClickHouse is filled with what the stream wrote for traffic in which some events came late (a
``Meter`` over the arrival order, its late events dropped as the stream drops them), the truth is
`metering compute` over every event. Reconcile must report exactly the differences, per
session and per (account, app, day); ``--repair`` must make `metering usage` print what
`metering compute` prints, and doing it again must change nothing.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from cli.reconcile import (
    ApiStore,
    DirectStore,
    Period,
    Report,
    TopicDump,
    Truth,
    Who,
    compare,
    compare_days,
    open_store,
    reconcile,
    reconcile_command,
    truth_from_archive,
)
from cli.reconcile.topics import _Filter
from cli.service import StoreEndpoints, discovery_file, token_file
from consumers.clickhouse import Client, SessionStore, usage
from consumers.clickhouse.reconcile import ReconcileRun, RepairBatch, StoredSession, apply_batch, runs, snapshot
from consumers.clickhouse.usage import named_query
from devtools import traffic
from pipeline.contract.events import format_ms
from pipeline.infra.kafka import partition_of
from pipeline.infra.report import render
from pipeline.infra.settings import Settings, Topics
from pipeline.rules.attribution import USAGE_COLUMNS, DayOf, UsageBook, UsageRow, zone
from pipeline.rules.config import DAY, HOUR, MINUTE, RulesConfig
from pipeline.rules.model import BillingSession
from pipeline.stream.records import billing_session_record
from tests.console_support import serve_console
from tests.late_traffic import late_scenarios, stream_run, write_stream
from tests.support import T0, Conversation, alert, in_time_order, meter_run

FIRST, LAST = date(2026, 11, 1), date(2026, 11, 2)
QUARTER = 15 * MINUTE
NOW = T0 + 30 * DAY  # every conversation of the traffic is long final
WHO = Who("tester", "test-host")


# -- the traffic ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic_events() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(arrival order, late events): background traffic and the scenarios, the late ones last."""
    on_time, late = late_scenarios()
    background = list(traffic.events(T0 - HOUR, 1500, seed=5))
    return [*in_time_order([*on_time, *background]), *late], late


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory, traffic_events: Any) -> Path:
    arrival, _ = traffic_events
    path = tmp_path_factory.mktemp("reconcile") / "events.jsonl"
    path.write_bytes(b"".join(traffic.encode(ev) + b"\n" for ev in arrival))
    return path


@pytest.fixture(scope="module")
def stream(traffic_events: Any) -> list[BillingSession]:
    arrival, late = traffic_events
    sessions, late_count = stream_run(arrival)
    assert late_count == len(late) - 1, "every scenario event is late (the duplicate is a duplicate)"
    return sessions


@pytest.fixture(scope="module")
def truth_sessions(traffic_events: Any) -> list[BillingSession]:
    """The reference truth: the events metered in time order (tests.support, not compute)."""
    arrival, _ = traffic_events
    return meter_run(in_time_order(arrival))


def bucket(s: BillingSession) -> int:
    return s.started_ms // QUARTER


@pytest.fixture
def filled(chdb_client: Client, database: str, stream: list[BillingSession]) -> str:
    write_stream(chdb_client, database, stream)
    return database


def in_period(sessions: list[BillingSession], tz: str) -> dict[str, BillingSession]:
    day_of = DayOf(zone(tz))
    return {s.billing_session_id: s for s in sessions if FIRST.isoformat() <= day_of(s.started_ms) <= LAST.isoformat()}


def day_rows(sessions: list[BillingSession], tz: str) -> list[UsageRow]:
    book = UsageBook(zone(tz))
    book.add_all(list(in_period(sessions, tz).values()))
    return book.rows()


def run(client: Client, database: str, events: Path, tz: str = "UTC", *, repair: bool = False) -> Report:
    period = Period(FIRST, LAST, tz)
    store = DirectStore(client, database, "test chDB", owned=False)
    return reconcile(
        store,
        period,
        lambda: truth_from_archive(events, period, RulesConfig(), now_ms=NOW),
        repair=repair,
        who=WHO,
    )


def compute_csv(events: Path, tz: str) -> list[str]:
    """`metering compute`'s CSV lines for the period's days (header first), in the billing columns.

    Reconcile is about billing sessions: R11's agent columns, which compute also prints, come from
    agent subscriptions and transfers and are neither compared nor repaired by it.
    """
    result = CliRunner().invoke(main, ["compute", "--events", str(events), "--timezone", tz])
    assert result.exit_code == 0, result.output
    header, *rows = (",".join(line.split(",")[: len(USAGE_COLUMNS)]) for line in result.stdout.splitlines())
    return [header, *(r for r in rows if FIRST.isoformat() <= r.split(",")[2] <= LAST.isoformat())]


def usage_csv(client: Client, database: str, tz: str) -> list[str]:
    rows = usage(client, database, start=FIRST, end=LAST, apps=[], account=None, period="day", tz=tz)
    return render(USAGE_COLUMNS, rows, "csv").splitlines()


def count(client: Client, database: str, table: str, where: str = "1") -> int:
    result = client.query(f"SELECT count() FROM {{db:Identifier}}.{table} WHERE {where}", parameters={"db": database})
    return int(result.result_rows[0][0])


# -- reporting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_reports_exactly_the_sessions_late_events_changed(
    chdb_client: Client,
    filled: str,
    events_file: Path,
    *,
    stream: list[BillingSession],
    truth_sessions: list[BillingSession],
    tz: str,
) -> None:
    report = run(chdb_client, filled, events_file, tz)
    ours, theirs = in_period(truth_sessions, tz), in_period(stream, tz)
    moved = {sid for sid in ours.keys() & theirs.keys() if bucket(ours[sid]) != bucket(theirs[sid])}
    got = {(d.status, d.billing_session_id) for d in report.comparison.differences}
    assert got == {
        *(("missing", sid) for sid in ours.keys() - theirs.keys()),
        *(("extra", sid) for sid in theirs.keys() - ours.keys()),
        *(("moved", sid) for sid in moved),
    }
    assert len(moved) == 1, "scenario F moves one usage session to another bucket"
    assert report.comparison.truth_sessions == len(ours)
    assert report.comparison.clickhouse_sessions == len(theirs)
    # and per (account, app, day): what ClickHouse says, what the truth says, the difference
    assert report.days == compare_days(day_rows(truth_sessions, tz), day_rows(stream, tz))
    assert report.days, "late events changed the figures"
    assert report.exit_code == 1


def test_the_scenarios_by_name(
    chdb_client: Client,
    filled: str,
    events_file: Path,
    stream: list[BillingSession],
    truth_sessions: list[BillingSession],
) -> None:
    """What each late event did, as a billing engineer would explain it."""
    report = run(chdb_client, filled, events_file)
    name = {s.billing_session_id: s.conversation_id or s.alert_id for s in [*stream, *truth_sessions]}
    by_name: dict[str | None, set[str]] = {}
    for d in report.comparison.differences:
        by_name.setdefault(name[d.billing_session_id], set()).add(d.status)
    assert by_name == {
        "merge": {"missing", "extra"},  # k=1 of the merged session; the session after the gap
        "extend": {"missing"},
        "new": {"missing"},
        "sub-1": {"missing"},  # the late alert
        "test": {"extra"},
        "move": {"moved", "extra"},  # k=1 moved to 10:30; k=2 gone
        "call": {"missing"},
    }
    assert [(d.clickhouse, d.truth, d.difference) for d in report.days if d.day == "2026-11-02"] == [
        ((1, 1, 0, 0, 1), (2, 1, 1, 0, 1), (1, 0, 1, 0, 0))  # the late call: a conversation and a voice session
    ]


def test_equal_when_clickhouse_holds_the_truth(
    chdb_client: Client, database: str, events_file: Path, truth_sessions: list[BillingSession]
) -> None:
    write_stream(chdb_client, database, truth_sessions)
    report = run(chdb_client, database, events_file)
    assert report.comparison.differences == []
    assert report.days == []
    assert report.exit_code == 0


# -- repair ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_repair_makes_usage_equal_to_compute_line_for_line(
    chdb_client: Client, filled: str, events_file: Path, tz: str
) -> None:
    assert usage_csv(chdb_client, filled, tz) != compute_csv(events_file, tz)
    report = run(chdb_client, filled, events_file, tz, repair=True)
    assert report.repaired is not None
    assert report.repaired.inserted == len(report.comparison.inserts) > 0
    assert report.repaired.voided == len(report.comparison.voids) > 0
    assert report.repaired.days_after == []
    assert report.exit_code == 0
    assert usage_csv(chdb_client, filled, tz) == compute_csv(events_file, tz)
    again = run(chdb_client, filled, events_file, tz)
    assert again.comparison.differences == []
    assert again.days == []


def test_repair_twice_changes_nothing_the_second_time(chdb_client: Client, filled: str, events_file: Path) -> None:
    first = run(chdb_client, filled, events_file, repair=True)
    tables = ("billing_sessions", "session_voids", "usage_15m", "voids_15m")
    before = {t: count(chdb_client, filled, t) for t in tables}
    figures = usage_csv(chdb_client, filled, "UTC")
    second = run(chdb_client, filled, events_file, repair=True)
    assert second.repaired is not None
    assert (second.repaired.inserted, second.repaired.voided) == (0, 0)
    assert second.comparison.differences == []
    assert {t: count(chdb_client, filled, t) for t in tables} == before
    assert usage_csv(chdb_client, filled, "UTC") == figures
    assert first.repaired is not None
    assert [(r.run_id, r.inserted, r.voided) for r in reversed(runs(chdb_client, filled))] == [
        (first.repaired.run_id, first.repaired.inserted, first.repaired.voided),
        (second.repaired.run_id, 0, 0),
    ]


def test_days_outside_the_period_are_left_alone(
    chdb_client: Client, filled: str, events_file: Path, stream: list[BillingSession]
) -> None:
    def day3() -> list[UsageRow]:
        return usage(chdb_client, filled, start=date(2026, 11, 3), end=date(2026, 11, 4), apps=[], account=None,
                     period="day", tz="UTC")  # fmt: skip

    before = day3()
    run(chdb_client, filled, events_file, repair=True)
    assert day3() == before
    assert "alert-day3-late" not in {s.alert_id for s in stream}


def test_voids_subtract_exactly_once_and_replays_stay_voided(
    chdb_client: Client, filled: str, events_file: Path, stream: list[BillingSession]
) -> None:
    report = run(chdb_client, filled, events_file, repair=True)
    figures = usage_csv(chdb_client, filled, "UTC")
    void = next(v for v in report.comparison.voids if v.reason.startswith("extra"))
    # the same void again, from another run and under another token: subtracted once
    apply_batch(chdb_client, filled, RepairBatch(run=run_row("another-run"), token="another-token", voids=[void]))
    assert usage_csv(chdb_client, filled, "UTC") == figures
    # the stream replays everything it wrote, voided sessions included, under new tokens
    SessionStore(chdb_client, filled).insert([billing_session_record(s) for s in stream], "replay-after-a-crash")
    assert usage_csv(chdb_client, filled, "UTC") == figures
    assert run(chdb_client, filled, events_file).comparison.differences == []
    # the drill-down and dashboard queries leave it out too
    day = DayOf(zone("UTC"))(void.started_ms)
    of_day = named_query(chdb_client, filled, "sessions_of_day", tz="UTC", day=date.fromisoformat(day),
                         account=void.account_id, app=void.app_id, limit=100_000)  # fmt: skip
    assert of_day
    assert void.billing_session_id not in {row[0] for row in of_day}
    top = named_query(chdb_client, filled, "top_apps", tz="UTC", limit=1000, **{"from": FIRST, "to": LAST})
    wanted = usage(chdb_client, filled, start=FIRST, end=LAST, apps=[], account=None, period="month", tz="UTC")
    assert sorted((acc, app, billing, voice) for acc, app, billing, voice, _ in top) == sorted(
        (acc, app, billing, voice) for acc, app, _, _, _, voice, _, billing in wanted
    )
    by_channel = named_query(chdb_client, filled, "sessions_by_channel", tz="UTC", apps=[], account=None,
                             **{"from": FIRST, "to": LAST})  # fmt: skip
    kinds: dict[tuple[str, str, str], list[int]] = {}
    for day_, acc, app, _, kind, n in by_channel:
        kinds.setdefault((acc, app, str(day_)), [0, 0, 0])[("usage", "voice", "alert").index(kind)] += n
    daily = usage(chdb_client, filled, start=FIRST, end=LAST, apps=[], account=None, period="day", tz="UTC")
    assert sorted((*key, *n) for key, n in kinds.items()) == [(a, b, d, u, v, al) for a, b, d, _, u, v, al, _ in daily]


def run_row(run_id: str) -> ReconcileRun:
    return ReconcileRun(run_id=run_id, period_from=FIRST, period_to=LAST, timezone="UTC", source="test",
                        status="done", started_ms=NOW)  # fmt: skip


def test_the_audit_trail(chdb_client: Client, filled: str, events_file: Path) -> None:
    report = run(chdb_client, filled, events_file, repair=True)
    assert report.repaired is not None
    run_id = report.repaired.run_id
    (row,) = runs(chdb_client, filled)
    assert row.run_id == run_id
    assert row.status == "done"
    assert (row.period_from, row.period_to, row.timezone) == (FIRST, LAST, "UTC")
    assert row.source == f"archive {events_file}"
    assert (row.os_user, row.host) == ("tester", "test-host")
    assert row.missing == len(report.comparison.inserts) == row.inserted
    assert row.extra == len(report.comparison.voids) == row.voided
    assert row.finished_ms is not None
    assert row.finished_ms >= row.started_ms
    where = f"reconcile_run_id = '{run_id}'"
    assert count(chdb_client, filled, "billing_sessions", where) == row.inserted
    assert count(chdb_client, filled, "session_voids", where) == row.voided
    assert count(chdb_client, filled, "billing_sessions", "reconcile_run_id IS NULL") > 0  # the stream's


def test_a_failed_repair_is_recorded_as_failed(chdb_client: Client, filled: str, events_file: Path) -> None:
    class Failing(DirectStore):
        def apply(self, batch: RepairBatch) -> Any:
            if batch.voids:
                raise RuntimeError("ClickHouse went away")
            return super().apply(batch)

    period = Period(FIRST, LAST, "UTC")

    def truth() -> Truth:
        return truth_from_archive(events_file, period, RulesConfig(), now_ms=NOW)

    with pytest.raises(RuntimeError, match="went away"):
        reconcile(Failing(chdb_client, filled, "test"), period, truth, repair=True, who=WHO)
    (row,) = runs(chdb_client, filled)
    assert (row.status, row.voided, row.detail) == ("failed", 0, "ClickHouse went away")
    assert row.inserted > 0
    # running it again finishes the job
    assert run(chdb_client, filled, events_file, repair=True).exit_code == 0


# -- what is left alone ------------------------------------------------------------------------------------


def test_conversations_still_going_on_are_neither_inserted_nor_voided(
    chdb_client: Client, database: str, tmp_path: Path
) -> None:
    going_on = Conversation(conversation_id="going-on").user(0).bot(10)
    done = Conversation(conversation_id="done").user(0).bot(1)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(traffic.encode(e) + b"\n" for e in [*going_on.events, *done.events]))
    # ClickHouse already holds a session of the open conversation (its stream clock went further)
    write_stream(chdb_client, database, meter_run(going_on.events))
    period = Period(FIRST, FIRST, "UTC")
    report = reconcile(
        DirectStore(chdb_client, database, "test", owned=False),
        period,
        lambda: truth_from_archive(events, period, RulesConfig(), now_ms=T0 + 20 * MINUTE),
        repair=False,
    )
    assert [d.status for d in report.comparison.differences] == ["missing"]  # "done" only
    assert len(report.truth.unfinished) == 1
    assert report.comparison.unfinished == 1


def test_sessions_that_may_depend_on_deleted_messages_are_left_alone() -> None:
    """Retention deleted messages received before ``complete_from``: nothing near it is voided or inserted.

    The period spans both days so that ``far`` (the second day) is compared: ids only in the
    margin days are another period's business and never voided either.
    """
    period = Period(FIRST, LAST, "UTC")

    def stored(sid: str, started: int, kind: str = "usage") -> StoredSession:
        return StoredSession(sid, "acme", "bot", kind, started, None if kind == "alert" else f"cs-{sid}", 0,
                             None if kind == "alert" else started, False)  # fmt: skip

    truth = Truth(source="topics", sessions=[], unfinished=[], rows=[], complete_from_ms=T0 - DAY - HOUR,
                  reach_ms=DAY)  # fmt: skip
    near, far = stored("near", T0 + 10 * HOUR), stored("far", T0 + DAY + 2 * HOUR)
    alert_near, alert_far = stored("a-near", T0 - 2 * HOUR, "alert"), stored("a-far", T0 + 10 * HOUR, "alert")
    comparison = compare(truth, [near, far, alert_near, alert_far], period)
    assert {v.billing_session_id for v in comparison.voids} == {"far", "a-far"}
    assert comparison.unverifiable == 2


def test_topic_messages_are_filtered_as_the_workers_filter_them() -> None:
    settings = Settings(topics=Topics(), partitions=6)
    out = io.BytesIO()
    dump = TopicDump()
    events = _Filter(settings, out, dump)
    turn = Conversation(conversation_id="c-9").user(0).events[0]
    good = traffic.encode(turn)
    right = partition_of(b"c-9", 6)
    events.take(good, "conversation-turns", right, NOW)
    events.take(json.dumps(turn, indent=1).encode(), "conversation-turns", right, NOW)  # newlines inside
    events.take(good, "conversation-turns", (right + 1) % 6, NOW)  # misrouted
    events.take(good, "alerts-delivered", partition_of(b"support-bot", 6), NOW)  # wrong topic
    events.take(good, "conversation-turns", right, T0 - 2 * DAY)  # 48 h ahead of its receipt
    events.take(b"{not json", "conversation-turns", right, NOW)
    plan = {
        "type": "plan_changed", "event_id": "p1", "occurred_at": format_ms(T0), "account_id": "acme",
        "app_id": "support-bot", "plan": "pro", "price_per_usage_session": "0.10", "price_per_alert_session": "0.01",
        "price_per_voice_session": "0.20", "idle_timeout_minutes": 30,
    }  # fmt: skip
    events.take(json.dumps(plan).encode(), "billing-plans", 0, NOW)
    events.take(good, "billing-plans", 0, NOW)  # not a plan: the plan feed ignores it
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 == dump.written
    assert [json.loads(line)["event_id"] for line in lines] == [turn["event_id"], turn["event_id"], "p1"]
    assert dict(dump.rejected) == {"misrouted": 1, "wrong_topic": 1, "out_of_range": 1, "not_json": 1}
    assert dump.plan_timeouts == [30 * MINUTE]


# -- the command --------------------------------------------------------------------------------------------


def settings_for(tmp_path: Path, chdb_path: Path, database: str) -> Settings:
    return Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{chdb_path}", clickhouse_database=database)


def command(settings: Settings, events: Path | None, **options: Any) -> int:
    args: dict[str, Any] = {"start": FIRST, "end": LAST, "tz": None, "archive": events, "repair": False,
                            "fmt": "csv", **options}  # fmt: skip
    return reconcile_command(settings, **args)


def test_command_exit_codes_and_csv(
    filled: str, events_file: Path, tmp_path: Path, chdb_path: Path, *,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings = settings_for(tmp_path, chdb_path, filled)
    assert command(settings, events_file) == 1
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header == "account_id,app_id,day,source," + ",".join(USAGE_COLUMNS[3:])
    assert {r.split(",")[3] for r in rows} == {"clickhouse", "truth", "difference"}
    assert "missing" in err
    assert "run again with --repair" in err
    assert command(settings, events_file, repair=True) == 0
    assert "usage now equals the truth" in capsys.readouterr().err
    assert command(settings, events_file) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [header]


def test_command_json_and_table(
    filled: str, events_file: Path, tmp_path: Path, chdb_path: Path, *,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings = settings_for(tmp_path, chdb_path, filled)
    assert command(settings, events_file, fmt="json", tz="Asia/Kolkata") == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"]["period"] == {"from": "2026-11-01", "to": "2026-11-02", "timezone": "Asia/Kolkata"}
    assert payload["summary"]["missing"] > 0
    assert payload["summary"]["exit_code"] == 1
    assert {s["status"] for s in payload["sessions"]} == {"missing", "extra", "moved"}
    assert all(s["reason"] for s in payload["sessions"])
    assert {d["source"] for d in payload["days"]} == {"clickhouse", "truth", "difference"}
    assert command(settings, events_file, fmt="table") == 1
    out = capsys.readouterr().out
    assert "Usage differences" in out
    assert "Session differences" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start": date(2026, 11, 3), "end": date(2026, 11, 1)}, "after --to"),
        ({"tz": "Mars/Olympus"}, "IANA"),
        ({"archive": Path("/nonexistent/events.jsonl")}, "cannot read /nonexistent/events.jsonl"),
    ],
)
def test_command_errors_exit_2_and_say_what_to_do(
    tmp_path: Path, chdb_path: Path, database: str, events_file: Path, *, options: dict[str, Any], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings = settings_for(tmp_path, chdb_path, database)
    assert command(settings, events_file, **options) == 2
    assert message in capsys.readouterr().err


def test_the_cli_command_passes_its_options_and_exit_status(
    filled: str, events_file: Path, tmp_path: Path, chdb_path: Path
) -> None:
    """`metering reconcile` as typed: options reach the command, its exit status is the process's."""
    env = settings_for(tmp_path, chdb_path, filled).to_env()
    days = ["--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    runner = CliRunner()
    found = runner.invoke(main, ["reconcile", *days, "--archive", str(events_file), "--format", "csv"], env=env)
    assert found.exit_code == 1, found.stderr
    assert found.stdout.splitlines()[0].startswith("account_id,app_id,day,source,")
    assert "run again with --repair" in found.stderr
    repaired = runner.invoke(main, ["reconcile", *days, "--archive", str(events_file), "--repair",
                                    "--timezone", "UTC", "--format", "json"], env=env)  # fmt: skip
    assert repaired.exit_code == 0, repaired.stderr
    assert json.loads(repaired.stdout)["summary"]["repair"]["days_different_after"] == 0
    wrong = runner.invoke(main, ["reconcile", "--from", "2026-11-03", "--to", "2026-11-01"], env=env)
    assert wrong.exit_code == 2
    assert "after --to" in wrong.stderr
    assert runner.invoke(main, ["reconcile", "--from", "2026-11-01"], env=env).exit_code == 2  # --to is required


def test_a_database_without_migration_004_says_to_migrate(
    tmp_path: Path, chdb_path: Path, events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path, chdb_path, f"t_never_{uuid.uuid4().hex[:8]}")
    assert command(settings, events_file) == 2
    assert "run the migrations" in capsys.readouterr().err


# -- through the running service ------------------------------------------------------------------------


@pytest.fixture
def service(chdb_client: Client, filled: str, tmp_path: Path, chdb_path: Path) -> Iterator[tuple[Settings, str]]:
    """This process plays the running store: its API, discovery file and token file."""
    settings = settings_for(tmp_path, chdb_path, filled)
    with serve_console(chdb_client, filled, operator_token="s3cret") as url:
        endpoints = StoreEndpoints(os.getpid(), url, "http://127.0.0.1:1/metrics", settings.clickhouse_url, filled)
        discovery_file(settings).parent.mkdir(parents=True, exist_ok=True)
        discovery_file(settings).write_text(json.dumps(asdict(endpoints)))
        token_file(settings).write_text("s3cret\n")
        yield settings, url


def test_reconcile_goes_through_the_running_service(
    service: tuple[Settings, str], chdb_client: Client, filled: str, events_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings, url = service
    store = open_store(settings)
    assert isinstance(store, ApiStore)
    direct = snapshot(chdb_client, filled, start=FIRST, end=LAST, tz="UTC")
    assert store.snapshot(Period(FIRST, LAST, "UTC")) == direct
    assert command(settings, events_file, repair=True) == 0
    assert "the running metering service at " + url in capsys.readouterr().err
    assert usage_csv(chdb_client, filled, "UTC") == compute_csv(events_file, "UTC")
    (row,) = runs(chdb_client, filled)
    assert row.status == "done"
    assert row.inserted > 0


def test_the_reconcile_endpoints_need_the_token_and_a_valid_body(service: tuple[Settings, str]) -> None:
    _, url = service
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(path: str, body: bytes, token: str | None = "s3cret") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    period = b'{"from": "2026-11-01", "to": "2026-11-02", "timezone": "UTC"}'
    assert post("/reconcile/sessions", period)[0] == 200
    assert post("/reconcile/sessions", period, token=None)[0] == 401
    assert post("/reconcile/sessions", period, token="guess")[0] == 401
    status, body = post("/reconcile/sessions", b'{"from": "2026-11-02", "to": "2026-11-01"}')
    assert status == 400
    assert "after the last day" in body["error"]
    status, body = post("/reconcile/sessions", b'{"from": "yesterday"}')
    assert status == 400
    assert "from" in body["error"]
    status, body = post("/reconcile/repair", b'{"run": {}, "voids": []}')
    assert status == 400
    assert "run_id" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(url + "/reconcile/sessions", timeout=10)
    assert info.value.code == 405


def test_without_a_token_the_endpoints_are_disabled(chdb_client: Client, database: str) -> None:
    with serve_console(chdb_client, database, operator_token=None) as url:
        request = urllib.request.Request(f"{url}/reconcile/sessions", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
        assert info.value.code == 403


# -- the edges of the period --------------------------------------------------------------------------------


@pytest.mark.parametrize(("day", "other"), [(FIRST, LAST), (LAST, FIRST)])
def test_a_session_moved_across_midnight_is_moved_not_counted_twice(
    chdb_client: Client, database: str, tmp_path: Path, day: date, other: date
) -> None:
    """A late transfer (23:42-23:57) moves usage session 1 from 23:55 on the 1st to 00:10 on the 2nd.

    The stream billed 23:40, 23:55 and 00:10 (40 minutes of bot time); the truth 23:40 and
    00:10 (25). Reconciling either day alone must not count session 1 on both days.
    """
    start = T0 + 13 * HOUR + 40 * MINUTE  # 2026-11-01T23:40Z
    on_time = Conversation(conversation_id="midnight", start=start).user(0).bot(8).user(16).bot(24).user(32).bot(40)
    late = Conversation(conversation_id="midnight", start=start).transfer("started", 2).transfer("ended", 17)
    arrival = [*on_time.events, alert(3 * 24 * 60, event_id="pushes-the-clock"), *late.events]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(traffic.encode(e) + b"\n" for e in arrival))
    stream, late_count = stream_run(arrival)
    assert late_count == 2
    write_stream(chdb_client, database, stream)
    truth = {
        "2026-11-01": ("acme", "support-bot", "2026-11-01", 1, 1),  # the conversation and session 0
        "2026-11-02": ("acme", "support-bot", "2026-11-02", 0, 1),  # session 1
    }

    def reconcile_day(d: date) -> Report:
        period = Period(d, d, "UTC")
        return reconcile(
            DirectStore(chdb_client, database, "test", owned=False),
            period,
            lambda: truth_from_archive(events, period, RulesConfig(), now_ms=NOW),
            repair=True,
            who=WHO,
        )

    def billed() -> dict[str, tuple[str | int, ...]]:
        rows = usage(chdb_client, database, start=date(2026, 11, 1), end=date(2026, 11, 2), apps=[], account=None,
                     period="day", tz="UTC")  # fmt: skip
        return {str(row[2]): row[:5] for row in rows}

    report = reconcile_day(day)
    assert "moved" in {d.status for d in report.comparison.differences}
    assert report.exit_code == 0
    assert billed()[day.isoformat()] == truth[day.isoformat()]
    reconcile_day(other)
    assert billed() == truth
