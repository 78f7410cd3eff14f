"""A batch whose state changes the brokers did not acknowledge is never committed.

faust's commit does not wait for the table changelog (its buffer's flush gives up after
0.1 s): were a batch committed with a state change lost, a restart would restore state
without it and bill from there. The worker waits for every changelog acknowledgement before
the batch ends, and exits without committing when one fails; the ``worker.changelog``
failpoint makes that happen at a batch in the middle of a live replay.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.faults.harness import Replay, StoreProcess, WorkerPool, check_exact, keyed, traffic_lines
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 71
RATE = 500.0  # events/s: the replay lasts 6 s
FAILING_BATCH = 8
EXIT_BATCH_FAILED = 70


def test_state_changes_not_acknowledged_end_the_worker_before_its_commit(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    settings = stack_settings
    lines = traffic_lines(3000, seed=SEED)
    store.start()
    (worker,) = pool.start(1, METERING_FAILPOINTS=f"worker.changelog=fail:3600@{FAILING_BATCH}")
    pool.metrics_url(worker)
    pool.supervise()  # the replacement runs without the failpoint
    replay = Replay(settings, keyed(settings, lines), rate=RATE).start()
    wait_until(lambda: bool(pool.exits), 60, "the worker to exit on the unacknowledged state changes")
    replay.join()
    check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
    assert pool.exits == [EXIT_BATCH_FAILED]
    assert "ChangelogNotDurable: failpoint worker.changelog" in pool.logs()
