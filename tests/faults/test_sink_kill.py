"""The sink SIGKILLed between a ClickHouse insert and its offset commit, then restarted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.infra.settings import Settings
from tests.faults.harness import (
    StoreProcess,
    WorkerPool,
    check_exact,
    committed,
    keyed,
    produce_all,
    read_stored,
    traffic_lines,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def ids_below(settings: Settings, offsets: dict[int, int]) -> set[str]:
    """Billing session ids of the billing-sessions messages before ``offsets`` (what the sink committed)."""
    topic = settings.topics.billing_sessions
    reader = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ids-below", "enable.auto.commit": False}
    )
    out: set[str] = set()
    try:
        left = {p: o for p, o in offsets.items() if o > 0}
        reader.assign([TopicPartition(topic, p, 0) for p in left])
        while left:
            for message in reader.consume(1000, 1.0):
                assert message.error() is None, message.error()
                p, offset = message.partition(), message.offset()
                if p in left and offset < left[p]:
                    out.add(json.loads(message.value())["billing_session_id"])
                    if offset + 1 >= left[p]:
                        del left[p]
    finally:
        reader.close()
    return out


@pytest.mark.parametrize("point", ["sink.after_insert", "counts.recount"])
def test_sink_sigkill_between_insert_and_commit_then_restart(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path, point: str
) -> None:
    """The sink killed after ClickHouse accepted a batch and before Kafka knew: the restart re-reads it, counts it once.

    ``sink.after_insert=kill@2`` SIGKILLs the store process at its second sessions batch, after its
    insert (and its recount) and before its commit; ``counts.recount=kill@2`` at its second block,
    after the insert and before the usage counts were recounted. ClickHouse then holds sessions
    from offsets the group never committed; the restarted sink reads them again and inserts them
    again (absorbed by the insert tokens, then by ReplacingMergeTree and the uniqExact sets) and
    recounts them, so usage (`metering usage`, from usage_counts) equals compute and every id is
    there once.
    """
    settings = stack_settings
    lines = traffic_lines(5000, seed=31)
    store.start(failpoints=f"{point}=kill@2")
    pool.start(1)
    produce_all(settings, keyed(settings, lines))
    assert store.wait_exit(timeout=120) == -9, store.logs()

    at_kill = read_stored(settings)
    offsets = committed(settings, f"{settings.app_id}-sink", settings.topics.billing_sessions)
    uncommitted = at_kill.sessions.keys() - ids_below(settings, offsets)
    print(f"at the kill: {at_kill.final} sessions in ClickHouse, {len(uncommitted)} of them past the committed offsets")
    assert uncommitted, "the kill came after an insert whose offsets were not committed"

    store.start()
    stored = check_exact(
        settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs()
    )
    print(f"{stored.rows} rows for {stored.final} billing sessions (re-inserted rows merge away)")
