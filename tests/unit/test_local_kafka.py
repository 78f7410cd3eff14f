"""Which broker is a data directory's own (``devtools.local_kafka.running_broker``), without a broker.

A process whose command line looks like a Kafka JVM's stands in for a broker: what `metering run`,
`metering produce|usage|plans|orders` (``cli.with_data_dir_broker``) and ``LocalKafka.start`` decide
from a pid file depends only on that command line. This machine's pid_max may be 32768, so pids come
round quickly: a pid file left by a SIGKILLed run may name another data directory's broker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.local_kafka import (
    CONFIG_FILE,
    MAIN_CLASS,
    PID_FILE,
    STATE_FILE,
    LocalKafka,
    LocalKafkaError,
    _is_kafka_process,
    running_broker,
    stop_running_broker,
)

StandIn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """``stand_in(config, cwd=None)``: a long-lived process with a Kafka JVM's command line for ``config``."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-c", "import time; time.sleep(120)", MAIN_CLASS, config]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=cwd)
        started.append(proc)
        deadline = time.monotonic() + 30
        while MAIN_CLASS.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0"):
            assert time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def left_by_a_dead_run(kafka_dir: Path, pid: int) -> None:
    """What a SIGKILLed `metering run` leaves: its broker died with it (PDEATHSIG), its pid file stayed."""
    kafka_dir.mkdir(parents=True, exist_ok=True)
    (kafka_dir / PID_FILE).write_text(f"{pid}\n")
    (kafka_dir / STATE_FILE).write_text("port=19092\ncontroller.port=19093\ncluster.id=mine\n")


def test_metering_run_never_stops_another_data_directorys_broker(tmp_path: Path, stand_in: StandIn) -> None:
    """The dead run's pid now belongs to another data directory's broker: it is not this data directory's, so
    `metering run` does not stop it and the commands do not point their bootstrap at this directory's old port."""
    other = stand_in(str(tmp_path / "other-data-dir" / "kafka" / CONFIG_FILE))
    mine = tmp_path / "my-data-dir" / "kafka"
    left_by_a_dead_run(mine, other.pid)
    assert running_broker(mine) is None
    assert _is_kafka_process(other.pid), "it is a Kafka JVM, only not this data directory's"
    LocalKafka(mine)._refuse_foreign_broker()  # start() goes ahead: the pid file is stale (no error)
    time.sleep(0.2)
    assert other.poll() is None


def test_the_data_directorys_own_broker_is_found_and_stopped(tmp_path: Path, stand_in: StandIn) -> None:
    """Its own broker (started with its server.properties, by a relative path from another working directory
    too) is found, refused as a second start, and stopped by `metering run`."""
    mine = tmp_path / "data" / "kafka"
    mine.mkdir(parents=True)
    own = stand_in(str(Path("data") / "kafka" / CONFIG_FILE), cwd=tmp_path)
    left_by_a_dead_run(mine, own.pid)
    found = running_broker(mine)
    assert found is not None
    assert (found.pid, found.bootstrap) == (own.pid, "127.0.0.1:19092")
    with pytest.raises(LocalKafkaError, match="already runs"):
        LocalKafka(mine)._refuse_foreign_broker()
    stop_running_broker(found, timeout=5)
    assert own.wait(timeout=10) is not None
    assert not (mine / PID_FILE).exists()


def test_a_pid_that_is_no_kafka_at_all_is_nobodys_broker(tmp_path: Path, stand_in: StandIn) -> None:
    mine = tmp_path / "kafka"
    left_by_a_dead_run(mine, 2**22 + 7)  # no such process
    assert running_broker(mine) is None
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    try:
        left_by_a_dead_run(mine, python.pid)
        assert running_broker(mine) is None
    finally:
        python.kill()
        python.wait()
