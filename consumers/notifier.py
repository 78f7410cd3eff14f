"""`metering notify`: every balance alert as a structured log line and, when set, a signed webhook call.

Consumes `balance-alerts` (read committed: only alerts of committed balance transactions)
in its own consumer group, in order per partition, so per app. An alert's offset is
committed only once it is logged and, with ``METERING_WEBHOOK_URL``, delivered (a 2xx
answer): while the webhook is down the notifier retries with capped exponential backoff and
nothing is lost; after a crash an alert may be delivered again, with the same
``X-Metering-Event-Id``, for the receiver to drop.

The body is the alert exactly as on the topic; ``X-Metering-Signature: sha256=<hex>`` is the
HMAC-SHA256 of those bytes with ``METERING_WEBHOOK_SECRET``, so the receiver checks it came
from us and was not changed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import signal
import threading
from typing import Final

import httpx
import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.contract.events import BalanceAlert
from pipeline.infra import metrics
from pipeline.infra.kafka import consumer_config, ensure_topics, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.retry import Backoff, retrying
from pipeline.infra.settings import Settings, SettingsError

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Metering-Signature"
EVENT_ID_HEADER: Final = "X-Metering-Event-Id"
_alert_decoder: Final = msgspec.json.Decoder(BalanceAlert)


def sign(secret: str, body: bytes) -> str:
    """The value of ``X-Metering-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: constant-time comparison with the signature it computes itself."""
    return hmac.compare_digest(sign(secret, body), signature)


class WebhookError(RuntimeError):
    """The webhook did not accept the alert (no answer, or not a 2xx)."""


class Webhook:
    def __init__(self, url: str, secret: str, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def post(self, body: bytes, event_id: str) -> None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            EVENT_ID_HEADER: event_id,
            "User-Agent": "metering-notifier",
        }
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise WebhookError(f"the webhook did not answer: {exc}") from None
        if not response.is_success:
            raise WebhookError(f"the webhook answered {response.status_code} {response.reason_phrase}")


def webhook_of(settings: Settings) -> Webhook | None:
    """The configured webhook, None without one; a URL without a secret is a settings error."""
    if not settings.webhook_url:
        return None
    if not settings.webhook_secret:
        raise SettingsError(
            "invalid settings:\n  METERING_WEBHOOK_URL is set but METERING_WEBHOOK_SECRET is empty: set a secret "
            "shared with the receiver, which checks the X-Metering-Signature of every call"
        )
    return Webhook(settings.webhook_url, settings.webhook_secret)


class Notifier:
    """Logs and delivers balance alerts until ``stop`` is set; see the module docstring."""

    def __init__(self, settings: Settings, webhook: Webhook | None, backoff: Backoff | None = None) -> None:
        self.settings = settings
        self.webhook = webhook
        self.backoff = backoff or Backoff()
        self.notified = 0
        self._revoked: set[tuple[str, int]] = set()
        self._consumer: Consumer | None = None
        self._paused = False

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        consumer = self._consumer = Consumer(consumer_config(s, f"{s.app_id}-notifier"))
        consumer.subscribe(
            [s.topics.balance_alerts], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info(
            "notifier started",
            extra=fields(topic=s.topics.balance_alerts, webhook=self.webhook.url if self.webhook else None),
        )
        try:
            while not stop.is_set():
                self._revoked.clear()
                for m in consumer.consume(100, timeout=0.5):
                    if stop.is_set():
                        return
                    error = m.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise KafkaException(error)
                        continue
                    if (m.topic(), m.partition()) in self._revoked:
                        continue  # its new owner reads it again from the committed offset
                    if not self._handle(m, stop):
                        if stop.is_set():
                            return
                        continue
                    consumer.commit(
                        offsets=[TopicPartition(m.topic() or "", m.partition() or 0, (m.offset() or 0) + 1)],
                        asynchronous=False,
                    )
        finally:
            consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._paused and partitions:
            consumer.pause(partitions)  # assigned while waiting to retry: read nothing until then

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)

    def _handle(self, m: Message, stop: threading.Event) -> bool:
        """Log and deliver one alert; False if it must not be committed (stopping, or revoked)."""
        body = m.value() or b""
        try:
            alert = _alert_decoder.decode(body)
        except msgspec.DecodeError as exc:
            log.error(
                "not a balance alert: skipped",
                extra=fields(topic=m.topic(), partition=m.partition(), offset=m.offset(), error=str(exc)[:300]),
            )
            return True
        log.info(
            "balance alert",
            extra=fields(
                alert_event_id=alert.alert_event_id,
                account_id=alert.account_id,
                app_id=alert.app_id,
                state=alert.state,
                balance=alert.balance,
                threshold=alert.threshold,
                currency=alert.currency,
                occurred_at=alert.occurred_at.isoformat(),
            ),
        )
        if self.webhook is not None and not self._deliver(alert, body, m, stop):
            return False
        self.notified += 1
        metrics.ALERTS_NOTIFIED.inc()
        return True

    def _deliver(self, alert: BalanceAlert, body: bytes, m: Message, stop: threading.Event) -> bool:
        """Post until delivered (True), or until stopped or the partition is revoked (False)."""
        webhook = self.webhook
        assert webhook is not None
        assert self._consumer is not None
        consumer = self._consumer

        def post() -> None:
            try:
                webhook.post(body, alert.alert_event_id)
            except WebhookError:
                metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
                raise
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()

        def wait(delay: float) -> None:
            if not self._paused:
                # Polling keeps the group membership alive through a long outage; paused, it reads nothing.
                consumer.pause(consumer.assignment())
                self._paused = True
            waited = 0.0
            while waited < delay:
                if stop.wait(min(0.2, delay - waited)):
                    raise _Interrupted
                waited += 0.2
                stray = consumer.poll(0)
                if stray is not None and stray.error() is None:
                    # Not ours to handle now: read it again once resumed.
                    consumer.seek(TopicPartition(stray.topic() or "", stray.partition() or 0, stray.offset() or 0))
                if (m.topic(), m.partition()) in self._revoked:
                    raise _Interrupted

        deliveries = retrying(
            "webhook delivery",
            transient=WebhookError,
            backoff=self.backoff,
            sleep=wait,
            alert_event_id=alert.alert_event_id,
        )
        try:
            deliveries(post)
        except _Interrupted:
            return False
        finally:
            if self._paused:
                self._paused = False
                consumer.resume(consumer.assignment())
        return True


class _Interrupted(Exception):
    """The wait before a retry ended early: stopping, or the alert's partition went to another notifier."""


def run_notifier(settings: Settings, metrics_port: int | None = None) -> int:
    """`metering notify`: run until SIGINT/SIGTERM."""
    webhook = webhook_of(settings)
    wait_for_broker(settings)
    ensure_topics(settings, [settings.topics.balance_alerts])
    port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port, settings.api_host)
    log.info("notifier metrics", extra=fields(url=f"http://{settings.api_host}:{port}/metrics"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Notifier(settings, webhook).run(stop)
    return 0
