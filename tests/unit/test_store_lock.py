"""The data directory's lock protocol (``cli.store_lock``) and how readers reach the store through it.

``flock`` locks belong to open files, so a second open in this process conflicts as another
process would; where the point is a holder that dies (the kernel lets its lock go) or is named,
the store is a ``python -c`` child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli.service import StoreEndpoints, discovery_file
from cli.store_lock import (
    DataDirBusyError,
    Holder,
    ReaderHold,
    StoreLock,
    holder,
    lock_file,
    process_start_time,
    try_reader_hold,
)
from cli.usage_command import StoreBusyError, reach_store
from pipeline.infra.settings import Settings

HOLD_AS_STORE = """
import sys, time
from pathlib import Path
from cli.store_lock import StoreLock
lock = StoreLock.acquire(Path(sys.argv[1]), "metering run")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def store_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that owns ``tmp_path`` as a starting store would, for 60 s."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_AS_STORE, str(tmp_path), "60"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_store_is_refused_naming_the_first(tmp_path: Path, store_process: subprocess.Popen[str]) -> None:
    with pytest.raises(DataDirBusyError, match=rf"another metering service \(metering run, pid {store_process.pid}"):
        StoreLock.acquire(tmp_path, "metering sink", readers_wait=5)
    found = holder(tmp_path)
    assert found is not None
    assert (found.pid, found.command) == (store_process.pid, "metering run")


def test_readers_are_refused_while_a_store_owns_the_data_directory(
    tmp_path: Path, store_process: subprocess.Popen[str]
) -> None:
    assert try_reader_hold(tmp_path) is None
    store_process.kill()
    store_process.wait()
    hold = try_reader_hold(tmp_path)  # the kernel let go of a killed store's lock
    assert hold is not None
    hold.release()


def test_a_store_waits_for_readers_and_new_readers_wait_for_it(tmp_path: Path) -> None:
    reader = try_reader_hold(tmp_path)
    assert reader is not None
    said: list[str] = []
    acquired: list[StoreLock] = []
    store = threading.Thread(
        target=lambda: acquired.append(StoreLock.acquire(tmp_path, "metering run", on_wait=said.append))
    )
    store.start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said, "the store says it waits"
    assert "metering usage" in said[0]
    assert try_reader_hold(tmp_path) is None, "a new reader gives the waiting store its turn"
    assert not acquired
    reader.release()
    store.join(timeout=10)
    assert acquired
    assert json.loads(lock_file(tmp_path).read_text())["command"] == "metering run"
    assert not (tmp_path / "run" / "store.starting").exists()
    acquired[0].release()
    assert lock_file(tmp_path).read_text() == ""
    again = try_reader_hold(tmp_path)
    assert again is not None
    again.release()


def test_readers_that_never_let_go_make_the_store_give_up_with_one_line(tmp_path: Path) -> None:
    with try_reader_hold(tmp_path), pytest.raises(DataDirBusyError, match="held it for 0 s"):
        StoreLock.acquire(tmp_path, "metering run", readers_wait=0.3)


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_a_reader_waits_for_a_starting_store_and_then_asks_it(
    tmp_path: Path, store_process: subprocess.Popen[str]
) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    said: list[str] = []

    def serve_later() -> None:  # the store announces its API after a while, as `metering run` does once it serves
        time.sleep(1.0)
        endpoints = StoreEndpoints(store_process.pid, api, f"{api}/metrics", settings.clickhouse_url, "metering")
        discovery_file(settings).write_text(json.dumps(asdict(endpoints)))

    threading.Thread(target=serve_later).start()
    try:
        assert reach_store(settings, on_wait=said.append, wait_seconds=30) == api
    finally:
        server.shutdown()
    assert len(said) == 1
    assert f"metering run, pid {store_process.pid}" in said[0]
    assert "waiting for the metering service starting on" in said[0]


def test_a_reader_gives_up_with_one_line_when_the_store_does_not_serve(
    tmp_path: Path, store_process: subprocess.Popen[str]
) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}")
    with pytest.raises(StoreBusyError, match=r"did not serve within 1 s") as info:
        reach_store(settings, wait_seconds=1)
    assert f"pid {store_process.pid}" in str(info.value)
    assert "\n" not in str(info.value)


def test_without_a_store_a_reader_opens_the_database_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}")
    reached = reach_store(settings, wait_seconds=1)
    assert isinstance(reached, ReaderHold)
    with pytest.raises(DataDirBusyError):  # while it reads, a store waits (here: gives up at once)
        StoreLock.acquire(tmp_path, "metering run", readers_wait=0)
    assert try_reader_hold(tmp_path) is None, "readers take turns: chDB lets one process open the database"
    with pytest.raises(StoreBusyError, match="another command has read the embedded database"):
        reach_store(settings, wait_seconds=0.5)
    reached.release()
    StoreLock.acquire(tmp_path, "metering run", readers_wait=0).release()
    assert os.listdir(tmp_path / "run") == ["store.lock"]


# -- a store SIGKILLed, its pid reused ------------------------------------------------------------------------------


@pytest.fixture
def impostor() -> Iterator[subprocess.Popen[bytes]]:
    """A Python process that got the pid a dead store had (this machine's pid_max may be 32768)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    yield process
    process.kill()
    process.wait()


def test_a_store_starts_after_a_sigkilled_one_whose_pid_was_reused(
    tmp_path: Path, impostor: subprocess.Popen[bytes]
) -> None:
    """The store was SIGKILLed: the kernel dropped its flock but store.lock still names it (here in the format
    before start times were recorded). A reader holds the lock for a moment (metering usage) and clears the stale
    name as it takes it; the new store waits for the reader instead of refusing at once, naming a store that does
    not exist."""
    path = lock_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": impostor.pid, "command": "metering run", "since": time.time() - 3600}))
    hold = try_reader_hold(tmp_path)
    assert hold is not None, "the reader gets the lock: the kernel released the dead store's flock"
    assert path.read_text() == "", "the reader cleared the dead store's name"
    threading.Timer(0.5, hold.release).start()  # a short read
    owned = StoreLock.acquire(tmp_path, "metering run", readers_wait=10)
    try:
        found = holder(tmp_path)
        assert found is not None
        assert (found.pid, found.started) == (os.getpid(), process_start_time(os.getpid()))
    finally:
        owned.release()


def test_a_holder_is_believed_only_with_its_own_start_time(
    tmp_path: Path, impostor: subprocess.Popen[bytes]
) -> None:
    """No reader came by: the lock file still names the dead store, whose pid a live Python process now has. The
    recorded start time is not that process's: nobody holds the data directory, and the next store starts."""
    started = process_start_time(impostor.pid)
    assert started is not None
    path = lock_file(tmp_path)
    path.parent.mkdir(parents=True)
    dead = Holder(impostor.pid, "metering run", time.time() - 3600, started - 500)
    path.write_text(json.dumps(asdict(dead)))
    assert holder(tmp_path) is None
    StoreLock.acquire(tmp_path, "metering run", readers_wait=1).release()
    path.write_text(json.dumps(asdict(Holder(impostor.pid, "metering run", time.time(), started))))
    assert holder(tmp_path) == Holder(impostor.pid, "metering run", json.loads(path.read_text())["since"], started)
