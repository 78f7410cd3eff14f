"""The local KRaft broker works end to end and keeps data, offsets and its address across a restart.

And it never outlives `metering run` unnoticed: it dies with the process that started it, and
one left on a data directory by other means is restarted by the next run there (issue 13).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console

from cli.main import with_data_dir_broker
from cli.run import _broker
from devtools.local_kafka import LocalKafka, LocalKafkaError, _is_kafka_process, running_broker
from pipeline.infra.settings import Settings
from tests.support import wait_until

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


#: Starts the broker of a data dir from a process of its own, prints its pid, then waits to be killed or exits.
START_AND_LEAVE = """
import sys, time
from pathlib import Path
from devtools.local_kafka import LocalKafka
broker = LocalKafka(Path(sys.argv[1]), heap_mb=256, die_with_parent=sys.argv[2] == "die")
broker.start(timeout=180)
broker._finalizer.detach()  # as after a SIGKILL: no clean stop at exit
print(broker.pid, flush=True)
time.sleep(float(sys.argv[3]))
"""


def _start_in_child(directory: Path, mode: str, seconds: float) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", START_AND_LEAVE, str(directory), mode, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def test_a_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Even by SIGKILL, which no handler sees: the broker's own session keeps a signal to the group from it."""
    child, pid = _start_in_child(tmp_path / "kafka", "die", 600)
    found = running_broker(tmp_path / "kafka")
    assert found is not None
    assert found.pid == pid
    child.kill()
    child.wait()
    wait_until(lambda: running_broker(tmp_path / "kafka") is None, 90, "the broker to stop with its parent")


def test_metering_run_restarts_a_broker_left_on_its_data_directory(tmp_path: Path) -> None:
    """A broker that outlived its run (started without dying with it) is the data directory's: the next run
    stops it and starts it again as its own, on the same data, announced where the commands look."""
    data_dir = tmp_path / "data"
    child, left = _start_in_child(data_dir / "kafka", "stay", 0)
    child.wait()
    leftover = running_broker(data_dir / "kafka")
    assert leftover is not None
    assert leftover.pid == left, "the broker outlived the process that started it"
    settings = Settings.from_env({"METERING_DATA_DIR": str(data_dir), "METERING_LOCAL_KAFKA_PORT": "1"})
    assert not settings.kafka_bootstrap_given
    out = io.StringIO()
    broker = _broker(settings, Console(file=out, width=400))
    try:
        assert broker is not None
        assert f"(pid {left}) was left running" in out.getvalue()
        assert not _is_kafka_process(left)
        now = running_broker(data_dir / "kafka")
        assert now is not None
        assert (now.pid, now.cluster_id, now.port) == (broker.pid, leftover.cluster_id, leftover.port)
        assert with_data_dir_broker(settings).kafka_bootstrap == broker.bootstrap
    finally:
        if broker is not None:
            broker.stop()
