"""Fixtures shared by unit, integration and fault tests.

chDB can open one directory per process, so every test that touches ClickHouse in this pytest
process uses the one session-wide path (``<basetemp>/chdb``), with a uuid-named database each.

One real Kafka broker per test session (``kafka_bootstrap``), started on first use; set
METERING_TEST_KAFKA_BOOTSTRAP to use an existing cluster instead of starting the local one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.clickhouse import Client, connect
from devtools.local_kafka import LocalKafka
from tests.support import migrated_database


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("METERING_TEST_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.ensure_jars()
    try:
        yield broker.start(timeout=120)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "chdb"


@pytest.fixture(scope="session")
def chdb_client(chdb_path: Path) -> Iterator[Client]:
    """The process's embedded chDB."""
    client = connect(f"chdb://{chdb_path}", "metering")
    yield client
    client.close()


@pytest.fixture
def database(chdb_client: Client) -> Iterator[str]:
    """A migrated database of the test's own."""
    with migrated_database(chdb_client) as name:
        yield name
