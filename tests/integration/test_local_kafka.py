"""The local KRaft broker works end to end and keeps data, offsets and its address across a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.local_kafka import LocalKafka, LocalKafkaError

pytestmark = pytest.mark.integration

TOPIC = "usage-events-it"


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of its own: this test stops and restarts it, which a shared session broker must not see."""
    broker = LocalKafka(tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()


def _produce(bootstrap: str, key: bytes, value: bytes) -> Message:
    delivered: list[Message] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append(msg)

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(TOPIC, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert len(delivered) == 1
    return delivered[0]


def _consume_one(consumer: Consumer, timeout: float = 30.0) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        return msg
    raise AssertionError(f"no message within {timeout} s")


def test_produce_consume_and_read_back_after_restart(kafka: LocalKafka) -> None:
    bootstrap = kafka.start()
    assert bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.is_running
    assert kafka.pid is not None

    kafka.create_topics({TOPIC: 3})
    kafka.create_topics({TOPIC: 3})  # already there: a no-op
    with pytest.raises(LocalKafkaError, match="already exists with 3 partitions"):
        kafka.create_topics({TOPIC: 4})

    key, value = b"account-1", uuid.uuid4().bytes
    sent = _produce(bootstrap, key, value)

    group = "it-group"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([TOPIC])
        got = _consume_one(consumer)
        consumer.commit(message=got, asynchronous=False)
    finally:
        consumer.close()
    assert (got.key(), got.value(), got.partition(), got.offset()) == (
        key,
        value,
        sent.partition(),
        sent.offset(),
    )

    first_pid, cluster_id = kafka.pid, kafka.cluster_id
    kafka.stop()
    assert not kafka.is_running
    assert kafka.pid is None

    assert kafka.start() == bootstrap
    assert kafka.pid != first_pid
    assert kafka.cluster_id == cluster_id

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=10)
    assert len(metadata.topics[TOPIC].partitions) == 3

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [committed] = reader.committed([TopicPartition(TOPIC, sent.partition())], timeout=10)
        assert committed.offset == sent.offset() + 1
        reader.assign([TopicPartition(TOPIC, sent.partition(), OFFSET_BEGINNING)])
        again = _consume_one(reader)
    finally:
        reader.close()
    assert (again.key(), again.value(), again.offset()) == (key, value, sent.offset())

    kafka.stop()
    assert not kafka.is_running
