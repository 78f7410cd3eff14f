"""The whole stack, broker included, SIGKILLed mid-replay and started again with `metering run`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devtools.local_kafka import LocalKafka, free_port, running_broker
from pipeline.infra.settings import Settings
from tests.faults.harness import (
    MeteringRun,
    check_exact,
    expected_sessions,
    keyed,
    produce_all,
    topic_count,
    traffic_lines,
    write_lines,
)
from tests.support import T0, wait_until

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


def _produce_command(run: MeteringRun, lines: list[bytes], path: Path) -> None:
    """`metering produce --file` beside the run, with its settings but no METERING_KAFKA_BOOTSTRAP, as a user does."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "produce", "--file", str(write_lines(path, lines))],
        env=run.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_killed_process_group_takes_its_broker_and_no_stack_meters_into_another_data_directory(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """Issue 13: `kill -9` of the process group of `metering run`, then a run on another data directory and the same.

    The broker the run started (in a session of its own, so the signal to the group misses it) stops
    with its parent. Another data directory's broker then sits on the port the runs prefer: the next
    run on another data directory starts its own on a free port, `metering produce` finds it there,
    and fresh events dated in the past are metered exactly; the run on the first data directory
    replays what it had and is exact too. The other broker receives nothing.
    """
    port = free_port()

    def on(directory: Path) -> Settings:
        return replace(
            stack_settings,
            data_dir=directory,
            clickhouse_url=f"chdb://{directory / 'clickhouse'}",
            local_kafka_port=port,
            workers=1,
        )

    first, second = on(tmp_path / "first"), on(tmp_path / "second")
    for directory in ("logs-1", "logs-2", "logs-3"):
        (tmp_path / directory).mkdir()
    lines = traffic_lines(4000, seed=SEED + 1)
    fresh = traffic_lines(3000, seed=SEED + 2, start_ms=T0 - 30 * 86_400_000)
    runs = [MeteringRun(first, tmp_path / "logs-1", own_broker=True)]
    foreign: LocalKafka | None = None
    try:
        runs[0].start(timeout=300)
        own = running_broker(first.data_dir / "kafka")
        assert own is not None
        assert own.port == port, "the preferred port was free"
        _produce_command(runs[0], lines, tmp_path / "first.jsonl")
        mine = replace(first, kafka_bootstrap=own.bootstrap)
        topic = first.topics.billing_sessions
        total = len(expected_sessions(lines))
        wait_until(lambda: topic_count(mine, topic) >= total // 4, 180, "a quarter of the sessions emitted")
        pids = runs[0].kill(broker=False)  # waits until every pid, the broker's included, is gone
        assert own.pid in pids
        assert running_broker(first.data_dir / "kafka") is None

        foreign = LocalKafka(tmp_path / "foreign-kafka", port=port, heap_mb=256)
        foreign.start(timeout=180)  # another data directory's broker on the preferred port
        runs.append(MeteringRun(second, tmp_path / "logs-2", own_broker=True))
        runs[1].start(timeout=300)
        theirs = running_broker(second.data_dir / "kafka")
        assert theirs is not None
        assert theirs.port != port
        assert theirs.cluster_id != foreign.cluster_id
        assert f"port {port} is taken by another process" in (tmp_path / "logs-2" / "run-1.log").read_text()
        _produce_command(runs[1], fresh, tmp_path / "fresh.jsonl")
        check_exact(second, fresh, tmp_path, stop_store=runs[1].stop, diagnostics=runs[1].logs, timeout=240)
        foreign_topics = AdminClient({"bootstrap.servers": foreign.bootstrap}).list_topics(timeout=10).topics
        assert first.topics.turns not in foreign_topics, "nothing went to the other broker"

        runs.append(MeteringRun(first, tmp_path / "logs-3", own_broker=True))
        runs[2].start(timeout=300)
        check_exact(first, lines, tmp_path, stop_store=runs[2].stop, diagnostics=runs[2].logs, timeout=240)
    finally:
        for run in runs:
            run.close()
        if foreign is not None:
            foreign.stop()
