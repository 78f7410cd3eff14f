"""The transactional producer's deadline: a call librdkafka does not return from (librdkafka#5456).

The blocking call cannot be provoked on purpose with a real broker (it needs a coordinator that
goes away at the wrong moment), so the producer here is a stand-in that records the calls made
on it and blocks ``send_offsets_to_transaction`` until released. Everything else is the real
``Transactor``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.infra.settings import Settings
from pipeline.runtime import transactions
from pipeline.runtime.transactions import StuckCall, Transactor


class FakeProducer:
    """Stands in for confluent_kafka.Producer: the transactional calls, recorded; ``block`` holds send_offsets."""

    made: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.calls: list[str] = []
        self.block = threading.Event()
        self.blocking = False
        self.fail_send_offsets: KafkaError | None = None
        FakeProducer.made.append(self)

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        self.calls.append(f"produce {topic}")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float) -> None:
        self.calls.append("send_offsets")
        if self.fail_send_offsets is not None:
            raise KafkaException(self.fail_send_offsets)
        if self.blocking:
            self.block.wait()

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        self.calls.append("purge")


@pytest.fixture
def transactor(monkeypatch: pytest.MonkeyPatch) -> Transactor:
    FakeProducer.made = []
    monkeypatch.setattr(transactions, "Producer", FakeProducer)
    monkeypatch.setattr(transactions, "STUCK_AFTER_SECONDS", 0.3)
    t = Transactor(
        Settings(kafka_bootstrap="127.0.0.1:1"),
        transactional_id="t-0",
        role="test",
        transaction_timeout_ms=20_000,
        max_record_bytes=1 << 20,
        linger_ms=5,
    )
    t.open()
    return t


def write(t: Transactor) -> dict[tuple[str, int], int]:
    return t.write([("out", b"k", b"v", None)], [TopicPartition("in", 0, 7)], object, set())


def test_a_transaction_commits_its_records_and_offsets(transactor: Transactor) -> None:
    write(transactor)
    (producer,) = FakeProducer.made
    assert producer.calls == ["init", "begin", "produce out", "send_offsets", "commit"]


def test_a_call_that_does_not_return_raises_stuck_call_in_time_and_a_new_producer_takes_over(
    transactor: Transactor,
) -> None:
    (stuck,) = FakeProducer.made
    stuck.blocking = True
    started = time.monotonic()
    with pytest.raises(StuckCall):
        write(transactor)
    assert time.monotonic() - started < 5, "the deadline ends the wait"
    assert "commit" not in stuck.calls, "a stuck transaction is never committed"

    transactor.renew()
    stuck.block.set()  # the abandoned call returns some time later: nothing waits for it
    new = FakeProducer.made[-1]
    assert new is not stuck
    assert transactor.producer is new
    assert transactor.generations == 2
    assert "purge" in stuck.calls
    assert new.calls == ["init"]
    write(transactor)
    assert new.calls == ["init", "begin", "produce out", "send_offsets", "commit"]


def test_send_offsets_is_not_made_again_after_a_retriable_error(transactor: Transactor) -> None:
    """Made again while the coordinator is away, the call may never return: the transaction is aborted instead."""
    (producer,) = FakeProducer.made
    producer.fail_send_offsets = KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)
    with pytest.raises(KafkaException):
        write(transactor)
    assert producer.calls.count("send_offsets") == 1
    assert transactor.abort()
    assert producer.calls[-1] == "abort"


def test_an_abort_that_does_not_return_reports_failure(transactor: Transactor, monkeypatch: pytest.MonkeyPatch) -> None:
    (producer,) = FakeProducer.made
    release = threading.Event()
    monkeypatch.setattr(producer, "abort_transaction", lambda timeout: release.wait())
    assert transactor.abort() is False
    release.set()
