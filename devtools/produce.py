"""`metering produce`: publish a JSON-lines file of events to the input topics, keyed as events.md says.

Each line is checked with the workers' own decoder before it is sent, so a file that produces
cleanly meters cleanly: nothing lands on the dead-letter topic. ``validate=False`` (the CLI's
``--raw``) sends every line as it is instead, which is how to exercise the dead-letter path.

The file is streamed: one line in memory at a time, the producer batching underneath. Only
failed deliveries are reported back by librdkafka (``delivery.report.only.error``), so a
delivered message costs no Python callback; what left the queue without a failure was
acknowledged by the broker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from rich.console import Console

from devtools.local_kafka import data_dir_cluster_id
from pipeline.contract.decode import decode_input
from pipeline.contract.events import INPUT_TYPES, AccountChanged, AgentTransfer, ConversationTurn, InputEvent, Rejection
from pipeline.infra.kafka import KafkaSetupError, admin, missing_topics, producer_config, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.progress import FileProgress, OnProgress
from pipeline.infra.settings import Settings, Topics

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNREADABLE: Final = 2

#: How many invalid lines and delivery errors a result keeps word for word (all are counted).
EXAMPLES: Final = 10
#: Serve the producer's callbacks (failures, errors) every this many lines.
POLL_EVERY: Final = 2000
#: How long a missing input topic may take to appear: the broker's metadata trails topic creation.
TOPIC_VISIBLE_SECONDS: Final = 5.0
#: Show a progress bar on a terminal for files larger than this.

OnInvalid = Callable[[int, str], None]


@dataclass
class ProduceResult:
    """What happened to every line of the file; the caller turns it into a summary and an exit code."""

    path: Path
    validate: bool = True
    lines: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    unconfirmed: int = 0
    skipped: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Messages acknowledged per second, reading and flushing included."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every line meant to be sent was acknowledged; skipped invalid lines do not count."""
        if self.failed or self.unconfirmed or self.fatal or self.interrupted:
            return EXIT_FAILED
        return EXIT_OK


def produce(
    settings: Settings,
    path: Path,
    *,
    validate: bool = True,
    on_invalid: OnInvalid | None = None,
    on_progress: OnProgress | None = None,
    now_ms: int | None = None,
    broker_timeout: float = 15.0,
    flush_timeout: float = 330.0,
) -> ProduceResult:
    """Send the lines of ``path`` to their input topics and wait for the broker's acknowledgements.

    With ``validate`` (the default), a line is sent only if ``decode_input`` accepts it, to the
    topic of its ``type`` (``settings.topics``) with the key events.md names:
    ``conversation_id`` for conversation turns and agent transfers, ``app_id`` for alerts and
    billing-plans events, ``account_id`` for ``account_changed`` (billing-accounts); invalid lines
    are counted, passed to ``on_invalid(lineno, reason)`` and not sent. Without it, every
    non-blank line is sent as it is, without a key, to the topic of its ``type`` field if it has
    a known one, else to the turns topic; the workers then dead-letter what is invalid, and also
    any valid event that the missing key put on another partition than its key's (reason
    ``misrouted``).

    Raises ``OSError`` when the file cannot be opened (before anything is sent) or read, and
    ``KafkaSetupError`` when the broker does not answer or an input topic is missing.
    A Ctrl-C stops reading, waits for what was queued, and marks the result interrupted.
    """
    started = time.monotonic()
    result = ProduceResult(path=path, validate=validate)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    with path.open("rb") as f:
        _check_topics(settings, broker_timeout)
        producer = Producer(
            producer_config(
                settings,
                **{
                    "delivery.report.only.error": True,
                    "on_delivery": _on_failure(result),
                    "error_cb": _on_error(result),
                    "logger": logging.getLogger("librdkafka"),
                },
            )
        )
        try:
            _send_lines(producer, f, settings.topics, result, validate, now, on_invalid, on_progress)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:  # what was queued is delivered even if reading failed half-way
            result.unconfirmed = _flush(producer, flush_timeout)
    result.sent = result.queued - result.failed - result.unconfirmed
    result.seconds = time.monotonic() - started
    return result


def _check_topics(settings: Settings, timeout: float) -> None:
    """The broker answers and has the input topics; a topic created a moment ago gets a few seconds to show."""
    wait_for_broker(settings, timeout=timeout)
    _check_cluster(settings)
    deadline = time.monotonic() + TOPIC_VISIBLE_SECONDS
    while True:
        try:
            missing = missing_topics(settings, (*settings.topics.inputs, settings.topics.accounts))
        except KafkaException as exc:
            raise KafkaSetupError(f"cannot list the topics of Kafka at {settings.kafka_bootstrap}: {exc}") from exc
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if missing:
        raise KafkaSetupError(
            f"input topic(s) {', '.join(missing)} do not exist on Kafka at {settings.kafka_bootstrap}: start the "
            f"pipeline once (`metering run`), which creates them, or create them with {settings.partitions} "
            "partitions (METERING_PARTITIONS); a broker's auto-created topics would not be co-partitioned"
        )


def _check_cluster(settings: Settings) -> None:
    """Without METERING_KAFKA_BOOTSTRAP, events go to the data directory's own broker, never to another's."""
    directory = settings.data_dir / "kafka"
    ours = None if settings.kafka_bootstrap_given else data_dir_cluster_id(directory)
    if ours is None:
        return
    try:
        theirs = admin(settings).list_topics(timeout=10).cluster_id
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot ask Kafka at {settings.kafka_bootstrap} which cluster it is: {exc}") from exc
    if theirs != ours:
        raise KafkaSetupError(
            f"Kafka at {settings.kafka_bootstrap} is cluster {theirs}, not {ours}, the broker of the data directory "
            f"{settings.data_dir}, which is not running: start `metering run` with METERING_DATA_DIR="
            f"{settings.data_dir}, or set METERING_KAFKA_BOOTSTRAP to use that cluster"
        )


def _send_lines(  # noqa: PLR0917, PLR0912 - the per-line loop: decode, route, send, progress, each with its own outcome
    producer: Producer,
    f: IO[bytes],
    topics: Topics,
    result: ProduceResult,
    validate: bool,
    now_ms: int,
    on_invalid: OnInvalid | None,
    on_progress: OnProgress | None,
) -> None:
    """The hot loop: decode, route, enqueue; poll every ``POLL_EVERY`` lines and when the queue is full."""
    route = _routes(topics)
    send = producer.produce
    poll = producer.poll
    by_topic = result.by_topic
    done = 0
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            done += len(line)
            if not lineno % POLL_EVERY:
                poll(0)
                if on_progress is not None:
                    on_progress(done)
                if result.fatal:
                    break
            if validate:
                decoded = decode_input(line, now_ms)
                if type(decoded) is Rejection:
                    if line.strip():
                        _skip(result, lineno, decoded.reason, on_invalid)
                    continue
                event: InputEvent = decoded[1]  # type: ignore[index]
                topic, key_field = route[type(event)]
                key: str | None = getattr(event, key_field)
            elif line.strip():
                topic, key = raw_topic(topics, line), None
            else:
                continue
            value = line.rstrip(b"\r\n")
            while True:
                try:
                    send(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)
                except KafkaException as exc:
                    _delivery_error(result, topic, key, exc.args[0] if exc.args else exc)
                    break
            by_topic[topic] += 1
    finally:
        result.lines = lineno
        result.queued = sum(by_topic.values())
        if on_progress is not None:
            on_progress(done)


def _routes(topics: Topics) -> dict[type[InputEvent], tuple[str, str]]:
    """Event class -> (topic, key field), as events.md lays the input topics out."""
    return {cls: (topics.of_type(name), _KEY_FIELD.get(cls, "app_id")) for name, cls in INPUT_TYPES.items()}


_KEY_FIELD: Final[dict[type[InputEvent], str]] = {
    ConversationTurn: "conversation_id",
    AgentTransfer: "conversation_id",
    AccountChanged: "account_id",
}


class _TypeOnly(msgspec.Struct):
    type: str | None = None


_decode_type: Final = msgspec.json.Decoder(_TypeOnly).decode


def raw_topic(topics: Topics, line: bytes) -> str:
    """The topic of a line's ``type`` field when it names a known type, else the turns topic."""
    try:
        kind = _decode_type(line).type
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return topics.turns
    try:
        return topics.of_type(kind) if kind is not None else topics.turns
    except KeyError:
        return topics.turns


def _skip(result: ProduceResult, lineno: int, reason: str, on_invalid: OnInvalid | None) -> None:
    result.skipped += 1
    if len(result.invalid) < EXAMPLES:
        result.invalid.append((lineno, reason))
    if on_invalid is not None:
        on_invalid(lineno, reason)


def _delivery_error(result: ProduceResult, topic: str, key: str | bytes | None, err: object) -> None:
    """A message that will not be written: counted as failed; the first few kept word for word."""
    result.failed += 1
    if len(result.errors) < EXAMPLES:
        text = err.str() if isinstance(err, KafkaError) else str(err)
        result.errors.append(f"{topic} key={key!r}: {text}")


def _on_failure(result: ProduceResult) -> Callable[[KafkaError | None, Message], None]:
    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            _delivery_error(result, msg.topic() or "?", msg.key(), err)

    return on_delivery


def _on_error(result: ProduceResult) -> Callable[[KafkaError], None]:
    """Fatal errors stop the run (an idempotent producer cannot go on after one); the rest are logged."""

    def on_error(err: KafkaError) -> None:
        if err.fatal():
            result.fatal = err.str()
            log.error("the Kafka producer failed and cannot go on", extra=fields(error=err.str()))
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("no Kafka broker reachable; retrying", extra=fields(error=err.str()))
        else:
            log.debug("Kafka client error (retried)", extra=fields(error=err.str()))

    return on_error


def _flush(producer: Producer, timeout: float) -> int:
    """Wait for the queue to drain, in short steps so that Ctrl-C is seen; returns what is left."""
    deadline = time.monotonic() + timeout
    remaining: int = producer.flush(0)
    while remaining and time.monotonic() < deadline:
        remaining = producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
    return remaining


# -- the command ---------------------------------------------------------------------------


def summary(result: ProduceResult) -> str:
    """One line for people: what was acknowledged, what failed, what was skipped, and how fast."""
    topics = ", ".join(f"{topic} {count:,}" for topic, count in sorted(result.by_topic.items()))
    line = (
        f"sent {result.sent:,} messages in {result.seconds:.1f} s ({result.rate:,.0f} msg/s); failed {result.failed:,}"
    )
    if result.unconfirmed:
        line += f", unconfirmed {result.unconfirmed:,} (no acknowledgement in time: they may or may not be written)"
    if result.validate:
        line += f"; skipped {result.skipped:,} invalid of {result.lines:,} lines"
    else:
        line += f" of {result.lines:,} lines (raw: not validated)"
    if topics:
        line += f"; by topic: {topics}"
    if result.interrupted:
        line += "; interrupted: the rest of the file was not sent"
    if result.fatal:
        line += f"; stopped by a fatal producer error: {result.fatal}"
    return line


def produce_command(settings: Settings, path: Path, *, validate: bool = True, console: Console | None = None) -> int:
    """`metering produce --file FILE [--raw]`: progress on a terminal, problems and a summary on stderr.

    Returns the exit status: 0 every line meant to be sent was acknowledged, 1 some were not
    (or Kafka is not ready), 2 the file cannot be read.
    """
    err = console or Console(stderr=True)
    shown = 0

    def on_invalid(lineno: int, reason: str) -> None:
        nonlocal shown
        if shown < EXAMPLES:
            shown += 1
            err.print(f"{path}:{lineno}: skipped: {reason[:300]}", markup=False, highlight=False, soft_wrap=True)

    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        size = path.stat().st_size
        with FileProgress(err, size, "producing") as on_progress:
            result = produce(settings, path, validate=validate, on_invalid=on_invalid, on_progress=on_progress)
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {path}: {exc.strerror or exc}", highlight=False)
        return EXIT_UNREADABLE
    except KafkaSetupError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return EXIT_FAILED
    if result.skipped > shown:
        err.print(f"... and {result.skipped - shown:,} more invalid lines", highlight=False)
    for error in result.errors:
        err.print(f"delivery failed: {error}", markup=False, highlight=False, soft_wrap=True)
    if result.failed > len(result.errors):
        err.print(f"... and {result.failed - len(result.errors):,} more failed deliveries", highlight=False)
    err.print(summary(result), markup=False, highlight=False, soft_wrap=True)
    return result.exit_code
