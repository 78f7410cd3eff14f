"""End to end on the real broker, real workers (``python -m cli worker``) and embedded ClickHouse.

Every test replays a generated file of realistic traffic and requires `metering usage --format
csv --by day` to equal `metering compute` on the same file, line for line.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from cli.main import main
from cli.service import StoreEndpoints
from cli.usage_command import usage_text
from devtools import traffic
from devtools.produce import produce
from pipeline.contract.events import DeadLetter
from pipeline.infra.kafka import producer_config
from pipeline.infra.settings import Settings
from tests.integration.conftest import Workers
from tests.support import T0, wait_until

pytestmark = pytest.mark.integration


def traffic_file(path: Path, count: int, seed: int) -> Path:
    path.write_bytes(b"".join(traffic.encode(ev) + b"\n" for ev in traffic.events(T0, count, seed=seed)))
    return path


def computed(path: Path, tz: str) -> str:
    result = CliRunner().invoke(main, ["compute", "--events", str(path), "--timezone", tz])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def metered(settings: Settings, tz: str) -> str:
    return usage_text(settings, start=None, end=None, apps=(), account=None, by="day", tz=tz, fmt="csv")


def wait_for_usage(settings: Settings, expected: str, tz: str, workers: Workers, timeout: float = 180) -> None:
    last = [""]

    def same() -> bool:
        last[0] = metered(settings, tz)
        return last[0] == expected

    try:
        wait_until(same, timeout, f"usage in {tz} to equal compute")
    except AssertionError:
        print("expected:\n" + expected + "\ngot:\n" + last[0])
        print("late:", topic_count(settings, settings.topics.late), "dlq:", topic_count(settings, settings.topics.dlq))
        print("worker logs:\n" + workers.logs())
        raise


def topic_count(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "counter"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            high - low for low, high in (consumer.get_watermark_offsets(TopicPartition(topic, p)) for p in partitions)
        )
    finally:
        consumer.close()


def test_replay_gives_exactly_what_compute_gives_utc_and_kolkata(
    settings: Settings, store: StoreEndpoints, workers: Workers, tmp_path: Path
) -> None:
    path = traffic_file(tmp_path / "events.jsonl", 6000, seed=21)
    assert produce(settings, path).failed == 0
    workers.start(1)
    utc = computed(path, "UTC")
    assert len(utc.splitlines()) > 5
    wait_for_usage(settings, utc, "UTC", workers)
    assert metered(settings, "Asia/Kolkata") == computed(path, "Asia/Kolkata")
    assert topic_count(settings, settings.topics.late) == 0


def test_two_workers_over_six_partitions_give_the_same_result(
    settings: Settings, store: StoreEndpoints, workers: Workers, tmp_path: Path
) -> None:
    path = traffic_file(tmp_path / "events.jsonl", 6000, seed=22)
    workers.start(2)
    assert produce(settings, path).failed == 0
    wait_for_usage(settings, computed(path, "UTC"), "UTC", workers)


@pytest.mark.parametrize(
    ("how", "state_store"), [("sigterm", "memory"), ("sigkill", "memory"), ("sigkill", "rocksdb")]
)
def test_worker_restarted_mid_replay_loses_nothing_and_counts_nothing_twice(
    settings: Settings, store: StoreEndpoints, tmp_path: Path, how: str, state_store: str
) -> None:
    """With the rocksdb store, final conversations and alert ids are archived on disk and the restarted
    worker (same instance) resumes from its own database and the changelog's tail."""
    settings = replace(settings, state_store=state_store)
    workers = Workers(settings, tmp_path)
    try:
        _restart_mid_replay(settings, workers, tmp_path, how)
    finally:
        workers.close()


def _restart_mid_replay(settings: Settings, workers: Workers, tmp_path: Path, how: str) -> None:
    path = traffic_file(tmp_path / "events.jsonl", 12000, seed=23)
    assert produce(settings, path).failed == 0
    first = workers.spawn("--instance", "0")
    wait_until(lambda: topic_count(settings, settings.topics.billing_sessions) > 50, 90, "first billing sessions")
    if how == "sigterm":
        assert workers.stop(first) == 0, workers.logs()
    else:
        workers.kill(first)
    workers.spawn("--instance", "0")
    wait_for_usage(settings, computed(path, "UTC"), "UTC", workers)


def test_garbage_on_each_input_topic_lands_on_the_dlq_with_a_reason(
    settings: Settings, store: StoreEndpoints, workers: Workers, tmp_path: Path
) -> None:
    path = traffic_file(tmp_path / "events.jsonl", 3000, seed=24)
    assert produce(settings, path).failed == 0
    topics = settings.topics
    producer = Producer(producer_config(settings))
    garbage = {
        topics.turns: b"not json at all",
        topics.transfers: b'{"type":"agent_transfer","event_id":"x"}',
        topics.alerts: b"\xff\xfe\x00",
    }
    for topic, payload in garbage.items():
        producer.produce(topic, payload, b"some-key")
    producer.flush(10)
    workers.start(1)
    wait_for_usage(settings, computed(path, "UTC"), "UTC", workers)
    letters = read_all(settings, topics.dlq, len(garbage))
    assert {letter.source_topic for letter in letters} == set(garbage)
    for letter in letters:
        assert base64.b64decode(letter.payload_base64) == garbage[letter.source_topic]
        assert letter.reason
    by_topic = {letter.source_topic: letter.code for letter in letters}
    assert by_topic == {topics.turns: "not_json", topics.transfers: "schema", topics.alerts: "not_json"}


def read_all(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list[DeadLetter]:
    group = f"read-{time.time()}"
    config = {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    consumer = Consumer(config)
    consumer.subscribe([topic])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, 1.0):
                if message.error() is None:
                    out.append(msgspec.json.decode(message.value(), type=DeadLetter))
    finally:
        consumer.close()
    assert len(out) == expected, json.dumps([letter.reason for letter in out])
    return out
