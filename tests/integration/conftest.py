"""uuid-named topics, groups and databases for each test, on the session's one real broker.

The broker (``kafka_bootstrap``) is in tests/conftest.py, shared with tests/faults; set
METERING_TEST_KAFKA_BOOTSTRAP to use an existing cluster instead of starting the local one.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cli.service import StoreEndpoints, serve_store
from pipeline.infra.settings import Settings
from tests.processes import ChildProcesses
from tests.support import pipeline_settings


@pytest.fixture
def create_topics(kafka_bootstrap: str) -> Callable[[dict[str, int]], None]:
    def create(topics: dict[str, int]) -> None:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in topics.items()])
        for future in futures.values():
            future.result(timeout=30)

    return create


@pytest.fixture
def settings(
    kafka_bootstrap: str, chdb_path: Path, tmp_path: Path, create_topics: Callable[[dict[str, int]], None]
) -> Settings:
    """Settings of a pipeline of the test's own: uuid-named topics, group and database."""
    base = pipeline_settings(kafka_bootstrap, chdb_path, tmp_path)
    create_topics(dict.fromkeys(base.topics.all, base.partitions))
    return base


class Workers(ChildProcesses):
    """Stream workers (``python -m cli worker``)."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(settings, log_dir, "worker", "worker metrics")

    def start(self, count: int = 1, **extra_env: str) -> list[subprocess.Popen[bytes]]:
        return [self.spawn(**extra_env) for _ in range(count)]


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    with closing(Workers(settings, tmp_path)) as pool:
        yield pool


@pytest.fixture
def store(settings: Settings) -> Iterator[StoreEndpoints]:
    """The store process's work (sink, usage API, ClickHouse) in a thread of the test process."""
    stop = threading.Event()
    ready: list[StoreEndpoints] = []
    thread = threading.Thread(target=serve_store, args=(settings, stop, ready.append), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not ready and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    assert ready, "the store did not start"
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=60)


@pytest.fixture
def order_processors(settings: Settings, tmp_path: Path) -> Iterator[ChildProcesses]:
    """Order processors (``python -m cli orders process``), killed at the end if still running."""
    with closing(ChildProcesses(settings, tmp_path, "orders", "order metrics")) as pool:
        yield pool
