"""One real Kafka broker per test session, and uuid-named topics for each test.

Set METERING_TEST_KAFKA_BOOTSTRAP to use an existing cluster instead of starting the local one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.local_kafka import LocalKafka
from pipeline.settings import Settings, Topics


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
