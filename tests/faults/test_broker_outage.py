"""The broker stopped for 30 s and started again while producers and workers keep going."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.local_kafka import LocalKafka
from pipeline.infra.settings import Settings
from pipeline.rules.config import DAY
from tests.faults.harness import (
    Replay,
    StoreProcess,
    WorkerPool,
    check_exact,
    clock_closers,
    ensure_pipeline_topics,
    keyed,
    occurred_ms,
    traffic_lines,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 81
RATE = 100.0  # events/s: the replay (35 s) spans the outage
STOP_AFTER_S = 3.0
OUTAGE_S = 30.0


def test_broker_stopped_30s_while_producers_and_workers_keep_going(
    stack_settings: Settings, own_broker: LocalKafka, tmp_path: Path
) -> None:
    """Producers buffer and retry, the worker and the sink reconnect: the result is exactly compute's.

    A partition that receives nothing for ``idle_partition_seconds`` lets its clock follow the
    wall clock (R9), which would make the rest of this old replay late. Here the idle period
    is longer than the outage, so the outage is only an outage; the replay ends with test
    events a day later on every partition (``clock_closers``) to finalize by event time.
    """
    settings = replace(stack_settings, kafka_bootstrap=own_broker.bootstrap, idle_partition_seconds=120.0)
    ensure_pipeline_topics(settings)
    lines = traffic_lines(3500, seed=SEED)
    closers = clock_closers(settings, max(map(occurred_ms, lines)) + DAY)
    store = StoreProcess(settings, tmp_path)
    pool = WorkerPool(settings, tmp_path)
    try:
        store.start()
        (worker,) = pool.start(1)
        pool.metrics_url(worker)
        pool.supervise()
        replay = Replay(settings, keyed(settings, lines + closers), rate=RATE).start()
        time.sleep(STOP_AFTER_S)
        own_broker.stop()
        stopped = time.monotonic()
        sent_at_stop = replay.sent
        time.sleep(OUTAGE_S)
        own_broker.start(timeout=120)
        print(f"broker down {time.monotonic() - stopped:.1f} s; {replay.sent - sent_at_stop} events sent meanwhile")
        assert replay.sent - sent_at_stop >= 0.8 * RATE * OUTAGE_S, "the producer kept going during the outage"
        replay.join(timeout=300)
        check_exact(
            settings,
            lines + closers,
            tmp_path,
            stop_store=store.stop,
            diagnostics=lambda: pool.logs() + store.logs(),
            timeout=180,
        )
        print(f"worker exits during the scenario: {pool.exits} (restarted by the supervisor)")
    finally:
        pool.close()
        store.close()
