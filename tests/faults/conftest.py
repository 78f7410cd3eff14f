"""Fixtures of the fault scenarios: the session's broker, and per test its own topics, workers and store process.

Every test module here is marked ``faults`` and ``integration`` (``pytest -m faults`` runs
them alone; plain ``pytest``, i.e. ``make test``, runs them with the rest). The helpers are in
harness.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.local_kafka import LocalKafka
from pipeline.infra.settings import Settings
from tests.faults.harness import StoreProcess, WorkerPool
from tests.integration.conftest import create_topics, settings

__all__ = ["create_topics", "own_broker", "pool", "settings", "stack_settings", "store"]


@pytest.fixture
def stack_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test's settings with a chDB directory of its own: the store runs in another process.

    The librdkafka consumers (the sink's and the workers') of a SIGKILLed process hold their
    partitions until their session times out (45 s by default for the sink, 15 s for the
    workers); 10 s keeps the restarts of these scenarios quick.
    """
    quick_rejoin = {"session.timeout.ms": "10000", "heartbeat.interval.ms": "1000"}
    return replace(
        settings,
        clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",
        kafka_config={**settings.kafka_config, **quick_rejoin},
    )


@pytest.fixture
def pool(stack_settings: Settings, tmp_path: Path) -> Iterator[WorkerPool]:
    with closing(WorkerPool(stack_settings, tmp_path)) as workers:
        yield workers


@pytest.fixture
def store(stack_settings: Settings, tmp_path: Path) -> Iterator[StoreProcess]:
    """The store process, not started yet (``store.start(failpoints=...)``)."""
    with closing(StoreProcess(stack_settings, tmp_path)) as process:
        yield process


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of the test's own (its data dir, free ports), started; for scenarios that stop or kill a broker.

    The session's broker serves every other test and is never stopped here.
    """
    broker = LocalKafka(tmp_path / "own-kafka", heap_mb=256)
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()
