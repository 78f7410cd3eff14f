"""R11's ``agents`` and ``active_agents`` columns: `metering compute` and `metering usage` agree.

`compute` reads a file of events (real CLI); `usage` reads what the sinks would have written from
the same events into the embedded ClickHouse (real chDB: the billing sessions through
``SessionStore``, the plan events and transfers through ``PlanStore``). The CSV by day must be
byte for byte the same, in UTC and in a zone where the days fall differently.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from consumers.clickhouse import Client, SessionStore
from consumers.clickhouse.plans import PlanStore
from consumers.reports.usage import usage_query, usage_report
from pipeline.contract.events import format_ms
from pipeline.rules.config import MINUTE
from pipeline.stream.records import billing_session_record
from tests.support import T0, Conversation, decode, meter_run

DAY = 24 * 60 * MINUTE


def seats(n: int, t: int, event_id: str) -> dict[str, Any]:
    return {
        "type": "agents_subscribed",
        "event_id": event_id,
        "occurred_at": format_ms(t),
        "account_id": "acme",
        "app_id": "support-bot",
        "agents": n,
    }


def events() -> list[dict[str, Any]]:
    """Day 1 (2026-11-01, from 10:00 UTC): two conversations handed to ana and bo; day 2: ana again;
    day 4: a conversation without transfer. Seats: 3 from before day 1, 8 then 5 on day 2."""
    day1 = Conversation("c-1").user(0).transfer("started", 1, "ana").agent(2).transfer("ended", 3).events
    day1 += Conversation("c-2").user(30).transfer("started", 31, "bo").transfer("started", 32, "ana").events
    day1 += Conversation("c-3").user(40).transfer("started", 41, "cy").transfer("ended", 42).events
    day1 += [dict(day1[1])]  # ana's transfer delivered twice
    late = Conversation("c-4", start=T0 + 13 * 60 * MINUTE).user(0).transfer("started", 1, "dee").events  # 23:00
    day2 = Conversation("c-5", start=T0 + DAY).user(0).transfer("started", 1, "ana").events
    day4 = Conversation("c-6", start=T0 + 3 * DAY).user(0).events
    plans = [
        seats(3, T0 - 5 * DAY, "s-1"),
        seats(8, T0 + DAY + 60 * MINUTE, "s-2"),
        seats(5, T0 + DAY + 120 * MINUTE, "s-3"),
    ]
    return [*plans, *day1, *late, *day2, *day4]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events()))
    return path


def compute(events_file: Path, tz: str) -> str:
    result = CliRunner().invoke(main, ["compute", "--events", str(events_file), "--timezone", tz])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_compute_prints_seats_carried_forward_and_distinct_active_agents(events_file: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(compute(events_file, "UTC"))))
    assert [(r["day"], r["conversations"], r["agents"], r["active_agents"]) for r in rows] == [
        ("2026-11-01", "4", "3", "4"),  # ana, bo, cy, dee: ana's second transfer and its copy add nothing
        ("2026-11-02", "1", "8", "1"),  # 8 then 5 the same day: the highest
        ("2026-11-04", "1", "5", "0"),  # carried forward; day 3 has no usage, so no row
    ]
    header = compute(events_file, "UTC").splitlines()[0]
    assert header == (
        "account_id,app_id,day,conversations,usage_sessions,voice_sessions,alert_sessions,billing_sessions,"
        "agents,active_agents"
    )


def test_a_zone_moves_transfers_and_seat_changes_to_their_local_day(events_file: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(compute(events_file, "Asia/Tokyo"))))  # UTC+9
    assert [(r["day"], r["agents"], r["active_agents"]) for r in rows] == [
        ("2026-11-01", "3", "3"),  # 10:00 UTC is 19:00: ana, bo, cy
        ("2026-11-02", "8", "2"),  # dee at 23:00 UTC is 08:00 on the 2nd; ana at 10:00 UTC the next day too
        ("2026-11-04", "5", "0"),
    ]


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
def test_usage_by_day_equals_compute_line_for_line(
    chdb_client: Client, database: str, events_file: Path, tz: str
) -> None:
    evs = events()
    sessions = meter_run(e for e in evs if e["type"] != "agents_subscribed")
    SessionStore(chdb_client, database).insert([billing_session_record(s) for s in sessions], "sessions:0:0-9")
    decoded: list[Any] = [decode(e)[1] for e in evs if e["type"] in ("agents_subscribed", "agent_transfer")]
    store = PlanStore(chdb_client, database)
    store.insert(decoded, "plans:0:0-99")
    store.insert(decoded[:4], "plans:0:100-103")  # a replay under another token changes nothing
    text = usage_report(chdb_client, database, usage_query(by="day", tz=tz, fmt="csv"))
    assert text == compute(events_file, tz)
