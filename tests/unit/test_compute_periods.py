"""`metering compute --by hour|week|month` and `--sessions`: the offline oracle of the console's usage and export.

The period rows are checked against the day rows (a week, a month is the sum of its days; a day
the sum of its hours) and against a reference written here from the events (labels by date
arithmetic, active agents as sets, seats by brute force), in zones with half-hour and
quarter-hour offsets and across clock changes.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cli.main import main
from consumers.reports.sessions import SESSION_COLUMNS
from pipeline.contract.decode import to_ms
from pipeline.contract.events import format_ms
from pipeline.rules.attribution import period_label, period_labels
from tests.support import T0, Conversation, alert, in_time_order

DAY_MS = 86_400_000
ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Europe/Paris", "Australia/Lord_Howe")
COUNTS = slice(3, 8)


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, ["compute", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result


def table(out: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(out)))


def rows(out: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(out)))[1:]


def seats_event(t: int, app_id: str, account_id: str, agents: int, n: int) -> dict[str, Any]:
    return {
        "type": "agents_subscribed",
        "event_id": f"seats-{n}",
        "occurred_at": format_ms(t),
        "account_id": account_id,
        "app_id": app_id,
        "agents": agents,
    }


def month_of_traffic(seed: int = 11) -> list[dict[str, Any]]:
    """Six weeks of conversations, transfers, alerts and seat changes over three apps, around both
    2026 clock changes of Europe (25 Oct) and North America (1 Nov)."""
    rnd = random.Random(seed)
    apps = [("acme", "support-bot"), ("acme", "sales-bot"), ("globex", "helpdesk")]
    start = T0 - 12 * DAY_MS
    events: list[dict[str, Any]] = []
    for n in range(500):
        account_id, app_id = rnd.choice(apps)
        conv = Conversation(
            conversation_id=f"c-{n}",
            app_id=app_id,
            account_id=account_id,
            channel=rnd.choice(("web", "web", "whatsapp", "voice")),
            start=start + rnd.randrange(42 * DAY_MS),
        ).user(0)
        t = 0.0
        for _ in range(rnd.randrange(1, 8)):
            t += rnd.choice((0.5, 3, 9, 14, 21))
            if rnd.random() < 0.15:
                conv.transfer("started", t, agent_id=f"agent-{rnd.randrange(5)}")
                t += rnd.choice((2, 10, 30))
                conv.agent(t).transfer("ended", t + 0.1)
            else:
                conv.bot(t).user(t + 0.2)
        events += conv.events
    for _ in range(120):
        account_id, app_id = rnd.choice(apps)
        events.append(
            alert(0, app_id=app_id, account_id=account_id, occurred_at=format_ms(start + rnd.randrange(42 * DAY_MS)))
        )
    for n in range(30):
        account_id, app_id = rnd.choice(apps)
        events.append(seats_event(start + rnd.randrange(42 * DAY_MS), app_id, account_id, rnd.randrange(1, 40), n))
    return in_time_order(events)


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("periods") / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in month_of_traffic()))
    return path


def local_date(ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).date()


def reference_label(day: date, by: str) -> str:
    if by == "week":
        return (day - timedelta(days=day.isoweekday() - 1)).isoformat()
    if by == "month":
        return f"{day.year:04d}-{day.month:02d}-01"
    return day.isoformat()


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("by", ["week", "month"])
def test_a_week_or_month_is_the_sum_of_its_days(traffic_file: Path, tz: str, by: str) -> None:
    days = rows(run("--events", str(traffic_file), "--timezone", tz).stdout)
    expected: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0] * 5)
    for row in days:
        key = (row[0], row[1], reference_label(date.fromisoformat(row[2]), by))
        expected[key] = [a + int(b) for a, b in zip(expected[key], row[COUNTS], strict=True)]
    got = rows(run("--events", str(traffic_file), "--timezone", tz, "--by", by).stdout)
    assert [(r[0], r[1], r[2]) for r in got] == sorted(expected)
    assert {(r[0], r[1], r[2]): [int(v) for v in r[COUNTS]] for r in got} == expected
    assert len(got) > 6


@pytest.mark.parametrize("tz", ZONES)
def test_a_day_is_the_sum_of_its_hours(traffic_file: Path, tz: str) -> None:
    days = rows(run("--events", str(traffic_file), "--timezone", tz).stdout)
    hours = rows(run("--events", str(traffic_file), "--timezone", tz, "--by", "hour").stdout)
    summed: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0] * 5)
    for row in hours:
        key = (row[0], row[1], row[2][:10])
        summed[key] = [a + int(b) for a, b in zip(summed[key], row[COUNTS], strict=True)]
    assert summed == {(r[0], r[1], r[2]): [int(v) for v in r[COUNTS]] for r in days}
    # Hours of an app come in time order, each labelled with the offset in force at its start.
    for (_acc, _app), group in _by_app(hours).items():
        starts = [datetime.fromisoformat(r[2]) for r in group]
        assert starts == sorted(starts)
        for start in starts:
            assert start.utcoffset() == start.astimezone(ZoneInfo(tz)).utcoffset()
            assert (start.minute, start.second) == (0, 0)
    # R11 for hours: the seats of the hour's day.
    day_agents = {(r[0], r[1], r[2]): r[8] for r in days}
    assert all(r[8] == day_agents[(r[0], r[1], r[2][:10])] for r in hours)


def _by_app(table_rows: list[list[str]]) -> dict[tuple[str, str], list[list[str]]]:
    out: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for row in table_rows:
        out[(row[0], row[1])].append(row)
    return out


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York"])
@pytest.mark.parametrize("by", ["hour", "day", "week", "month"])
def test_agents_and_active_agents_per_period(traffic_file: Path, tz: str, by: str) -> None:
    """agents: the highest seat count in force at any instant of the period (an hour: of its day);
    active_agents: distinct agents of the transfers started in the period."""
    zone = ZoneInfo(tz)
    events = [json.loads(line) for line in traffic_file.read_text().splitlines()]
    active: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    seats: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        t = to_ms(datetime.fromisoformat(e["occurred_at"]))
        if e["type"] == "agent_transfer" and e["action"] == "started":
            active[(e["account_id"], e["app_id"], period_label(t, zone, by))].add(e["agent_id"])  # type: ignore[arg-type]
        if e["type"] == "agents_subscribed":
            seats[e["app_id"]].append((t, e["agents"]))

    def highest(app_id: str, label: str) -> int:
        first = date.fromisoformat(label[:10])
        last = first if by in ("hour", "day") else date.fromisoformat(reference_last(first, by))
        start = int(datetime.combine(first, datetime.min.time(), tzinfo=zone).timestamp() * 1000)
        end = int(datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=zone).timestamp() * 1000)
        changes = sorted(seats[app_id])
        before = [n for t, n in changes if t <= start]
        return max([before[-1] if before else 0] + [n for t, n in changes if start < t < end])

    got = table(run("--events", str(traffic_file), "--timezone", tz, "--by", by).stdout)
    column = "day" if by == "day" else "period"
    assert got
    for row in got:
        key = (row["account_id"], row["app_id"], row[column])
        assert int(row["active_agents"]) == len(active.get(key, ())), key
        assert int(row["agents"]) == highest(row["app_id"], row[column]), key
    assert any(int(r["agents"]) for r in got)
    assert any(int(r["active_agents"]) > 1 for r in got)


def reference_last(first: date, by: str) -> str:
    if by == "week":
        return (first + timedelta(days=6)).isoformat()
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (following - timedelta(days=1)).isoformat()


def test_hour_labels_carry_the_zone_offset(tmp_path: Path) -> None:
    """Half- and quarter-hour zones start their hours off the UTC hour; the hour repeated when clocks
    go back is two periods, in time order whatever the sign of the offset."""
    fall_back_ny = to_ms(datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # 01:30 EDT, then 01:30 EST an hour later
    fall_back_paris = to_ms(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 CEST, then 02:30 CET
    events = [
        *Conversation(conversation_id="a", start=T0).user(0).events,
        *Conversation(conversation_id="ny1", start=fall_back_ny).user(0).events,
        *Conversation(conversation_id="ny2", start=fall_back_ny + 3_600_000).user(0).events,
        *Conversation(conversation_id="p1", start=fall_back_paris).user(0).events,
        *Conversation(conversation_id="p2", start=fall_back_paris + 3_600_000).user(0).events,
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in in_time_order(events)))

    def hours(tz: str) -> list[str]:
        return [r[2] for r in rows(run("--events", str(path), "--by", "hour", "--timezone", tz).stdout)]

    assert "2026-11-01T15:00:00+05:30" in hours("Asia/Kolkata")  # 10:00Z is 15:30 IST
    assert "2026-11-01T15:00:00+05:45" in hours("Asia/Kathmandu")  # 10:00Z is 15:45 NPT
    assert hours("UTC")[-1] == "2026-11-01T10:00:00+00:00"
    ny = hours("America/New_York")
    assert ny[ny.index("2026-11-01T01:00:00-04:00") + 1] == "2026-11-01T01:00:00-05:00"
    paris = hours("Europe/Paris")
    assert paris[:2] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]


def test_range_cuts_periods_and_zero_fill_gives_every_period(tmp_path: Path) -> None:
    """``--from``/``--to`` count the local days inside only (a week they cut keeps its Monday's
    label); ``--zero-fill`` adds every period of the range with zeros and the seats carried."""
    wednesday = to_ms(datetime(2026, 11, 4, 9, 0, tzinfo=UTC))
    events = [
        seats_event(wednesday - 10 * DAY_MS, "support-bot", "acme", 7, 1),
        *Conversation(conversation_id="mon", start=wednesday - 2 * DAY_MS).user(0).events,
        *Conversation(conversation_id="wed", start=wednesday).user(0).transfer("started", 1, agent_id="ann").events,
        *Conversation(conversation_id="thu", start=wednesday + DAY_MS)
        .user(0)
        .transfer("started", 1, agent_id="bob")
        .events,
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in in_time_order(events)))
    whole = rows(run("--events", str(path), "--by", "week").stdout)
    assert whole == [["acme", "support-bot", "2026-11-02", "3", "3", "0", "0", "3", "7", "2"]]
    cut = rows(run("--events", str(path), "--by", "week", "--from", "2026-11-04", "--to", "2026-11-04").stdout)
    assert cut == [["acme", "support-bot", "2026-11-02", "1", "1", "0", "0", "1", "7", "1"]]
    filled = rows(run("--events", str(path), "--from", "2026-10-30", "--to", "2026-11-05", "--zero-fill").stdout)
    assert [r[2] for r in filled] == [
        f"2026-{d}" for d in ("10-30", "10-31", "11-01", "11-02", "11-03", "11-04", "11-05")
    ]
    assert filled[0] == ["acme", "support-bot", "2026-10-30", "0", "0", "0", "0", "0", "7", "0"]
    assert [r[7] for r in filled] == ["0", "0", "0", "1", "0", "1", "1"]
    hours = rows(
        run(
            "--events",
            str(path),
            "--by",
            "hour",
            "--from",
            "2026-11-04",
            "--to",
            "2026-11-04",
            "--zero-fill",
            "--timezone",
            "Asia/Kolkata",
        ).stdout
    )
    assert len(hours) == 24
    assert hours[0][2] == "2026-11-04T00:00:00+05:30"
    assert [r[2] for r in hours] == period_labels(
        ZoneInfo("Asia/Kolkata"), "hour", date(2026, 11, 4), date(2026, 11, 4)
    )


def test_zero_fill_needs_a_range(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(Conversation().user(0).events[0]) + "\n")
    result = CliRunner().invoke(main, ["compute", "--events", str(path), "--zero-fill"])
    assert result.exit_code == 2
    assert "--zero-fill" in result.stderr
    result = CliRunner().invoke(main, ["compute", "--events", str(path), "--from", "2026-11-02", "--to", "2026-11-01"])
    assert result.exit_code == 2
    assert "--from" in result.stderr


def test_sessions_export_columns_order_and_content(traffic_file: Path) -> None:
    out = run("--events", str(traffic_file), "--sessions").stdout
    header, *body = list(csv.reader(io.StringIO(out)))
    assert header == list(SESSION_COLUMNS)
    assert ",".join(header) == (
        "app_id,channel,user_id,billing_session_type,conversation_session_id,conversation_started_at,"
        "conversation_ended_at,billing_session_id,billing_session_started_at,billing_session_ended_at,"
        "bot_ms,agent_ms,alert_id"
    )
    sessions = [dict(zip(header, row, strict=True)) for row in body]
    # One row per billing session the usage table counts: usage + voice + alert.
    usage = table(run("--events", str(traffic_file)).stdout)
    kinds = {k: sum(int(r[f"{k}_sessions"]) for r in usage) for k in ("usage", "voice", "alert")}
    assert {k: sum(s["billing_session_type"] == k for s in sessions) for k in kinds} == kinds
    assert len({s["billing_session_id"] for s in sessions}) == len(sessions)
    # Sorted by start, then id; times RFC 3339 UTC with milliseconds.
    order = [(s["billing_session_started_at"], s["billing_session_id"]) for s in sessions]
    assert order == sorted(order)
    for s in sessions:
        for name in ("billing_session_started_at", "billing_session_ended_at"):
            assert datetime.fromisoformat(s[name]).utcoffset() == timedelta(0)
            assert len(s[name]) == len("2026-11-01T10:00:00.000Z")
        if s["billing_session_type"] == "alert":
            assert s["alert_id"]
            assert s["conversation_session_id"] == s["conversation_started_at"] == ""
            assert s["billing_session_started_at"] == s["billing_session_ended_at"]
        else:
            assert s["alert_id"] == ""
            assert s["conversation_started_at"] <= s["billing_session_started_at"] < s["conversation_ended_at"] or (
                s["conversation_started_at"] == s["conversation_ended_at"]
            )
            assert s["billing_session_ended_at"] <= s["conversation_ended_at"]
            assert int(s["bot_ms"]) + int(s["agent_ms"]) == _ms(s["conversation_ended_at"]) - _ms(
                s["conversation_started_at"]
            )


def _ms(text: str) -> int:
    return to_ms(datetime.fromisoformat(text))


def test_sessions_export_of_local_days_and_any_file_order(traffic_file: Path, tmp_path: Path) -> None:
    """``--from``/``--to`` keep the sessions that start on those local days, as the usage table counts them;
    a shuffled file (metered again in time order) exports the same rows."""
    args = ("--timezone", "Asia/Kolkata", "--from", "2026-10-28", "--to", "2026-11-03")
    kept = rows(run("--events", str(traffic_file), "--sessions", *args).stdout)
    zone = ZoneInfo("Asia/Kolkata")
    assert kept
    assert all("2026-10-28" <= local_date(_ms(r[8]), zone).isoformat() <= "2026-11-03" for r in kept)
    counted = table(run("--events", str(traffic_file), "--by", "month", *args).stdout)
    assert len(kept) == sum(
        int(r["usage_sessions"]) + int(r["voice_sessions"]) + int(r["alert_sessions"]) for r in counted
    )
    lines = traffic_file.read_text().splitlines()
    random.Random(3).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")
    result = run("--events", str(shuffled), "--sessions", *args)
    assert "not in time order" in result.stderr
    assert rows(result.stdout) == kept


def test_sessions_export_formats(tmp_path: Path) -> None:
    events = [*Conversation(channel="voice").user(0).bot(10).user(20).events, alert(3)]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in in_time_order(events)))
    got = json.loads(run("--events", str(path), "--sessions", "--format", "json").stdout)
    assert [s["billing_session_type"] for s in got] == ["voice", "alert", "voice"]
    assert got[1] == {
        "app_id": "support-bot",
        "channel": None,
        "user_id": "u-1",
        "billing_session_type": "alert",
        "conversation_session_id": None,
        "conversation_started_at": None,
        "conversation_ended_at": None,
        "billing_session_id": got[1]["billing_session_id"],
        "billing_session_started_at": "2026-11-01T10:03:00.000Z",
        "billing_session_ended_at": "2026-11-01T10:03:00.000Z",
        "bot_ms": None,
        "agent_ms": None,
        "alert_id": "sub-1",
    }
    assert got[0]["conversation_started_at"] == "2026-11-01T10:00:00.000Z"
    assert got[0]["conversation_ended_at"] == got[2]["billing_session_ended_at"] == "2026-11-01T10:20:00.000Z"
    assert "sub-1" in run("--events", str(path), "--sessions", "--format", "table").stdout


def test_csv_neutralises_formulas_and_keeps_numbers_json_keeps_the_text() -> None:
    """CSV (compute, usage, the sessions export) is opened in spreadsheets: text that would run as a formula gets
    a leading ' (OWASP); numbers, and text that is a plain decimal number (a balance of -5.00), stay as they are."""
    from pipeline.infra.report import render, spreadsheet_safe  # noqa: PLC0415

    cells = ["=1+1", "+33 1 23", "-1+2", "@SUM(A1)", "\tx", "\rx", "ok", "-5.00", "+7", "", None, -3, 2.5]
    assert [spreadsheet_safe(c) for c in cells] == [
        "'=1+1", "'+33 1 23", "'-1+2", "'@SUM(A1)", "'\tx", "'\rx", "ok", "-5.00", "+7", "", None, -3, 2.5,
    ]  # fmt: skip
    csv_text = render(("a", "b", "c"), [("=cmd|' /C calc'!A0", -3, "-5.00")], "csv")
    assert csv_text == "a,b,c\n'=cmd|' /C calc'!A0,-3,-5.00\n"
    assert json.loads(render(("a",), [("=1+1",)], "json")) == [{"a": "=1+1"}]
