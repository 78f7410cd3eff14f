"""Thin helpers around the Kafka clients: configuration in one documented order, topics, routing.

Configuration is merged as: our defaults, then ``METERING_KAFKA_CONFIG`` pass-through settings
(SASL, TLS, ...), then what the caller insists on. No network in this module until a function
that needs it is called.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.contract.partitioner import partition_of
from pipeline.infra.logs import fields
from pipeline.infra.retry import Backoff, retrying
from pipeline.infra.settings import Settings

__all__ = [
    "PARTITIONER",
    "KafkaSetupError",
    "admin",
    "consumer_config",
    "ensure_topics",
    "missing_topics",
    "partition_of",
    "producer_config",
    "require_co_partitioned",
    "wait_for_broker",
]

log = logging.getLogger(__name__)

#: librdkafka's Java-compatible partitioner: the same partition for a key as the Java client
#: (and ``partition_of``), which keeps a conversation's turns and transfers co-partitioned.
PARTITIONER: Final = "murmur2_random"


class KafkaSetupError(RuntimeError):
    """The broker cannot be reached or the topics are not as the pipeline needs them."""


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, ordered, compressed: retries never duplicate or reorder within a partition."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "compression.type": "lz4",
        "partitioner": PARTITIONER,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
    }
    config.update(settings.kafka_config)
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits after the work is durable; read only committed data, whatever else is configured.

    Every reader of the pipeline's topics (workers, sink, balance, notifier, entitlement) uses
    this: the outputs are written in transactions, and a batch that aborted is in the log too.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(settings.kafka_config)
    config.update(overrides)
    config["isolation.level"] = "read_committed"
    return config


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_config})


def wait_for_broker(settings: Settings, timeout: float = 60.0) -> None:
    """Block until the cluster answers, logging while it does not; a clear error at the end."""
    client = admin(settings)
    waiting = retrying(
        "waiting for Kafka",
        transient=KafkaException,
        seconds=timeout,
        backoff=Backoff(initial=0.5, maximum=5.0),
        bootstrap=settings.kafka_bootstrap,
    )
    try:
        waiting(client.list_topics, timeout=5)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f} s ({exc}): "
            "check METERING_KAFKA_BOOTSTRAP and that the brokers are up"
        ) from exc


def ensure_topics(settings: Settings, names: Iterable[str], config: Mapping[str, str] | None = None) -> None:
    """Create missing topics with the configured partition count; refuse a mismatched one.

    Input topics must share one partition count: the workers rely on a conversation's turns and
    transfers landing on the same partition number.
    """
    client = admin(settings)
    names = list(names)
    existing = client.list_topics(timeout=15).topics
    missing = [n for n in names if n not in existing]
    if missing:
        futures = client.create_topics(
            [NewTopic(n, settings.partitions, settings.replication_factor, config=dict(config or {})) for n in missing]
        )
        for name, future in futures.items():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaSetupError(f"cannot create topic {name!r}: {exc}") from exc
        log.info("created topics", extra=fields(topics=missing, partitions=settings.partitions))
    existing = _wait_listed(client, names)
    co_partitioned = {settings.topics.turns, settings.topics.transfers}
    for name in names:
        meta = existing.get(name)
        if meta is None:
            raise KafkaSetupError(f"topic {name!r} does not exist and could not be created")
        if name in co_partitioned and len(meta.partitions) != settings.partitions:
            raise KafkaSetupError(
                f"topic {name!r} has {len(meta.partitions)} partitions, but METERING_PARTITIONS is "
                f"{settings.partitions}: {', '.join(sorted(co_partitioned))} must all have the same count"
            )


def _wait_listed(client: AdminClient, names: list[str], timeout: float = 15.0) -> dict[str, Any]:
    """Topic metadata once every name is listed: a new topic shows up a moment after creation."""
    deadline = time.monotonic() + timeout
    while True:
        existing: dict[str, Any] = client.list_topics(timeout=15).topics
        if all(n in existing for n in names) or time.monotonic() > deadline:
            return existing
        time.sleep(0.1)


def require_co_partitioned(settings: Settings, names: Iterable[str], *, who: str, key: str) -> None:
    """Refuse topics a processor reads together (inputs and changelog) unless their partition counts agree."""
    found = admin(settings).list_topics(timeout=15).topics
    counts = {name: len(found[name].partitions) for name in names}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise KafkaSetupError(
            f"{who} needs co-partitioned topics keyed by {key}, but {listed} partitions: "
            "give them the same partition count (METERING_PARTITIONS)"
        )


def missing_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    existing = admin(settings).list_topics(timeout=15).topics
    return [n for n in names if n not in existing]
