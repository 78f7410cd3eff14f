"""The runtime's transactional producer: the records of one or more batches and their offsets in one Kafka transaction.

librdkafka's transactional calls fail in three ways (docs/stream-runtime.md, "Failures"):

- *retriable* (a timeout, a coordinator loading): the same call may be made again and resumes
  what it started. :meth:`Transactor.commit` does so, so that a broker outage is waited out
  inside the transaction that was in hand;
- *abortable* (a record not delivered, a group generation that moved on, a failpoint): the
  transaction must be aborted, after which the same records can be written again in a new one;
- *fatal* (the producer's epoch was bumped: another instance took the transactional id, or the
  coordinator aborted a transaction that outlived ``transaction.timeout.ms``): this producer can
  do nothing more. :meth:`Transactor.renew` replaces it by a new one with the same id, whose
  ``init_transactions`` aborts whatever the old one left open.

And one more: a call that does not return. ``send_offsets_to_transaction`` can block past its
timeout when the group coordinator went away (confluentinc/librdkafka#5456, seen here after a
broker restart). So every transactional call runs on a thread of its own and is waited for with a
deadline; a call stuck past it raises :class:`StuckCall`, and the engine renews the
producer (the stuck one is abandoned to its thread; the new one's epoch fences it).

Which of these to do, and whether a fenced process is a zombie that must stop instead, is the
engine's decision (``pipeline.runtime.engine``); this module only talks to the producer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline.infra import failpoints
from pipeline.infra.kafka import producer_config
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings

log = logging.getLogger(__name__)

#: How long one call waits before it is made again (retriable errors resume where they were).
CALL_TIMEOUT_SECONDS: Final = 30.0
#: Before an abort, records in flight are given this long to be acknowledged: an abort that purges
#: records in flight leaves gaps in the producer's sequence numbers that fail the next transaction.
ABORT_FLUSH_SECONDS: Final = 10.0
#: How often a producer waiting for its coordinator says so.
WAITING_LOG_SECONDS: Final = 30.0
#: A call that has not returned this long after its own timeout is stuck (librdkafka#5456).
STUCK_AFTER_SECONDS: Final = CALL_TIMEOUT_SECONDS + 15.0

#: ``(topic, key, value, partition or None)``; ``on_delivery`` only where a caller needs the offset.
Write = tuple[str, bytes | None, bytes | None, int | None]


class StuckCall(RuntimeError):
    """A transactional call did not return in time: the producer is given up and a new one takes over."""


def _within(call: Callable[[], None], seconds: float, what: str) -> None:
    """Run ``call`` on a daemon thread and wait ``seconds`` for it; :class:`StuckCall` if it has not returned.

    A daemon thread, not an executor's: a call that never returns must not keep the process from
    exiting (executor threads are joined at exit).
    """
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the waiting thread
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="transaction-call", daemon=True).start()
    if not done.wait(seconds):
        raise StuckCall(f"{what} has not returned in {seconds:.0f} s")
    if failed:
        raise failed[0]


def abortable(message: str) -> KafkaException:
    """What a failing ``<role>.before_commit`` failpoint raises: an error that aborts the transaction."""
    return KafkaException(KafkaError(KafkaError._STATE, message, txn_requires_abort=True))


def is_fatal(error: KafkaError) -> bool:
    """This producer can do nothing more (fenced, or failed fatally)."""
    return bool(error.fatal()) or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError._FATAL)


def _resumable(error: KafkaError) -> bool:
    """The call may be made again and resumes (a timeout, a coordinator not ready)."""
    return bool(error.retriable()) and not error.txn_requires_abort() and not is_fatal(error)


class Transactor:
    """A transactional producer under one transactional id, replaced by a new one when it fails fatally."""

    def __init__(
        self,
        settings: Settings,
        *,
        transactional_id: str,
        role: str,
        transaction_timeout_ms: int,
        max_record_bytes: int,
        linger_ms: int,
    ) -> None:
        self.settings = settings
        self.transactional_id = transactional_id
        self.role = role
        self._config = producer_config(
            settings,
            **{
                "transactional.id": transactional_id,
                "client.id": transactional_id,
                "linger.ms": linger_ms,
                "transaction.timeout.ms": transaction_timeout_ms,
                "message.max.bytes": max_record_bytes,
            },
        )
        self.producer: Producer | None = None
        #: The open transaction's changelog ends so far (delivery reports of its last records).
        self._ends: dict[tuple[str, int], int] = {}
        #: Producers created (1 + renewals).
        self.generations = 0

    def open(self) -> None:
        """A producer whose ``init_transactions`` fenced any older one with this id and aborted its transaction."""
        producer = Producer(self._config)
        self.producer = producer
        self._call(lambda: producer.init_transactions(CALL_TIMEOUT_SECONDS))
        self.generations += 1

    def renew(self) -> None:
        """Replace a producer that failed fatally: the new one takes the id over (its epoch is the newest)."""
        old = self.producer  # a call stuck on it keeps its thread; nothing waits for it
        self.producer = None
        if old is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                old.purge()
        self.open()

    def write(
        self,
        records: Iterable[Write],
        offsets: list[TopicPartition],
        group_metadata: Callable[[], Any],
        ends_of: set[tuple[str, int]],
    ) -> dict[tuple[str, int], int]:
        """One transaction: ``records``, then ``offsets`` for the consumer group, committed; or an exception."""
        self.begin()
        self.produce(records, ends_of)
        return self.commit(offsets, group_metadata)

    def begin(self) -> None:
        """Open a transaction; :meth:`produce` may then be called any number of times before :meth:`commit`."""
        producer = self.producer
        assert producer is not None
        self._ends = {}
        producer.begin_transaction()

    def produce(self, records: Iterable[Write], ends_of: set[tuple[str, int]]) -> None:
        """Send ``records`` in the open transaction (librdkafka delivers them while the caller goes on).

        The last record of each partition of ``ends_of`` (the changelogs) reports its offset, so that
        :meth:`commit` can say how far into each changelog the transaction reached.
        """
        last: dict[tuple[str, int], Write] = {}
        for write in records:
            topic, partition = write[0], write[3]
            if partition is not None and (topic, partition) in ends_of:
                previous = last.get((topic, partition))
                if previous is not None:
                    self._produce(previous, None)
                last[(topic, partition)] = write
                continue
            self._produce(write, None)
        for write in last.values():
            self._produce(write, self._delivered)

    def commit(self, offsets: list[TopicPartition], group_metadata: Callable[[], Any]) -> dict[tuple[str, int], int]:
        """Send ``offsets`` for the consumer group and commit the open transaction; or an exception.

        Returns the next offset after the last record written to each changelog partition (a store
        on disk records how far into its changelog it is).
        """
        producer = self.producer
        assert producer is not None
        if offsets:
            # Not resumed on a timeout: a call made again while the coordinator is away may never return
            # (librdkafka#5456); the transaction is aborted and written again once the broker answers.
            self._call(
                lambda: producer.send_offsets_to_transaction(offsets, group_metadata(), CALL_TIMEOUT_SECONDS),
                resume=False,
            )
        failpoints.hit(f"{self.role}.before_commit", abortable)
        self._call(lambda: producer.commit_transaction(CALL_TIMEOUT_SECONDS))
        producer.poll(0)
        return self._ends

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            tp = (msg.topic(), msg.partition())
            self._ends[tp] = max(self._ends.get(tp, 0), msg.offset() + 1)

    def abort(self) -> bool:
        """Abort the open transaction; False if that failed too (then the producer must be renewed)."""
        producer = self.producer
        if producer is None:
            return False
        try:
            producer.flush(ABORT_FLUSH_SECONDS)
            self._call(lambda: producer.abort_transaction(CALL_TIMEOUT_SECONDS))
            return True
        except (KafkaException, StuckCall) as exc:
            log.warning("the abort failed", extra=fields(role=self.role, error=str(exc.args[0])))
            return False

    def close(self, timeout: float = 10.0, *, flush: bool = True) -> None:
        """Flush what is in flight; or, ``flush=False``, drop it unsent (no delivery report is served)."""
        if self.producer is None:
            return
        if flush:
            self.producer.flush(timeout)
        else:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.producer.purge()

    def _call(self, call: Callable[[], None], *, resume: bool = True) -> None:
        """Make a transactional call on a thread of its own; again while it fails with a resumable error (a
        broker away), unless ``resume`` is False. Raises :class:`StuckCall` if it does not return in time."""
        started = time.monotonic()
        logged = started
        while True:
            try:
                _within(call, STUCK_AFTER_SECONDS, f"a transactional call of the {self.role}")
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not resume or not _resumable(error):
                    raise
                if time.monotonic() - logged >= WAITING_LOG_SECONDS:
                    logged = time.monotonic()
                    log.warning(
                        "waiting for the broker to complete a transaction call",
                        extra=fields(role=self.role, seconds=round(logged - started), error=str(error)),
                    )

    def _produce(self, write: Write, on_delivery: Callable[[Any, Any], None] | None) -> None:
        producer = self.producer
        assert producer is not None
        topic, key, value, partition = write
        while True:
            try:
                if partition is None:
                    if on_delivery is None:
                        producer.produce(topic, value, key)
                    else:
                        producer.produce(topic, value, key, on_delivery=on_delivery)
                elif on_delivery is None:
                    producer.produce(topic, value, key, partition=partition)
                else:
                    producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)
