"""`metering compute` as `docs/interfaces.md` fixes it: columns, formats, zones, bad lines, exit codes."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cli.main import main
from devtools import traffic
from pipeline import compute as compute_module
from pipeline.rules.config import RulesConfig
from tests.support import T0, Conversation, alert, in_time_order

#: docs/interfaces.md fixes the first eight columns; R11's seats and active agents follow them.
HEADER = (
    "account_id,app_id,day,conversations,usage_sessions,voice_sessions,alert_sessions,billing_sessions"
    ",agents,active_agents"
)


def write(path: Path, events: list[dict[str, Any]], extra_lines: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps(ev).encode() for ev in events]
    for index, raw in sorted((extra_lines or {}).items()):
        lines.insert(index, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["compute", *args], catch_exceptions=False)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    events = [
        *Conversation(conversation_id="chat").user(0).bot(10).user(20).bot(31).events,
        *Conversation(conversation_id="call", channel="voice").user(1).bot(15).user(30).bot(45).user(47).events,
        alert(2),
        *Conversation(conversation_id="late-night", start=T0 + (8 * 60 + 29) * 60_000).user(0).events,
    ]
    return write(tmp_path / "events.jsonl", in_time_order(events))


def test_csv_columns_order_and_rows(sample: Path) -> None:
    result = run("--events", str(sample))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        HEADER,
        "acme,support-bot,2026-11-01,3,4,4,1,5,0,0",
    ]


def test_timezone_moves_sessions_to_the_local_day(sample: Path) -> None:
    result = run("--events", str(sample), "--timezone", "Asia/Kolkata")
    assert result.stdout.splitlines() == [
        HEADER,
        "acme,support-bot,2026-11-01,3,4,4,1,5,0,0",
    ]
    result = run("--events", str(sample), "--timezone", "Asia/Tokyo")  # 18:29 UTC is 03:29 the next day
    assert result.stdout.splitlines()[1:] == [
        "acme,support-bot,2026-11-01,2,3,4,1,4,0,0",
        "acme,support-bot,2026-11-02,1,1,0,0,1,0,0",
    ]
    result = run("--events", str(sample), "--timezone", "Pacific/Kiritimati")  # UTC+14
    assert result.stdout.splitlines()[1:] == ["acme,support-bot,2026-11-02,3,4,4,1,5,0,0"]


def test_idle_timeout_option(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", Conversation().user(0).user(20).events)
    assert run("--events", str(path)).stdout.splitlines()[1] == "acme,support-bot,2026-11-01,2,2,0,0,2,0,0"
    assert run("--events", str(path), "--idle-timeout", "30").stdout.splitlines()[1] == (
        "acme,support-bot,2026-11-01,1,2,0,0,2,0,0"
    )


def test_idle_timeout_outside_the_allowed_range_is_a_usage_error(sample: Path) -> None:
    result = run("--events", str(sample), "--idle-timeout", "4")
    assert result.exit_code == 2
    assert "--idle-timeout" in result.stderr


def test_unknown_zone_is_a_usage_error(sample: Path) -> None:
    result = run("--events", str(sample), "--timezone", "Mars/Olympus")
    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Olympus'" in result.stderr


def test_json_and_table_formats(sample: Path) -> None:
    rows = json.loads(run("--events", str(sample), "--format", "json").stdout)
    assert rows == [
        {
            "account_id": "acme",
            "app_id": "support-bot",
            "day": "2026-11-01",
            "conversations": 3,
            "usage_sessions": 4,
            "voice_sessions": 4,
            "alert_sessions": 1,
            "billing_sessions": 5,
            "agents": 0,
            "active_agents": 0,
        }
    ]
    table = run("--events", str(sample), "--format", "table").stdout
    assert "support-bot" in table
    assert "billing_sessions" in table


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    events = Conversation().user(0).bot(5).events
    path = write(
        tmp_path / "bad.jsonl",
        events,
        {
            1: b"this is not json",
            2: b'{"type":"conversation_turn","event_id":"x"}',
            3: b'{"type":"conversation_turn","event_id":' + b'"' + b"y" * 200 + b'"}',
            4: b"\xff\xfe\x00garbage",
            5: b"",
        },
    )
    result = run("--events", str(path))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == "acme,support-bot,2026-11-01,1,1,0,0,1,0,0"
    reported = [line.split(":")[1] for line in result.stderr.splitlines() if "skipped" in line]
    assert reported == ["2", "3", "4", "5"]
    assert "4 invalid" in result.stderr


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    missing = run("--events", str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr
    directory = run("--events", str(tmp_path))
    assert directory.exit_code == 2


def test_file_in_any_order_gives_the_same_result_as_sorted(tmp_path: Path) -> None:
    events = [traffic.encode(ev) for ev in traffic.events(T0, 3000, seed=3)]
    in_order = tmp_path / "sorted.jsonl"
    in_order.write_bytes(b"\n".join(events) + b"\n")
    shuffled_events = list(events)
    random.Random(5).shuffle(shuffled_events)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_bytes(b"\n".join(shuffled_events) + b"\n")
    expected = run("--events", str(in_order))
    got = run("--events", str(shuffled))
    assert "not in time order" in got.stderr
    assert got.stdout == expected.stdout
    assert len(expected.stdout.splitlines()) > 10


def test_external_sort_spills_runs_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute_module, "RUN_SIZE", 500)
    events = [traffic.encode(ev) for ev in traffic.events(T0, 3000, seed=4)]
    in_order = tmp_path / "sorted.jsonl"
    in_order.write_bytes(b"\n".join(events) + b"\n")
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_bytes(b"\n".join(reversed(events)) + b"\n")
    assert run("--events", str(reversed_file)).stdout == run("--events", str(in_order)).stdout


def test_rows_are_sorted_by_account_app_day(tmp_path: Path) -> None:
    events = [
        *Conversation(app_id="zeta", account_id="b").user(0).events,
        *Conversation(app_id="alpha", account_id="b").user(0).events,
        *Conversation(app_id="mid", account_id="a", start=T0 + 24 * 3_600_000).user(0).events,
        *Conversation(app_id="mid", account_id="a").user(0).events,
    ]
    out = run("--events", str(write(tmp_path / "e.jsonl", in_time_order(events)))).stdout
    keys = [tuple(row[:3]) for row in csv.reader(io.StringIO(out))][1:]
    assert keys == [
        ("a", "mid", "2026-11-01"),
        ("a", "mid", "2026-11-02"),
        ("b", "alpha", "2026-11-01"),
        ("b", "zeta", "2026-11-01"),
    ]


@pytest.mark.parametrize(
    "data", [b"ab\ncd\n\nefgh\nij", b"one line without newline", b"x\n", b"\n\n", b"", b"a\r\nb\r\n"]
)
def test_lines_cut_by_read_chunks_come_out_whole(data: bytes) -> None:
    """The file is read a chunk at a time: a line across two chunks, or many, is still one line."""
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    for chunk_bytes in (1, 2, 3, 5, 8, 1 << 20):
        batches = compute_module._line_batches(io.BytesIO(data), None, chunk_bytes)
        assert [line for batch in batches for line in batch] == expected, chunk_bytes


def _resent_file(tmp_path: Path, count: int = 20_000) -> tuple[Path, Path]:
    """A realistic file with 2 % of its events re-sent up to 300 lines later, and the same events sorted."""
    lines = [traffic.encode(ev) for ev in traffic.events(T0, count, seed=8)]
    resent = tmp_path / "resent.jsonl"
    copies = list(traffic.with_resent_copies(lines, share=0.02, within=300, seed=9))
    resent.write_bytes(b"\n".join(copies) + b"\n")
    ordered = tmp_path / "ordered.jsonl"
    by_time = sorted(copies, key=_time_of)
    ordered.write_bytes(b"\n".join(by_time) + b"\n")
    return resent, ordered


def _time_of(line: bytes) -> str:
    return str(json.loads(line)["occurred_at"])


def test_late_resent_duplicates_are_recognised_in_the_single_pass(tmp_path: Path) -> None:
    """Copies that arrive after their conversation session is final are duplicates, not a reason to sort."""
    resent, ordered = _resent_file(tmp_path)
    got = run("--events", str(resent))
    assert "metered again" not in got.stderr
    assert got.stdout == run("--events", str(ordered)).stdout
    assert got.stdout == run("--events", str(resent), "--timezone", "UTC").stdout
    result = compute_module.compute(
        resent, ZoneInfo("UTC"), RulesConfig(), now_ms=T0 + 10 * 86_400_000, on_invalid=lambda *_: None
    )
    assert not result.resorted
    assert result.stats.duplicates > 300
    assert run("--events", str(resent), "--sessions").stdout == run("--events", str(ordered), "--sessions").stdout


def test_without_the_resend_window_the_same_file_would_be_sorted(tmp_path: Path) -> None:
    """The file of the test above does hold copies later than their final sessions (so that test can fail)."""
    resent, ordered = _resent_file(tmp_path)
    args: dict[str, Any] = {"now_ms": T0 + 10 * 86_400_000, "on_invalid": lambda *_: None}
    without = compute_module.compute(resent, ZoneInfo("UTC"), RulesConfig(), resend_window_ms=0, **args)
    assert without.resorted
    assert without.rows == compute_module.compute(ordered, ZoneInfo("UTC"), RulesConfig(), **args).rows


def test_an_event_truly_out_of_order_still_sorts_the_file(tmp_path: Path) -> None:
    """Not a copy of anything metered: beyond the lateness the single pass cannot be exact, the sort is."""
    early = Conversation(conversation_id="early").user(0).bot(1).events
    forgotten = Conversation(conversation_id="early").bot(2).events
    later = Conversation(conversation_id="later", start=T0 + 3_600_000).user(0).bot(1).events
    path = write(tmp_path / "late.jsonl", [*early, *later, *forgotten])
    got = run("--events", str(path))
    assert "metered again" in got.stderr
    assert got.stdout == run("--events", str(write(tmp_path / "o.jsonl", [*early, *forgotten, *later]))).stdout


def test_a_copy_resent_after_the_window_sorts_the_file_and_counts_once(tmp_path: Path) -> None:
    """Ids are kept for the resend window only (bounded memory): a later copy costs the sort, never a session."""
    first = Conversation(conversation_id="early").user(0).bot(1).events
    later = Conversation(conversation_id="later", start=T0 + 3 * 3_600_000).user(0).bot(1).events
    path = write(tmp_path / "e.jsonl", [*first, *later, first[0]])
    got = run("--events", str(path))
    assert "metered again" in got.stderr
    assert got.stdout.splitlines()[1] == "acme,support-bot,2026-11-01,2,2,0,0,2,0,0"
