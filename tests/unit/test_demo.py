"""Demo traffic is valid, live and keyed as events.md says.

No broker here: ``DemoTraffic`` takes a producer factory, and these tests pass a fake producer
that records what it is given (topic, value, key, and the wall time it was given it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from devtools import traffic
from devtools.demo import DemoTraffic, plan_events
from pipeline.balance.catalog import load_catalog
from pipeline.contract.decode import decode_event
from pipeline.contract.events import Rejection
from pipeline.infra.kafka import PARTITIONER
from pipeline.infra.settings import Settings

JITTER_S = traffic.TrafficShape().jitter_ms / 1000


@dataclass
class Sent:
    topic: str
    value: bytes
    key: str | None
    at: float


@dataclass
class FakeProducer:
    """Records every message with the time it was produced; delivers nothing anywhere."""

    config: dict[str, Any]
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, value: bytes, key: str | None = None) -> None:
        with self.lock:
            self.sent.append(Sent(topic, value, key, time.time()))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


RATE = 100


@dataclass
class Run:
    demo: DemoTraffic
    producer: FakeProducer
    started: float


@pytest.fixture(scope="module")
def demo_run() -> Run:
    """Demo traffic at 100 events/s, one garbage message in 20, until 200 traffic messages were sent."""
    producers: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        producers.append(FakeProducer(config))
        return producers[-1]

    demo = DemoTraffic(Settings(), rate=RATE, seed=5, garbage_every=20, producer_factory=factory)
    started = time.time()
    demo.start()
    deadline = time.monotonic() + 20
    while demo.counts.events < 200 and time.monotonic() < deadline and demo.error is None:
        time.sleep(0.05)
    demo.stop()
    assert demo.error is None
    assert demo.counts.events >= 200, "demo traffic too slow to start"
    return Run(demo, producers[0], started)


def _key_of(event: dict[str, Any]) -> str:
    return event["conversation_id"] if event["type"] in ("conversation_turn", "agent_transfer") else event["app_id"]


def test_uses_the_idempotent_java_compatible_producer(demo_run: Run) -> None:
    producer = demo_run.producer
    assert producer.config["enable.idempotence"] is True
    assert producer.config["acks"] == "all"
    assert producer.config["partitioner"] == PARTITIONER


def test_every_app_gets_a_plan_and_funds_before_any_traffic(demo_run: Run) -> None:
    demo, producer = demo_run.demo, demo_run.producer
    apps = traffic.apps()
    first = producer.sent[: 2 * len(apps)]
    events = [json.loads(m.value) for m in first]
    assert Counter(e["type"] for e in events) == {"plan_changed": len(apps), "funds_added": len(apps)}
    assert {e["app_id"] for e in events} == {app for _, app in apps}
    assert {e["plan"] for e in events if e["type"] == "plan_changed"} == set(load_catalog().names), "the catalogue's"
    for msg, event in zip(first, events, strict=True):
        assert msg.topic == demo.settings.topics.plans
        assert msg.key == event["app_id"]
        assert not isinstance(decode_event(msg.value, int(msg.at * 1000)), Rejection), msg.value
    assert demo.counts.plan_events == 2 * len(apps)


def test_traffic_is_valid_live_and_keyed_by_the_contract(demo_run: Run) -> None:
    demo, producer = demo_run.demo, demo_run.producer
    topics = demo.settings.topics
    traffic_messages = producer.sent[2 * len(traffic.apps()) :]
    valid = 0
    for msg in traffic_messages:
        decoded = decode_event(msg.value, int(msg.at * 1000))
        if isinstance(decoded, Rejection):
            continue
        valid += 1
        event = json.loads(msg.value)
        assert msg.topic == topics.of_type(event["type"])
        assert msg.key == _key_of(event)
        lag_s = msg.at - decoded[0] / 1000
        assert -0.5 <= lag_s <= JITTER_S + 3, f"occurred_at {event['occurred_at']} is not live ({lag_s:.1f} s old)"
    assert valid == demo.counts.events
    seconds = traffic_messages[-1].at - demo_run.started
    assert 0.5 * RATE <= valid / seconds <= 1.2 * RATE, "about the configured rate, warm-up included"


def test_garbage_is_rejected_by_the_decoder(demo_run: Run) -> None:
    demo, producer = demo_run.demo, demo_run.producer
    rejected = [m for m in producer.sent if isinstance(decode_event(m.value, int(m.at * 1000)), Rejection)]
    assert len(rejected) == demo.counts.garbage > 0
    assert all(m.topic == demo.settings.topics.turns and m.key is None for m in rejected)
    assert demo.counts.sent == len(producer.sent)
    assert sum(demo.counts.by_topic.values()) == len(producer.sent)


def test_stop_stops_promptly() -> None:
    demo = DemoTraffic(Settings(), rate=5, seed=1, producer_factory=FakeProducer)
    demo.start()
    assert demo.running
    started = time.monotonic()
    demo.stop()
    assert not demo.running
    assert time.monotonic() - started < 2.0
    with pytest.raises(RuntimeError, match="already started"):
        demo.start()


def test_each_run_draws_its_own_seed_so_event_ids_never_repeat() -> None:
    assert DemoTraffic(Settings()).seed != DemoTraffic(Settings()).seed
    assert {e["event_id"] for e in plan_events(0, 1)}.isdisjoint(e["event_id"] for e in plan_events(0, 2))


def test_live_traffic_starts_near_its_rate() -> None:
    """The warm-up gives about 80% of the rate from the first minute (the long conversations add the rest)."""
    start = 1_790_000_000_000
    count = 0
    last = start
    for due, event in traffic.live(start, 50, seed=3):
        if due >= start + 600_000:
            break
        occurred = decode_event(traffic.encode(event), due)
        assert not isinstance(occurred, Rejection)
        assert last <= due, "due times never go back"
        assert 0 <= due - occurred[0] <= traffic.TrafficShape().jitter_ms
        last = due
        count += 1
    assert 0.7 * 50 <= count / 600 <= 1.1 * 50


def test_events_of_a_seed_are_unchanged() -> None:
    """Tests and benchmarks pin the traffic of a seed: the live mode must not have changed it."""
    digest = hashlib.sha256()
    for event in traffic.events(1_700_000_000_000, 50_000, seed=7):
        digest.update(traffic.encode(event))
    assert digest.hexdigest() == "371ad7f42d44e0e9e47fe482667ff42039d7ea1651c38b1abe3240dd1d827316"
