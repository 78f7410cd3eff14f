"""A worker's transactions aborted between produce and commit, in the middle of a live replay.

The ``worker.before_commit`` failpoint fails every commit for a few seconds from the 5th: the
batch's billing sessions, changelog records and offsets are in the open transaction, which is
aborted. The worker writes the same batch again in a new transaction (its partitions hold the
batch's state already: nothing is processed twice) until one commits. The sink reads committed
only, so it never sees an aborted session: not even a re-inserted row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import Replay, StoreProcess, WorkerPool, check_exact, keyed, scrape, traffic_lines
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 71
RATE = 500.0  # events/s: the replay lasts 6 s


def test_transactions_aborted_before_commit_are_done_again_exactly_without_a_duplicate_row(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    settings = stack_settings
    lines = traffic_lines(3000, seed=SEED)
    store.start()
    (worker,) = pool.start(1, METERING_FAILPOINTS="worker.before_commit=fail:3@5")
    url = pool.metrics_url(worker)
    replay = Replay(settings, keyed(settings, lines), rate=RATE).start()
    wait_until(lambda: scrape(url, "metering_worker_transactions_aborted_total") > 0, 60, "an aborted transaction")
    replay.join()
    stored = check_exact(
        settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs()
    )
    assert worker.poll() is None or worker.returncode == 0, "the worker aborted and went on, it did not crash"
    assert stored.rows == stored.ids, "no aborted session reached the sink: no row was inserted twice"
    assert "transaction aborted: the batch is written again in a new transaction" in pool.logs()
