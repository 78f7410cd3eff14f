"""ClickHouse unavailable for a while: the sink backs off, keeps its position, loses nothing, then catches up."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import (
    Replay,
    StoreProcess,
    WorkerPool,
    check_exact,
    committed,
    keyed,
    traffic_lines,
)
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 41
OUTAGE_S = 20.0
SAMPLE_S = 10.0  # the billing-sessions sink fails a few seconds after the first failing insert


def retry_delays(log: str, group: str) -> list[float]:
    """``retry_in_s`` of the sink's "insert failed" log lines for ``group``, in order."""
    out = []
    for line in log.splitlines():
        if line.startswith("{") and '"ClickHouse sink insert failed' in line:
            entry = json.loads(line)
            if entry.get("group") == group:
                out.append(float(entry["retry_in_s"]))
    return out


def test_clickhouse_outage_backs_off_keeps_position_and_catches_up(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    """Every insert fails for 20 s (``sink.insert=fail:20@3``, the error the client raises when ClickHouse is down).

    While it lasts: the retries of the kept batch wait longer each time, no offset of the
    sink's group moves, and the lag gauge grows with what the workers keep emitting.
    Afterwards the lag returns to 0 and the store holds exactly what compute bills, each
    session once.
    """
    settings = stack_settings
    group, topic = f"{settings.app_id}-sink", settings.topics.billing_sessions
    lines = traffic_lines(4000, seed=SEED)
    store.start(failpoints=f"sink.insert=fail:{OUTAGE_S:g}@3")
    pool.start(1)
    replay = Replay(settings, keyed(settings, lines), rate=400.0).start()

    def lag() -> float:
        return store.metric("metering_consumer_lag_messages", group=group)

    wait_until(lambda: lag() > 0 and store.metric("metering_sink_insert_failures_total") > 0, 60, "a failed insert")
    sampled_from = time.monotonic()
    position = committed(settings, group, topic)
    lags = [lag()]
    while time.monotonic() - sampled_from < SAMPLE_S:
        time.sleep(1.0)
        lags.append(lag())
    assert committed(settings, group, topic) == position, "the sink committed during the outage"
    print(f"during the outage: lag {lags[0]:.0f} -> {lags[-1]:.0f} messages of {topic}")
    assert lags[-1] > lags[0], "the lag gauge shows the backlog growing during the outage"
    delays = retry_delays(store.logs(chars=10**7), group)
    print(f"retries of the failed batch after {delays} s")
    assert len(delays) >= 3, "the sink retries the batch while ClickHouse is down"
    assert all(b > a for a, b in itertools.pairwise(delays)), "each retry waits longer (exponential back-off)"

    replay.join()

    def stop_store() -> None:
        wait_until(
            lambda: store.metric("metering_consumer_lag_messages", group=group) == 0, 60, "the sink's lag to be 0"
        )
        assert committed(settings, group, topic) != position, "the sink committed again after the outage"
        store.stop()

    check_exact(settings, lines, tmp_path, stop_store=stop_store, diagnostics=lambda: pool.logs() + store.logs())
