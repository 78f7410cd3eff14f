"""A zombie worker: frozen mid-replay while another instance takes over its transactional id and partitions.

The stale instance (SIGSTOP) is replaced by a new process with the same ``--instance``: its
``init_transactions`` fences the old producer (aborting its open transaction) and its static
group membership takes the partitions over. When the zombie wakes up (SIGCONT), its next
transaction or poll fails fatally: it stops without committing anything, and the result is
exactly compute's.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from pipeline.stream.worker import EXIT_FENCED
from tests.faults.harness import Replay, StoreProcess, WorkerPool, check_exact, keyed, scrape, traffic_lines
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 31
RATE = 400.0  # events/s: the replay lasts 10 s


def test_a_zombie_worker_is_fenced_and_stops_and_the_result_is_exact(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    settings = stack_settings
    lines = traffic_lines(4000, seed=SEED)
    store.start()
    zombie = pool.start_instance(0)
    zombie_url = pool.metrics_url(zombie)
    replay = Replay(settings, keyed(settings, lines), rate=RATE).start()
    wait_until(lambda: scrape(zombie_url, "metering_events_received_total") > 500, 60, "the first instance to meter")
    zombie.send_signal(signal.SIGSTOP)
    print(f"instance 0 (pid {zombie.pid}) frozen after {replay.sent} events were sent")
    try:
        successor = pool.start_instance(0)
        successor_url = pool.metrics_url(successor)
        wait_until(
            lambda: scrape(successor_url, "metering_events_received_total") > 0, 90, "the new instance 0 to meter"
        )
    finally:
        zombie.send_signal(signal.SIGCONT)
    code = zombie.wait(60)
    assert code == EXIT_FENCED, f"the zombie exited with {code}:\n{pool.logs()}"
    assert "fenced" in pool.log_path(pool.processes.index(zombie)).read_text()
    time.sleep(0.5)
    assert successor.poll() is None, pool.logs()
    replay.join()
    check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
