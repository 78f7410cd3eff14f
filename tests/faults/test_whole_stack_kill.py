"""The whole stack, broker included, SIGKILLed mid-replay and started again with `metering run`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.local_kafka import free_port
from pipeline.settings import Settings
from tests.faults.harness import (
    MeteringRun,
    check_exact,
    expected_sessions,
    keyed,
    produce_all,
    topic_count,
    traffic_lines,
)
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 91


def test_whole_stack_sigkilled_mid_replay_then_metering_run_again(stack_settings: Settings, tmp_path: Path) -> None:
    """Broker, workers and store die at once, as in a power cut, with a quarter of the sessions emitted.

    ``metering run`` restarts the broker on its data, the workers from their last commit and
    the sink from its own: no billing session is lost, none is doubled.
    """
    settings = replace(stack_settings, kafka_bootstrap=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "run", workers=1)
    lines = traffic_lines(6000, seed=SEED)
    total = len(expected_sessions(lines))
    run = MeteringRun(settings, tmp_path)
    try:
        run.start()
        produce_all(settings, keyed(settings, lines))
        topic = settings.topics.billing_sessions
        wait_until(lambda: topic_count(settings, topic) >= total // 4, 120, "a quarter of the sessions emitted")
        emitted = topic_count(settings, topic)
        pids = run.kill()
        print(f"killed {len(pids)} processes (broker pid {pids[0]}) with {emitted} of {total} sessions emitted")
        assert emitted < total, "the kill came mid-replay"
        run.start()
        check_exact(settings, lines, tmp_path, stop_store=run.stop, diagnostics=run.logs, timeout=180)
    finally:
        run.close()
