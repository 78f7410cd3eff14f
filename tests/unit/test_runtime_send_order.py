"""A partition of two inputs meets its records in the order they were sent, however they are fetched.

The consumer is a stand-in (the fetch interleaving that matters cannot be forced on a real
broker): it answers ``get_watermark_offsets`` (cached, or as the broker has it) from tables and
records pauses. Everything else
is the real runtime's grouping step; the end-to-end check is ``tests/faults/test_late.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.infra.settings import Settings
from pipeline.runtime import engine
from pipeline.runtime.engine import RuntimeConfig, StreamRuntime, _Partition
from pipeline.runtime.processor import PartitionProcessor, Record, Topology
from pipeline.runtime.state import PartitionStore

TURNS, TRANSFERS = "turns", "transfers"


class FakeConsumer:
    """The log ends the consumer's last fetch saw, per topic (-1: not fetched yet), and the broker's (``broker``)."""

    def __init__(self, highs: dict[str, int]) -> None:
        self.highs = highs
        self.broker: dict[str, int] = {}
        self.asked: list[str] = []
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        if not cached:
            self.asked.append(tp.topic)
            if tp.topic not in self.broker:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            return 0, self.broker[tp.topic]
        return 0, self.highs.get(tp.topic, -1)

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.extend((tp.topic, tp.partition) for tp in tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        self.resumed.extend((tp.topic, tp.partition) for tp in tps)


def _unused(partition: int, store: PartitionStore, now_ms: int) -> PartitionProcessor:
    raise AssertionError("not called by the grouping step")


TOPOLOGY = Topology(name="meter", inputs=(TURNS, TRANSFERS), changelog="meter-changelog", open=_unused)


@pytest.fixture
def runtime(tmp_path: Path) -> StreamRuntime:
    config = RuntimeConfig(
        group="g",
        transactional_id="t-0",
        static_member=False,
        store="memory",
        state_dir=tmp_path,
        batch_size=100,
        batch_seconds=0.1,
        tick_seconds=1.0,
        role="test",
    )
    rt = StreamRuntime(Settings(kafka_bootstrap="127.0.0.1:1"), config, [TOPOLOGY])
    part = _Partition(
        TOPOLOGY,
        0,
        cast(PartitionStore, None),
        cast(PartitionProcessor, None),
        {TURNS: 0, TRANSFERS: 0},
    )
    rt._parts[part.key] = part
    return rt


def rec(topic: str, offset: int, sent: int) -> Record:
    return Record(topic, 0, offset, b"", timestamp=sent)


def step(
    rt: StreamRuntime, records: list[Record], ends: list[tuple[str, int, int]] | None = None, at: float = 0.0
) -> tuple[list[Record], dict[tuple[str, int], int], list[tuple[str, int, int]]]:
    """One batch through the grouping step: what the processor gets, the offsets committed, the ends applied."""
    groups = {("meter", 0): list(records)} if records else {}
    offsets: dict[tuple[str, int], int] = {}
    for r in records:
        offsets[(r.topic, 0)] = r.offset + 1
    applied = rt._in_send_order(groups, offsets, list(ends or []), at)
    return groups.get(("meter", 0), []), offsets, applied


def test_records_wait_for_an_input_not_fetched_yet_and_go_in_send_order_once_it_comes(
    runtime: StreamRuntime,
) -> None:
    consumer = FakeConsumer({TURNS: 3})  # transfers: not fetched yet
    runtime.consumer = cast(Any, consumer)
    turns = [rec(TURNS, 0, 100), rec(TURNS, 1, 200), rec(TURNS, 2, 300)]

    kept, offsets, _ = step(runtime, turns)
    assert kept == []
    assert offsets == {}, "nothing held may be committed"

    consumer.highs[TRANSFERS] = 5
    transfers = [rec(TRANSFERS, 0, 150), rec(TRANSFERS, 1, 250)]
    kept, offsets, _ = step(runtime, transfers, at=1.0)
    assert [(r.topic, r.offset) for r in kept] == [
        (TURNS, 0),
        (TRANSFERS, 0),
        (TURNS, 1),
        (TRANSFERS, 1),
    ], "turns sent after the last transfer delivered wait while transfers has more in the log"
    assert offsets == {(TURNS, 0): 2, (TRANSFERS, 0): 2}

    transfers = [rec(TRANSFERS, 2, 260), rec(TRANSFERS, 3, 270), rec(TRANSFERS, 4, 400)]
    kept, offsets, _ = step(runtime, transfers, at=2.0)
    assert [(r.topic, r.offset) for r in kept] == [(TRANSFERS, 2), (TRANSFERS, 3), (TURNS, 2), (TRANSFERS, 4)]
    assert offsets == {(TURNS, 0): 3, (TRANSFERS, 0): 5}
    assert runtime._parts[("meter", 0)].held == []


def test_a_held_input_keeps_its_log_order_and_its_end_waits_for_it(runtime: StreamRuntime) -> None:
    runtime.consumer = cast(Any, FakeConsumer({TURNS: 3, TRANSFERS: 2}))
    records = [rec(TURNS, 0, 100), rec(TURNS, 1, 300), rec(TURNS, 2, 120), rec(TRANSFERS, 0, 110)]
    kept, offsets, applied = step(runtime, records, ends=[(TURNS, 0, 3)])
    # turns@2 was sent before the cut but after a held record of its own topic: it waits too
    assert [(r.topic, r.offset) for r in kept] == [(TURNS, 0), (TRANSFERS, 0)]
    assert offsets == {(TURNS, 0): 1, (TRANSFERS, 0): 1}
    assert applied == [], "the end of an input with held records is not applied"


def test_an_input_at_its_end_holds_nothing(runtime: StreamRuntime) -> None:
    runtime.consumer = cast(Any, FakeConsumer({TURNS: 2, TRANSFERS: 7}))
    records = [rec(TURNS, 0, 100), rec(TURNS, 1, 300), rec(TRANSFERS, 4, 110)]
    # transfers' log end is past its last record (transaction markers): the consumer said it reached it
    kept, offsets, applied = step(runtime, records, ends=[(TRANSFERS, 0, 7)])
    assert len(kept) == 3
    assert offsets == {(TURNS, 0): 2, (TRANSFERS, 0): 5}
    assert applied == [(TRANSFERS, 0, 7)]


def test_a_hold_ends_after_hold_seconds(runtime: StreamRuntime) -> None:
    runtime.consumer = cast(Any, FakeConsumer({TURNS: 2}))
    turns = [rec(TURNS, 0, 100), rec(TURNS, 1, 200)]
    assert step(runtime, turns, at=0.0)[0] == []
    assert step(runtime, [], at=engine.HOLD_SECONDS / 2)[0] == []
    kept, offsets, _ = step(runtime, [], at=engine.HOLD_SECONDS + 1)
    assert kept == turns
    assert offsets == {(TURNS, 0): 2}


def test_too_many_held_records_pause_the_input_ahead_until_released(
    runtime: StreamRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "HOLD_RECORDS", 2)
    consumer = FakeConsumer({TURNS: 10, TRANSFERS: 1})
    runtime.consumer = cast(Any, consumer)
    assert step(runtime, [rec(TURNS, 0, 100), rec(TURNS, 1, 200)])[0] == []
    assert consumer.paused == [(TURNS, 0)]
    kept, _, _ = step(runtime, [rec(TRANSFERS, 0, 150)])
    assert [(r.topic, r.offset) for r in kept] == [(TURNS, 0), (TRANSFERS, 0), (TURNS, 1)]
    assert consumer.resumed == [(TURNS, 0)]


def test_an_empty_input_the_consumer_knows_nothing_of_is_asked_of_the_broker(runtime: StreamRuntime) -> None:
    """librdkafka reports neither a log end nor a partition end for an empty partition: the broker is asked."""
    consumer = FakeConsumer({TURNS: 3})
    consumer.broker[TRANSFERS] = 0
    runtime.consumer = cast(Any, consumer)
    now = int(time.time() * 1000)
    kept, offsets, _ = step(runtime, [rec(TURNS, 0, now - 1000), rec(TURNS, 1, now - 500), rec(TURNS, 2, now + 60_000)])
    assert consumer.asked == [TRANSFERS]
    assert [r.offset for r in kept] == [0, 1], "what was sent after the broker was asked waits for a newer answer"
    assert offsets == {(TURNS, 0): 2}
    step(runtime, [])
    assert consumer.asked == [TRANSFERS], "asked again only after LOG_END_ASK_MS"


def test_a_released_hold_goes_a_batch_at_a_time_earliest_sent_first(runtime: StreamRuntime) -> None:
    consumer = FakeConsumer({TURNS: 150, TRANSFERS: 2})
    runtime.consumer = cast(Any, consumer)
    turns = [rec(TURNS, i, 10 + i) for i in range(150)]
    assert step(runtime, turns)[0] == [], "transfers not delivered yet"
    assert not runtime._deferred
    kept, offsets, _ = step(runtime, [rec(TRANSFERS, 0, 5), rec(TRANSFERS, 1, 200)])
    # an input with few records goes whole with the first batch (the processor merges by send time)
    assert [(r.topic, r.offset) for r in kept] == [(TRANSFERS, 0), (TRANSFERS, 1), *((TURNS, i) for i in range(100))]
    assert offsets == {(TURNS, 0): 100, (TRANSFERS, 0): 2}
    assert runtime._deferred, "the next batch consumes nothing new"
    kept, offsets, _ = step(runtime, [])
    assert [(r.topic, r.offset) for r in kept] == [(TURNS, i) for i in range(100, 150)]
    assert offsets == {(TURNS, 0): 150}
    assert not runtime._deferred


def test_a_released_hold_of_many_records_on_both_inputs_goes_in_send_order(runtime: StreamRuntime) -> None:
    runtime.consumer = cast(Any, FakeConsumer({TURNS: 150, TRANSFERS: 150}))
    assert step(runtime, [rec(TURNS, i, 2 * i + 1) for i in range(150)])[0] == []
    kept, offsets, _ = step(runtime, [rec(TRANSFERS, i, 2 * i) for i in range(150)])
    assert len(kept) == 100
    assert [(r.topic, r.offset) for r in kept[:3]] == [(TRANSFERS, 0), (TURNS, 0), (TRANSFERS, 1)]
    assert offsets == {(TURNS, 0): 50, (TRANSFERS, 0): 50}
    got = kept
    while runtime._deferred:
        got += step(runtime, [])[0]
    assert [r.timestamp for r in got] == list(range(300)), "every record once, in the order sent"
