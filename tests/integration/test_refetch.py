"""A worker reads the input records faust skipped straight from the log (``continuity``)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from pipeline.settings import Settings
from pipeline.stream.app import MeteringApp, Refetched

pytestmark = pytest.mark.integration


def test_the_records_of_a_hole_are_read_in_log_order(settings: Settings) -> None:
    topic = settings.topics.turns
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(12):
        producer.produce(topic, f"record-{i}".encode(), partition=3)
    assert producer.flush(30) == 0
    app = MeteringApp(settings)

    hole = app._read_range(topic, 3, 4, 9)

    assert hole is not None
    assert all(isinstance(r, Refetched) for r in hole)
    assert [(r.message.offset, r.value) for r in hole] == [(i, f"record-{i}".encode()) for i in range(4, 9)]
    assert app._read_range(topic, 3, 12, 12) == []
