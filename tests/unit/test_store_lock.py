"""The data directory's lock protocol (``consumers.store_lock``) and how readers reach the store through it.

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

from consumers.service import StoreEndpoints, discovery_file
from consumers.store_lock import DataDirBusyError, ReaderHold, StoreLock, holder, lock_file, try_reader_hold
from consumers.usage_command import StoreBusyError, reach_store
from pipeline.settings import Settings

HOLD_AS_STORE = """
import sys, time
from pathlib import Path
from consumers.store_lock import StoreLock
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
