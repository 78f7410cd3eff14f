"""uuid-named topics, groups and databases for each test, on the session's one real broker.

The broker (``kafka_bootstrap``) is in tests/conftest.py, shared with tests/faults; set
METERING_TEST_KAFKA_BOOTSTRAP to use an existing cluster instead of starting the local one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from consumers.service import StoreEndpoints, serve_store
from pipeline.settings import Settings, Topics


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
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"{value}-{suffix}" for name, value in vars(Topics()).items()})
    base = Settings(
        data_dir=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=f"chdb://{chdb_path}",
        clickhouse_database=f"it_{suffix}",
        topics=topics,
        partitions=6,
        app_id=f"metering-{suffix}",
        api_port=0,
        metrics_port=0,
        idle_partition_seconds=2.0,
        batch_seconds=0.2,
        sink_batch_seconds=0.2,
    )
    create_topics(dict.fromkeys(topics.all, base.partitions))
    return base


class Workers:
    """Stream workers as real child processes (``python -m pipeline worker``), as in production."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, **extra_env: str) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            env = {**os.environ, **self.settings.to_env(), "METERING_LOG_FORMAT": "json", **extra_env}
            log = (self.log_dir / f"worker-{len(self.processes)}.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            self.processes.append(process)
            started.append(process)
        return started

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
        """SIGTERM, as an operator or an orchestrator would; the worker must exit by itself."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    try:
        yield pool
    finally:
        pool.close()


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
