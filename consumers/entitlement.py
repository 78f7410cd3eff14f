"""`metering entitlement`: may an app serve its users now? Answered from memory, per conversation.

A read model of the compacted `balance-state` topic (read committed, every partition, from
the beginning, no consumer group) kept as one ready-made JSON answer per app, served by a
small threaded HTTP/1.1 server with keep-alive: a request is a dictionary lookup and one
write, well under the 5 ms p99 the platform needs (``bench/entitlement_bench.py``).

``GET /v1/entitlement/{app_id}`` answers ``{"app_id", "entitled", "status", "balance",
"currency", "as_of"}``; ``status`` is the balance's (``active``, ``low``, ``depleted``), or
``expired`` once the plan's term is over (not entitled until renewed or extended). An app the
read model does not know (never funded, no plan, no session) is answered ``404`` with
``entitled: false`` and status ``unknown``: R12 makes an app without a plan prepaid, and an app
that never paid is not entitled (docs/balances.md), so a client that only reads ``entitled``
does the right thing and one that checks the status code can tell a new app from a depleted
one. Until the first full read of the topic the answer is ``503`` (with ``Retry-After``): the
model does not yet know who is entitled, and the caller decides whether to fail open or closed.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final
from urllib.parse import unquote

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from pipeline.contract.decode import to_ms
from pipeline.contract.events import BalanceSnapshot, format_ms
from pipeline.infra import metrics
from pipeline.infra.kafka import consumer_config, ensure_topics, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.runtime.restore import watermarks

log = logging.getLogger(__name__)

PREFIX: Final = "/v1/entitlement/"
#: How often a thread waiting for the GIL gets it (default 5 ms): a request waiting behind the
#: feed or another connection would otherwise wait that long, the whole p99 budget.
SWITCH_INTERVAL: Final = 0.0005
_snapshot_decoder: Final = msgspec.json.Decoder(BalanceSnapshot)
_json: Final = msgspec.json.Encoder()
_LOADING: Final = _json.encode(
    {"error": "the entitlement read model is still loading balance-state; retry in a moment"}
)


_REASONS: Final = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}

_ENTITLED: Final = metrics.ENTITLEMENT_ANSWERS.labels("entitled")
_NOT_ENTITLED: Final = metrics.ENTITLEMENT_ANSWERS.labels("not_entitled")
_UNKNOWN: Final = metrics.ENTITLEMENT_ANSWERS.labels("unknown")
_ANSWERED_LOADING: Final = metrics.ENTITLEMENT_ANSWERS.labels("loading")


class Answer(msgspec.Struct, frozen=True):
    """The body of ``GET /v1/entitlement/{app_id}``."""

    app_id: str
    entitled: bool
    status: str
    balance: str
    currency: str
    as_of: str | None


def answer_of(snapshot: BalanceSnapshot) -> bytes:
    return _json.encode(
        Answer(
            app_id=snapshot.app_id,
            entitled=snapshot.entitled,
            status="expired" if snapshot.expired else snapshot.status,
            balance=snapshot.balance,
            currency=snapshot.currency,
            as_of=format_ms(to_ms(snapshot.updated_at)),
        )
    )


def unknown_answer(app_id: str) -> bytes:
    """No snapshot: no funds, no plan, no session. Prepaid and unpaid, so not entitled."""
    unknown = Answer(app_id=app_id, entitled=False, status="unknown", balance="0.00", currency="USD", as_of=None)
    return _json.encode(unknown)


class EntitlementModel:
    """app_id -> the encoded answer of its latest snapshot; readers never lock (one dict get).

    Each answer is counted in ``metering_entitlement_answers_total`` by what it says; the
    counters are bound to their label once, so a request pays one increment.
    """

    def __init__(self) -> None:
        self.answers: dict[str, tuple[bytes, Counter]] = {}
        self.ready = threading.Event()
        self.invalid = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One `balance-state` message, in log order (the last one of an app wins, as compaction keeps)."""
        if value is None:
            if key is not None:
                app_id = key.decode(errors="replace")
                self.answers.pop(app_id, None)
            return
        try:
            snapshot = _snapshot_decoder.decode(value)
        except msgspec.DecodeError as exc:
            self.invalid += 1
            log.warning("invalid balance-state message skipped", extra=fields(error=str(exc)[:300]))
            return
        self.answers[snapshot.app_id] = (answer_of(snapshot), _ENTITLED if snapshot.entitled else _NOT_ENTITLED)

    def lookup(self, app_id: str) -> tuple[int, bytes]:
        if not self.ready.is_set():
            _ANSWERED_LOADING.inc()
            return 503, _LOADING
        found = self.answers.get(app_id)
        if found is None:
            _UNKNOWN.inc()
            return 404, unknown_answer(app_id)
        body, count = found
        count.inc()
        return 200, body


class BalanceStateFeed:
    """Reads every partition of `balance-state` into the model, in a thread, until stopped."""

    def __init__(self, settings: Settings, model: EntitlementModel) -> None:
        self.settings = settings
        self.model = model
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="balance-state-feed", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> BalanceStateFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        """Read until stopped; after a Kafka error, read the topic again from the beginning (last one wins)."""
        while not self._stop.is_set():
            try:
                self._read()
                return
            except KafkaException as exc:
                log.warning("balance-state feed failed: reading again in 2 s", extra=fields(error=str(exc)))
                self._stop.wait(2.0)
            except BaseException as exc:
                self.error = exc
                log.exception("the balance-state feed stopped: entitlement answers no longer change")
                raise

    def _read(self) -> None:
        topic = self.settings.topics.balance_state
        consumer = Consumer(
            consumer_config(
                self.settings,
                f"{self.settings.app_id}-entitlement-{uuid.uuid4().hex[:8]}",  # never commits: no group state
                **{"enable.partition.eof": True},
            )
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            pending = set(partitions)
            for p in partitions:
                low, high = watermarks(consumer, topic, p)
                if high <= low:
                    pending.discard(p)
            if not pending:
                self._loaded()
            while not self._stop.is_set():
                for m in consumer.consume(5000, timeout=0.5):
                    error = m.error()
                    if error is None:
                        self.model.apply(m.key(), m.value())
                    elif error.code() == KafkaError._PARTITION_EOF:
                        if pending:
                            pending.discard(m.partition() or 0)
                            if not pending:
                                self._loaded()
                    else:
                        raise KafkaException(error)
                metrics.ENTITLEMENT_APPS.set(len(self.model.answers))
        finally:
            consumer.close()

    def _loaded(self) -> None:
        self.model.ready.set()
        log.info("entitlement read model loaded", extra=fields(apps=len(self.model.answers)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many conversations
    disable_nagle_algorithm = True
    model: EntitlementModel

    def do_GET(self) -> None:
        path = self.path
        if path.startswith(PREFIX):
            segment = path[len(PREFIX) :].split("?", 1)[0]
            if segment and "/" not in segment:
                status, body = self.model.lookup(unquote(segment))
                self._send(status, body, "application/json")
                return
        if path == "/healthz":
            ready = self.model.ready.is_set()
            self._send(200 if ready else 503, b'{"ready":true}' if ready else _LOADING, "application/json")
            return
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            return
        self._send(
            404,
            _json.encode({"error": f"no such resource {path!r}: ask GET {PREFIX}{{app_id}}"}),
            "application/json",
        )

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        """Status line, headers and body in one write: two small writes would wait on delayed ACKs."""
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n"
        if status == 503:
            head += "Retry-After: 1\r\n"
        self.wfile.write(head.encode() + b"\r\n" + body)

    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged one by one: at one per conversation they would drown the log."""


class EntitlementServer:
    """The HTTP server over a model, in a thread; ``port`` 0 picks a free one."""

    def __init__(self, model: EntitlementModel, host: str, port: int) -> None:
        handler = type("EntitlementHandler", (_Handler,), {"model": model})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EntitlementServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


def serve_entitlement(settings: Settings, port: int | None = None) -> int:
    """`metering entitlement`: serve until SIGINT/SIGTERM; 1 if the feed fails."""
    wait_for_broker(settings)
    ensure_topics(settings, [settings.topics.balance_state], config={"cleanup.policy": "compact"})
    sys.setswitchinterval(SWITCH_INTERVAL)
    model = EntitlementModel()
    feed = BalanceStateFeed(settings, model).start()
    server = EntitlementServer(model, settings.api_host, settings.entitlement_port if port is None else port).start()
    log.info("entitlement endpoint", extra=fields(url=f"{server.url}{PREFIX}{{app_id}}"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if feed.error is not None:
                return 1
    finally:
        server.stop()
        feed.stop()
    return 0
