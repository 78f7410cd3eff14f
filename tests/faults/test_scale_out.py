"""Three workers in one group: one joins mid-replay, another is SIGKILLed mid-replay and not replaced.

Cooperative-sticky assignment moves only the partitions that change owner; a partition moves
with its state (restored from the changelog before any of its input is applied) and resumes
from the committed offsets; the killed worker's open transaction is aborted by the broker, so
its half-done batch is done again by the new owner. The result is exactly compute's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import Replay, StoreProcess, WorkerPool, check_exact, keyed, scrape, traffic_lines
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 41
RATE = 400.0  # events/s: the replay lasts 15 s


def test_three_workers_one_joining_and_one_sigkilled_mid_replay_give_exactly_compute(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    settings = stack_settings
    lines = traffic_lines(6000, seed=SEED)
    store.start()
    first, second = pool.start(2)
    urls = [pool.metrics_url(first), pool.metrics_url(second)]
    replay = Replay(settings, keyed(settings, lines), rate=RATE).start()
    wait_until(lambda: replay.sent > len(lines) // 4, 60, "a quarter of the replay")
    (third,) = pool.start(1)
    urls.append(pool.metrics_url(third))
    wait_until(lambda: scrape(urls[2], "metering_events_received_total") > 0, 90, "the joining worker to meter")
    print(f"worker 3 joined and metered after {replay.sent} events were sent")
    wait_until(lambda: replay.sent > len(lines) // 2, 60, "half of the replay")
    pool.kill(second)
    print(f"worker 2 SIGKILLed after {replay.sent} events were sent")
    replay.join()
    check_exact(
        settings,
        lines,
        tmp_path,
        stop_store=store.stop,
        diagnostics=lambda: pool.logs() + store.logs(),
        timeout=180,
    )
    time.sleep(0.1)
    assert first.poll() is None, pool.logs()
    assert third.poll() is None, pool.logs()
