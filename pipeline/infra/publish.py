"""Publishing single events and waiting until the brokers have them: the console's and operators' writes.

A console action (a plan change, an order) and an operator's decision (an extension granted, a
payment recorded) is one event on a billing topic; the caller answers only once the brokers
acknowledged it, so a 2xx means the change is durable and will be applied. The producer is
idempotent (``pipeline.infra.kafka.producer_config``) and keyed as events.md says; the ids of these
events are derived from what they are about, so publishing one twice applies it once.
"""

from __future__ import annotations

import threading
import time
from typing import Final, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.infra.kafka import producer_config
from pipeline.infra.settings import Settings

DELIVERY_TIMEOUT_SECONDS: Final = 30.0


class PublishError(RuntimeError):
    """The brokers did not acknowledge an event in time; it may or may not be written (retry: its id dedupes)."""


class Publisher(Protocol):
    """What callers need: one event to one topic, acknowledged before returning."""

    def publish(self, topic: str, key: str, value: bytes) -> None: ...


class KafkaPublisher:
    """An idempotent producer shared by threads; :meth:`publish` blocks until its message is acknowledged."""

    def __init__(self, settings: Settings, *, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
        self._settings = settings
        self._timeout = timeout
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def _client(self) -> Producer:
        with self._lock:
            if self._producer is None:  # connect on first use, never in the constructor
                self._producer = Producer(
                    producer_config(self._settings, **{"linger.ms": 0, "message.timeout.ms": int(self._timeout * 1000)})
                )
            return self._producer

    def publish(self, topic: str, key: str, value: bytes) -> None:
        producer = self._client()
        done = threading.Event()
        failure: list[KafkaError] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failure.append(err)
            done.set()

        try:
            producer.produce(topic, value, key.encode(), on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise PublishError(f"cannot queue an event for {topic}: {exc}") from exc
        deadline = time.monotonic() + self._timeout + 5.0  # message.timeout.ms reports a failure before this
        while not done.is_set():
            producer.poll(0.05)  # serves the delivery callbacks, this message's or another thread's
            if time.monotonic() > deadline:
                raise PublishError(f"no acknowledgement for an event for {topic} in {self._timeout:.0f} s")
        if failure:
            raise PublishError(f"the brokers refused an event for {topic}: {failure[0].str()}")

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout)
                self._producer = None
