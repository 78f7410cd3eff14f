"""The sink's flush contract, against fakes: what is committed, when, and what a failure leaves behind.

``FakeConsumer`` below is a FAKE of ``confluent_kafka.Consumer`` (no broker) and
``FakeSessionWriter`` a FAKE of the ClickHouse store; the real ones are exercised by
``tests/integration/test_sink.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import REGISTRY

from consumers.clickhouse.errors import ClickHouseWriteError
from consumers.clickhouse.fake import FakeSessionWriter
from consumers.clickhouse.store import SessionWriter
from consumers.sink import ClickHouseSink, decode_record
from pipeline.contract.events import BillingSessionRecord
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings
from tests.support import SinkThread

TOPIC = "billing-sessions"
T0 = datetime(2026, 11, 1, 10, tzinfo=UTC)
FAST = Backoff(initial=0.01, maximum=0.04)


def record(session_id: str, app: str = "app-a", minute: int = 0) -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=session_id,
        kind="usage",
        account_id="acme",
        app_id=app,
        conversation_session_id=f"cs-{session_id}",
        conversation_id=f"c-{session_id}",
        user_id="u-1",
        channel="web",
        session_index=0,
        started_at=T0 + timedelta(minutes=minute),
        ended_at=T0 + timedelta(minutes=minute + 5),
    )


def encoded(session_id: str) -> bytes:
    return msgspec.json.encode(record(session_id))


class FakeMessage:
    """A FAKE ``confluent_kafka.Message``: topic, partition, offset, value and a CreateTime timestamp."""

    def __init__(self, partition: int, offset: int, value: bytes | None, timestamp_ms: int) -> None:
        self._partition, self._offset, self._value, self._ts = partition, offset, value, timestamp_ms

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def error(self) -> KafkaError | None:
        return None


class FakeConsumer:
    """A FAKE of ``confluent_kafka.Consumer`` for unit tests: in-memory partitions, no broker.

    Delivers the messages of assigned, unpaused partitions in offset order, at most
    ``num_messages`` per call; runs rebalance callbacks inside ``consume`` as librdkafka does;
    records commits, pauses and resumes in ``events``; can be told to refuse commits.
    """

    def __init__(
        self, partitions: dict[int, list[bytes | None]], events: list[tuple[str, Any]], assign: list[int] | None = None
    ) -> None:
        self.log = {
            p: [FakeMessage(p, o, v, int(time.time() * 1000)) for o, v in enumerate(vs)] for p, vs in partitions.items()
        }
        self.events = events
        self.position_of = dict.fromkeys(partitions, 0)
        self.assigned: set[int] = set()
        self.paused: set[int] = set()
        self.commits: list[list[tuple[int, int]]] = []
        self.commit_failures = 0
        self.closed = False
        self.config: dict[str, Any] = {}
        self._callbacks: dict[str, Callable[[Any, list[TopicPartition]], None]] = {}
        self._rebalances: list[tuple[str, list[int]]] = [("assign", sorted(partitions) if assign is None else assign)]

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None) -> None:
        assert topics == [TOPIC]
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def rebalance(self, kind: Literal["assign", "revoke", "lost"], partitions: list[int]) -> None:
        """Schedule a rebalance callback for the next ``consume`` (called from the test thread)."""
        self._rebalances.append((kind, partitions))

    def append(self, partition: int, value: bytes) -> None:
        log = self.log.setdefault(partition, [])
        log.append(FakeMessage(partition, len(log), value, int(time.time() * 1000)))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        assert not self.closed, "consume() after close()"
        while self._rebalances:
            kind, parts = self._rebalances.pop(0)
            tps = [TopicPartition(TOPIC, p) for p in parts]
            self._callbacks[kind](self, tps)
            if kind == "assign":
                self.assigned |= set(parts)
            else:
                self.assigned -= set(parts)
                self.paused -= set(parts)
                for p in parts:  # a re-assignment starts from the committed offset, as in Kafka
                    self.position_of[p] = dict(c for commit in self.commits for c in commit).get(p, 0)
        out: list[FakeMessage] = []
        for p in sorted(self.assigned - self.paused):
            while len(out) < num_messages and self.position_of[p] < len(self.log[p]):
                out.append(self.log[p][self.position_of[p]])
                self.position_of[p] += 1
        if not out:
            time.sleep(min(max(timeout, 0), 0.005))
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]) -> list[TopicPartition]:
        assert asynchronous is False
        if self.commit_failures:
            self.commit_failures -= 1
            self.events.append(("commit-failed", [(tp.partition, tp.offset) for tp in offsets]))
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        committed = [(tp.partition, tp.offset) for tp in offsets]
        self.commits.append(committed)
        self.events.append(("commit", committed))
        return offsets

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}
        self.events.append(("pause", sorted(tp.partition for tp in partitions)))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}
        self.events.append(("resume", sorted(tp.partition for tp in partitions)))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in sorted(self.assigned)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, tp.partition, self.position_of[tp.partition]) for tp in partitions]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        last = dict(c for commit in self.commits for c in commit)
        return [TopicPartition(TOPIC, tp.partition, last.get(tp.partition, -1001)) for tp in partitions]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.log[partition.partition])

    def close(self) -> None:
        """Like librdkafka: leaving the group revokes the assignment through the callback first."""
        if self.assigned:
            self._callbacks["revoke"](self, self.assignment())
            self.assigned.clear()
        self.closed = True
        self.events.append(("close", None))


class RecordingWriter:
    """Wraps the FAKE store and logs every insert attempt (token, ids, outcome) in the shared events."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.store = FakeSessionWriter()
        self.events = events
        self.attempts: list[tuple[str, list[str], bool]] = []
        self.down = False  # an outage: every insert fails until cleared

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
        ids = [r.billing_session_id for r in records]
        try:
            if self.down:
                raise ClickHouseWriteError("fake outage (injected by a test)", code=None, transient=True)
            self.store.insert(records, token)
        except Exception:
            self.attempts.append((token, ids, False))
            self.events.append(("insert-failed", token))
            raise
        self.attempts.append((token, ids, True))
        self.events.append(("insert", token))


class Harness(SinkThread):
    """A sink over a FakeConsumer and a RecordingWriter, run in a thread."""

    def __init__(
        self,
        partitions: dict[int, list[bytes | None]],
        *,
        batch_size: int = 100,
        batch_seconds: float = 0.02,
        app_id: str = "unit",
        wrap: Callable[[RecordingWriter], SessionWriter] | None = None,
        assign: list[int] | None = None,
    ) -> None:
        self.events: list[tuple[str, Any]] = []
        self.consumer = FakeConsumer(partitions, self.events, assign)
        self.writer = RecordingWriter(self.events)
        settings = Settings(app_id=app_id, sink_batch_size=batch_size, sink_batch_seconds=batch_seconds)

        def factory(config: dict[str, Any]) -> FakeConsumer:
            self.consumer.config = config
            return self.consumer

        writer = self.writer if wrap is None else wrap(self.writer)
        sink = ClickHouseSink(settings, writer, factory, backoff=FAST)
        super().__init__(sink, assigned_within=5, joined_within=10)

    def committed(self) -> dict[int, int]:
        return dict(c for commit in self.consumer.commits for c in commit)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def six_partitions(per_partition: int = 5) -> dict[int, list[bytes | None]]:
    return {p: [encoded(f"s{p}-{i}") for i in range(per_partition)] for p in range(6)}


@pytest.fixture(autouse=True)
def _sink_logs_captured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers.sink")


def test_the_consumer_is_configured_for_manual_commits_in_the_sink_group() -> None:
    with Harness(six_partitions(1), app_id="acme-metering") as h:
        wait_for(lambda: len(h.committed()) == 6)
    assert h.consumer.config["group.id"] == "acme-metering-sink"
    assert h.consumer.config["enable.auto.commit"] is False
    assert h.consumer.config["partition.assignment.strategy"] == "cooperative-sticky"
    assert h.consumer.closed


def test_offsets_are_committed_after_the_inserts_as_last_plus_one_ascending() -> None:
    with Harness(six_partitions(5)) as h:
        wait_for(lambda: h.committed() == dict.fromkeys(range(6), 5))
    first_commit = next(i for i, (kind, _) in enumerate(h.events) if kind == "commit")
    inserts_before = [token for kind, token in h.events[:first_commit] if kind == "insert"]
    assert sorted(inserts_before) == [f"{TOPIC}:{p}:0-4" for p in range(6)]
    for commit in h.consumer.commits:
        assert [p for p, _ in commit] == sorted(p for p, _ in commit)
    assert h.consumer.commits[0] == [(p, 5) for p in range(6)]
    assert len(h.writer.store.sessions) == 30


def test_one_block_per_partition_with_a_deterministic_token_per_offset_range() -> None:
    def tokens() -> list[str]:
        with Harness({0: [encoded(f"a{i}") for i in range(10)], 3: [encoded("b0")]}, batch_size=4) as h:
            wait_for(lambda: h.committed() == {0: 10, 3: 1})
        return [token for token, _, ok in h.writer.attempts if ok]

    first, second = tokens(), tokens()
    assert first == second
    assert first == [f"{TOPIC}:0:0-3", f"{TOPIC}:0:4-7", f"{TOPIC}:0:8-9", f"{TOPIC}:3:0-0"]


def test_failed_insert_keeps_the_batch_pauses_and_retries_the_same_token_then_commits() -> None:
    h = Harness(six_partitions(2))
    h.writer.store.fail_next(3)
    with h:
        wait_for(lambda: h.committed() == dict.fromkeys(range(6), 2))
    failed = [(token, ids) for token, ids, ok in h.writer.attempts if not ok]
    assert len(failed) == 3
    assert {token for token, _ in failed} == {f"{TOPIC}:0:0-1"}  # partition 0 is written first
    retried = next((ids for token, ids, ok in h.writer.attempts if ok and token == f"{TOPIC}:0:0-1"), None)
    assert retried == failed[0][1]  # same token, same records
    kinds = [kind for kind, _ in h.events]
    assert kinds.index("pause") < kinds.index("insert") < kinds.index("commit")
    assert "commit" not in kinds[: kinds.index("insert")]
    assert kinds.index("resume") > kinds.index("commit")
    assert ("pause", list(range(6))) in h.events
    assert len(h.consumer.commits) == 1


def test_consumption_stays_paused_during_an_outage() -> None:
    h = Harness({0: [encoded(f"s{i}") for i in range(3)]}, batch_size=3)
    h.writer.down = True
    with h:
        wait_for(lambda: len(h.writer.attempts) >= 3)
        for i in range(3, 20):
            h.consumer.append(0, encoded(f"s{i}"))
        wait_for(lambda: len(h.writer.attempts) >= 6)
        assert h.consumer.paused == {0}
        assert h.consumer.position_of[0] == 3  # nothing more was read while paused
    assert h.consumer.commits == []


def test_stop_during_an_outage_commits_nothing_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(six_partitions(3))
    h.writer.down = True
    with h:
        wait_for(lambda: len(h.writer.attempts) >= 3)
    assert h.consumer.commits == []
    assert h.consumer.closed
    assert h.error is None
    assert any("re-reads" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_an_unexpected_error_after_the_insert_closes_without_committing() -> None:
    class Crash(RuntimeError):
        pass

    class CrashAfterInsert:
        def __init__(self, inner: RecordingWriter) -> None:
            self.inner = inner

        def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
            self.inner.insert(records, token)
            raise Crash("simulated crash between insert and commit")

    h = Harness(six_partitions(1), wrap=CrashAfterInsert)
    with h:
        wait_for(lambda: h.error is not None)
    assert isinstance(h.error, Crash)
    assert h.consumer.commits == []
    assert h.consumer.closed


def test_in_batch_duplicates_are_dropped_and_their_offsets_committed() -> None:
    values: list[bytes | None] = [encoded("x"), encoded("y"), encoded("x"), encoded("z"), encoded("y")]
    with Harness({0: values}, batch_size=10) as h:
        wait_for(lambda: h.committed() == {0: 5})
    assert [(token, ids) for token, ids, ok in h.writer.attempts if ok] == [(f"{TOPIC}:0:0-4", ["x", "y", "z"])]


def test_invalid_messages_are_counted_logged_skipped_and_committed(caplog: pytest.LogCaptureFixture) -> None:
    before = REGISTRY.get_sample_value("metering_sink_invalid_records_total") or 0.0
    naive = msgspec.json.encode(record("n")).replace(b"Z", b"")
    values: list[bytes | None] = [encoded("a"), b"{not json", None, naive, encoded("b")]
    with Harness({2: values}) as h:
        wait_for(lambda: h.committed() == {2: 5})
    assert [ids for _, ids, ok in h.writer.attempts if ok] == [["a", "b"]]
    assert (REGISTRY.get_sample_value("metering_sink_invalid_records_total") or 0.0) - before == 3
    logged = [r for r in caplog.records if "invalid billing-sessions message" in r.getMessage()]
    assert [r.__dict__["fields"]["where"] for r in logged] == [f"{TOPIC}[2]@1", f"{TOPIC}[2]@2", f"{TOPIC}[2]@3"]
    assert "cannot be re-emitted" in logged[0].getMessage()


def test_a_failed_commit_is_retried_without_inserting_again() -> None:
    h = Harness({0: [encoded("a"), encoded("b")]})
    h.consumer.commit_failures = 2
    with h:
        wait_for(lambda: h.committed() == {0: 2})
    assert [kind for kind, _ in h.events if kind.startswith(("insert", "commit"))] == [
        "insert",
        "commit-failed",
        "commit-failed",
        "commit",
    ]


def test_graceful_stop_flushes_and_commits_the_batch_in_hand() -> None:
    h = Harness(six_partitions(2), batch_seconds=3600)
    with h:
        wait_for(lambda: sum(h.consumer.position_of.values()) == 12)
        assert h.consumer.commits == []
    assert h.committed() == dict.fromkeys(range(6), 2)
    assert [kind for kind, _ in h.events][-2:] == ["commit", "close"]


def test_revoked_partitions_have_their_buffered_data_written_and_committed() -> None:
    h = Harness({0: [encoded("a0")], 1: [encoded("b0"), encoded("b1")]}, batch_seconds=3600)
    with h:
        wait_for(lambda: sum(h.consumer.position_of.values()) == 3)
        h.consumer.rebalance("revoke", [1])
        wait_for(lambda: h.committed() == {1: 2})
        assert [token for token, _, ok in h.writer.attempts if ok] == [f"{TOPIC}:1:0-1"]
    assert h.committed() == {0: 1, 1: 2}  # partition 0 on stop


def test_revoke_during_an_outage_drops_the_partition_uncommitted_and_keeps_the_rest() -> None:
    h = Harness({0: [encoded("a0")], 1: [encoded("b0")]})
    h.writer.store.fail_next(4)
    with h:
        wait_for(lambda: len(h.writer.attempts) >= 2)
        h.consumer.rebalance("revoke", [0])
        wait_for(lambda: bool(h.consumer.commits))
    assert h.committed() == {1: 1}
    assert [token for token, _, ok in h.writer.attempts if ok] == [f"{TOPIC}:1:0-0"]


def test_partitions_assigned_during_an_outage_are_paused_and_nothing_is_committed_on_stop() -> None:
    h = Harness({0: [encoded("a0")], 1: [encoded("b0"), encoded("b1")]}, assign=[0])
    h.writer.down = True
    with h:
        wait_for(lambda: len(h.writer.attempts) >= 2)
        h.consumer.rebalance("assign", [1])
        wait_for(lambda: h.consumer.paused == {0, 1})
        wait_for(lambda: len(h.writer.attempts) >= 4)
    assert h.consumer.commits == []  # not the failed batch of partition 0, nor what partition 1 delivered
    assert h.consumer.closed


def test_lag_is_measured_from_the_first_offset_not_yet_durable() -> None:
    h = Harness({4: [encoded(f"s{i}") for i in range(7)]}, app_id="lagtest")
    h.writer.down = True
    labels = {"group": "lagtest-sink", "topic": TOPIC, "partition": "4"}
    with h:
        wait_for(lambda: len(h.writer.attempts) >= 2)
        assert REGISTRY.get_sample_value("metering_consumer_lag_messages", labels) == 7
        h.writer.down = False
        wait_for(lambda: h.committed() == {4: 7})
        wait_for(lambda: REGISTRY.get_sample_value("metering_consumer_lag_messages", labels) == 0)


def test_backoff_doubles_with_jitter_and_stays_bounded() -> None:
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.2)
    assert [b.delay(n, rand=lambda: 0.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(3, rand=lambda: 1.0) == pytest.approx(1.6)
    assert all(0.4 <= b.delay(n) <= 30.0 for n in range(1, 60))


def test_decode_record_returns_a_reason_for_bad_input() -> None:
    assert decode_record(encoded("ok")) == record("ok")
    assert str(decode_record(b"[1]")).startswith("not a billing session record")
    assert str(decode_record(b"\xff")).startswith("not JSON")
    bad_index = msgspec.json.encode(msgspec.structs.replace(record("i"), session_index=-1))
    assert "session_index" in str(decode_record(bad_index))
