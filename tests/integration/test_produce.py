"""`metering produce` against the real broker: every valid line on its topic, with its key, on its key's partition."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from rich.console import Console

from devtools import traffic
from devtools.produce import EXIT_FAILED, EXIT_OK, EXIT_UNREADABLE, produce, produce_command
from pipeline.contract.decode import decode_event
from pipeline.contract.events import Rejection, format_ms
from pipeline.infra.kafka import KafkaSetupError, partition_of
from pipeline.infra.settings import Settings, Topics

pytestmark = pytest.mark.integration

KEY_FIELD = {
    "conversation_turn": "conversation_id",
    "agent_transfer": "conversation_id",
    "alert_delivered": "app_id",
    "plan_changed": "app_id",
    "funds_added": "app_id",
    "agents_subscribed": "app_id",
}

#: Bad lines and the reason code decode_event gives each; inserted at known line numbers.
BAD_LINES = [
    (b"{not json", "not_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"type": "mystery", "event_id": "x", "occurred_at": "2026-01-01T00:00:00Z"}', "unknown_type"),
    (
        b'{"type": "conversation_turn", "event_id": "e", "occurred_at": "2026-01-01T00:00:00.000Z", '
        b'"account_id": "a", "app_id": "b"}',
        "schema",
    ),
    (
        b'{"type": "funds_added", "event_id": "f", "occurred_at": "1999-12-31T23:59:59.000Z", '
        b'"account_id": "a", "app_id": "b", "amount": "10.00"}',
        "out_of_range",
    ),
]


def _plan_events(now_ms: int) -> list[dict[str, Any]]:
    base = {"occurred_at": format_ms(now_ms - 3 * 3600_000), "account_id": "acct-00"}
    return [
        {
            **base,
            "type": "plan_changed",
            "event_id": "plan-1",
            "app_id": "app-00-0",
            "plan": "growth",
            "price_per_usage_session": "0.02",
            "price_per_alert_session": "0.01",
            "price_per_voice_session": "0.05",
        },
        {**base, "type": "funds_added", "event_id": "funds-1", "app_id": "app-00-0", "amount": "100.00"},
        {**base, "type": "agents_subscribed", "event_id": "seats-1", "app_id": "app-00-1", "agents": 3},
    ]


def _write(path: Path, lines: Iterable[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _file_with_bad_lines(path: Path, count: int) -> tuple[list[bytes], dict[int, str]]:
    """A traffic file with plan events, a blank line and the bad lines spread through it.

    Returns the valid lines in file order and {line number: expected reason code}.
    """
    now = int(time.time() * 1000)
    good = [traffic.encode(e) for e in _plan_events(now)]
    good += [traffic.encode(e) for e in traffic.events(now - 2 * 3600_000, count, seed=11)]
    lines = list(good)
    for i, (line, _) in enumerate(BAD_LINES):
        lines.insert(10 + i * (len(good) // len(BAD_LINES)), line)
    lines.insert(len(lines) // 2, b"   ")  # blank: neither sent nor reported
    _write(path, lines)
    codes = dict(BAD_LINES)
    return good, {lineno: codes[line] for lineno, line in enumerate(lines, 1) if line in codes}


def _consume(settings: Settings, topics: Iterable[str], expected: int, timeout: float = 60.0) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-produce-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(settings.partitions)])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
        # anything beyond the expected count would be a duplicate: give it a moment to show up
        out.extend(consumer.consume(num_messages=10_000, timeout=1.0))
    finally:
        consumer.close()
    return out


def test_valid_events_land_on_their_topic_key_and_partition(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good, bad = _file_with_bad_lines(path, 3000)
    reported: list[tuple[int, str]] = []

    result = produce(settings, path, on_invalid=lambda lineno, reason: reported.append((lineno, reason)))

    assert result.exit_code == EXIT_OK
    assert (result.sent, result.failed, result.unconfirmed) == (len(good), 0, 0)
    assert result.skipped == len(BAD_LINES)
    assert [(n, r.split(":", 1)[0]) for n, r in reported] == sorted(bad.items())
    assert result.invalid == reported

    messages = _consume(settings, settings.topics.inputs, len(good))
    assert len(messages) == len(good), "every valid line once, nothing else"
    assert sorted(m.value() for m in messages) == sorted(good)

    expected_per_topic = Counter(settings.topics.of_type(json.loads(line)["type"]) for line in good)
    assert Counter(m.topic() for m in messages) == expected_per_topic == result.by_topic

    for msg in messages:
        value = msg.value()
        assert value is not None
        event = json.loads(value)
        key = event[KEY_FIELD[event["type"]]].encode()
        assert msg.topic() == settings.topics.of_type(event["type"])
        assert msg.key() == key
        assert msg.partition() == partition_of(key, settings.partitions), "Java-compatible murmur2 partitioning"
        assert not isinstance(decode_event(value, int(time.time() * 1000)), Rejection)

    # the idempotent producer keeps each key's events in file order
    in_file: dict[tuple[str, bytes], list[bytes]] = defaultdict(list)
    for line in good:
        event = json.loads(line)
        in_file[(settings.topics.of_type(event["type"]), event[KEY_FIELD[event["type"]]].encode())].append(line)
    consumed: dict[tuple[str, bytes], list[bytes]] = defaultdict(list)
    for msg in sorted(messages, key=lambda m: (m.topic() or "", m.partition() or 0, m.offset())):
        consumed[(msg.topic() or "", msg.key() or b"")].append(msg.value() or b"")
    assert consumed == in_file


def test_raw_mode_sends_every_line_unkeyed_for_the_dead_letter_path(settings: Settings, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    alerts = (e for e in traffic.events(now - 3600_000, 200, seed=3) if e["type"] == "alert_delivered")
    alert = traffic.encode(next(alerts))
    lines = [line for line, _ in BAD_LINES] + [alert, b'{"type": "funds_added", "amount": "-1"}']
    path = tmp_path / "raw.jsonl"
    _write(path, [*lines, b""])

    result = produce(settings, path, validate=False)

    assert (result.sent, result.failed, result.skipped) == (len(lines), 0, 0)
    messages = _consume(settings, settings.topics.inputs, len(lines))
    assert sorted(m.value() or b"" for m in messages) == sorted(lines)
    topic_of = {m.value(): m.topic() for m in messages}
    assert all(m.key() is None for m in messages)
    assert topic_of[alert] == settings.topics.alerts, "a known type goes to its topic"
    assert topic_of[lines[-1]] == settings.topics.plans, "even when the rest of it is invalid"
    assert topic_of[b"{not json"] == topic_of[b"[1, 2, 3]"] == settings.topics.turns
    assert topic_of[BAD_LINES[2][0]] == settings.topics.turns, "an unknown type goes to the turns topic"


def test_command_reports_invalid_lines_and_summary(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good, bad = _file_with_bad_lines(path, 200)
    out = io.StringIO()

    status = produce_command(settings, path, console=Console(file=out, width=400))

    text = out.getvalue()
    assert status == EXIT_OK
    for lineno in bad:
        assert f"{path}:{lineno}: skipped: " in text
    assert f"sent {len(good):,} messages" in text
    assert f"failed 0; skipped {len(BAD_LINES)} invalid" in text


def test_unreadable_file_and_missing_topics(settings: Settings, tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=400)
    assert produce_command(settings, tmp_path / "nope.jsonl", console=console) == EXIT_UNREADABLE
    assert produce_command(settings, tmp_path, console=console) == EXIT_UNREADABLE
    assert "cannot read" in out.getvalue()

    path = tmp_path / "one.jsonl"
    _write(path, [traffic.encode(_plan_events(int(time.time() * 1000))[1])])
    suffix = uuid.uuid4().hex[:6]
    absent = replace(settings, topics=Topics(**{k: f"{v}-absent-{suffix}" for k, v in vars(Topics()).items()}))
    with pytest.raises(KafkaSetupError, match="do not exist"):
        produce(absent, path)
    assert produce_command(absent, path, console=console) == EXIT_FAILED
    assert "metering run" in out.getvalue()


def test_without_a_bootstrap_events_never_go_to_another_data_directorys_broker(
    settings: Settings, tmp_path: Path
) -> None:
    """METERING_KAFKA_BOOTSTRAP unset and the data directory's broker not running: the cluster that
    answers on the default address is another's (its cluster id says so), so nothing is sent (issue 13)."""
    path = tmp_path / "one.jsonl"
    _write(path, [traffic.encode(_plan_events(int(time.time() * 1000))[1])])
    kafka_dir = tmp_path / "kafka"
    kafka_dir.mkdir()
    (kafka_dir / "local-kafka.properties").write_text("cluster.id=this-data-directorys-own\nport=1\n")
    unset = replace(settings, data_dir=tmp_path, kafka_bootstrap_given=False)
    with pytest.raises(KafkaSetupError, match="not this-data-directorys-own, the broker of the data directory"):
        produce(unset, path)
    out = io.StringIO()
    assert produce_command(unset, path, console=Console(file=out, width=400)) == EXIT_FAILED
    assert "set METERING_KAFKA_BOOTSTRAP to use that cluster" in out.getvalue()
    assert produce(settings, path).sent == 1, "given, the same address is used as it is"
