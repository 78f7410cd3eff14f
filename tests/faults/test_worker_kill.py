"""A stream worker SIGKILLed at random moments of a replay, then restarted: nothing lost, nothing doubled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import (
    Replay,
    StoreProcess,
    WorkerPool,
    check_exact,
    keyed,
    seeded_moments,
    traffic_lines,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = 4000
RATE = 500.0  # events/s: the replay lasts 8 s


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_worker_sigkill_at_random_moments_then_restart(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path, seed: int
) -> None:
    """A worker SIGKILLed at a seeded random moment of a live replay and started again bills exactly compute's result.

    The kill can land anywhere in a batch: before its outputs are flushed, between the flush and
    the state write, between the state write and the offset commit. The restarted worker takes
    the partitions over once the group notices the dead member, resumes from the last commit,
    and every billing session is in ClickHouse once, with the id the rules engine gives it.
    """
    lines = traffic_lines(EVENTS, seed=seed)
    store.start()
    (worker,) = pool.start(1)
    pool.metrics_url(worker)
    replay = Replay(stack_settings, keyed(stack_settings, lines), rate=RATE).start()
    started = time.monotonic()
    (moment,) = seeded_moments(seed, 1, 0.5, len(lines) / RATE)
    time.sleep(max(0.0, started + moment - time.monotonic()))
    assert worker.poll() is None, pool.logs()
    pool.kill(worker)
    print(f"seed {seed}: worker SIGKILLed {moment:.2f} s into the replay, after {replay.sent} events were sent")
    pool.replace(worker)
    replay.join()
    check_exact(stack_settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
