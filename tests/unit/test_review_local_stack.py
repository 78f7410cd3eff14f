"""Review reproductions (branch `review`): the local stack's files left behind by a SIGKILL.

No broker here: a process whose command line looks like another data directory's Kafka JVM (or
like a Python process) stands in for the process that reused a dead one's pid. This machine's
pid_max is 32768, so pids come round quickly. Marked ``xfail(strict=True)`` while open;
``pytest --runxfail`` shows them failing on main.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.store_lock import Holder, StoreLock, lock_file, try_reader_hold
from pipeline.local_kafka import CONFIG_FILE, MAIN_CLASS, PID_FILE, STATE_FILE, running_broker, stop_running_broker


@pytest.fixture
def other_data_dirs_broker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process with a Kafka JVM's command line, started for ANOTHER data directory."""
    other_config = tmp_path / "other-data-dir" / "kafka" / CONFIG_FILE
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", MAIN_CLASS, str(other_config)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while MAIN_CLASS.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0"):
        assert time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.01)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.xfail(strict=True, reason="review: running_broker trusts a stale pid file naming any Kafka JVM")
def test_metering_run_never_stops_another_data_directorys_broker(
    tmp_path: Path, other_data_dirs_broker: subprocess.Popen[bytes]
) -> None:
    """`metering run` was SIGKILLed: its broker died with it (PDEATHSIG) but ``kafka/broker.pid`` stayed.
    The pid now belongs to another data directory's broker. ``running_broker`` only checks that the pid is
    *a* Kafka JVM, so the next `metering run` here "stops the broker left running" -- the other one -- and
    `metering usage/plans/orders` point their bootstrap at this data directory's old port."""
    mine = tmp_path / "my-data-dir" / "kafka"
    mine.mkdir(parents=True)
    (mine / PID_FILE).write_text(f"{other_data_dirs_broker.pid}\n")
    (mine / STATE_FILE).write_text("port=19092\ncontroller.port=19093\ncluster.id=mine\n")
    found = running_broker(mine)
    if found is not None:  # what pipeline/run.py::_broker then does with it
        stop_running_broker(found, timeout=5)
    time.sleep(0.2)
    assert other_data_dirs_broker.poll() is None, "metering run killed another data directory's broker"
    assert found is None


@pytest.mark.xfail(strict=True, reason="review: a stale store.lock naming a reused (python) pid blocks the store")
def test_a_store_starts_after_a_sigkilled_one_whose_pid_was_reused(tmp_path: Path) -> None:
    """The store was SIGKILLed: the kernel dropped its flock but store.lock still names it. A reader holds the
    lock for a moment (metering usage); a python process got the dead store's pid. The new store must wait
    for the reader, not refuse at once naming a store that does not exist."""
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    try:
        path = lock_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"pid": impostor.pid, "command": "metering run", "since": time.time() - 3600}))
        hold = try_reader_hold(tmp_path)
        assert hold is not None, "the reader gets the lock: the kernel released the dead store's flock"
        threading.Timer(0.5, hold.release).start()  # a short read
        assert Holder  # (the file names the dead store as its holder)
        owned = StoreLock.acquire(tmp_path, "metering run", readers_wait=10)
        owned.release()
    finally:
        impostor.kill()
        impostor.wait()
