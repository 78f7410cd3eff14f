"""`metering reconcile`: recompute a period from every event there is, compare with ClickHouse, repair.

Why this exists: the stream bills an event only while it can still change a session that is
not final (R9). An event that arrives later is *late*: kept on the late topic, counted, and
"billed only through reconciliation". This is that path, and it is also how a backfill, a
replay after an incident or a fixed rules bug reaches the invoices.

**The truth** is the rules engine over *all* events available: the input topics read from
the beginning up to the high watermarks taken at the start (turns, transfers, alerts, and the
billing-plans topic for idle timeouts), or a JSON-lines archive (``--archive``). It is metered
by ``pipeline.compute``'s exact path (events sorted by time, an external sort), so it is the
same whatever order the events arrived in, and it is exactly what `metering compute` prints
for the same events. From the topics, what the workers dead-letter (invalid, more than 24 h
ahead of when it was received, wrong topic or partition) is left out, as they leave it out.
Days are local days in ``--timezone`` (R8), the default ``METERING_TIMEZONE``.

Two corrections of "all events" keep the truth honest:

- *Unfinished* conversations (still going on when the topics were read) are not final and
  might still change (a later ``is_test`` turn, a transfer): their sessions are neither
  inserted nor used to void anything. A period that has ended a while ago has none.
- If retention deleted the oldest messages of an input partition, events a session depends
  on may be gone: a session whose conversation could reach back to deleted messages (24 h of
  allowed clock skew plus the longest idle gap) is *unverifiable* and left alone, never
  voided on the strength of missing input. Reconcile such a period from an archive.

**The comparison** is by billing session id (ids are derived from the events, so the same
session has the same id in the stream, in ClickHouse and here), and within an id by where it
is counted: account, app, kind and 15-minute bucket of its start (a late agent transfer can
move the start of a later usage session without changing its id). Each difference is
*missing* (truth bills it, ClickHouse does not: insert), *extra* (ClickHouse bills it, the
truth does not, e.g. two stream sessions a late turn merged: void), *moved* (insert at the
new place, void at the old one) or *voided* (the truth bills a session voided earlier: voids
are permanent, so this is reported for a person to look at, never silently "fixed"). Both
sides are read for a day either side of the period too, so a session moved across midnight
is moved, not counted on both days. Beside that, usage per (account, app, day) of the period
in ``USAGE_COLUMNS``: what ClickHouse says, what the truth says, the difference (truth minus
ClickHouse).

**The repair** (``--repair``) writes through the store's own operations
(``consumers.clickhouse.reconcile``): missing sessions through ``SessionStore`` with a
deterministic insert token (the run scope and the records: a retried or repeated run writes
nothing twice), voids into ``session_voids`` (usage subtracts them per bucket, exactly once),
and a ``reconcile_runs`` row (who, where, on what, the counts) before and after; every
inserted session and void carries the run id. Afterwards ClickHouse is read again: the exit
status says whether usage now equals the truth.

**Ordering.** ClickHouse is read *before* the topics' high watermarks are taken. Every
session ClickHouse holds then was computed from messages already in the topics, so none can
look "extra" just because the stream got ahead of the read; the stream may meanwhile write a
session reconcile also inserts, which is harmless (same id, a set).

**Where ClickHouse is.** An embedded chDB database is open in one process only: when the
service (`metering run`/`sink`) holds it, reconcile goes through its API
(``POST /reconcile/sessions``, ``POST /reconcile/repair``, authorised by the token the
service leaves readable for its own user); otherwise, or with an http(s) URL, it connects.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

import msgspec
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from rich.console import Console

from consumers.clickhouse import ClickHouseError, ClickHouseUnavailableError, Client
from consumers.clickhouse.client import redact
from consumers.clickhouse.reconcile import (
    MAX_BATCH,
    PeriodRequest,
    ReconcileRun,
    RepairBatch,
    RepairOutcome,
    SessionVoid,
    Snapshot,
    StoredSession,
    apply_batch,
    bucket_of,
    snapshot,
)
from consumers.store_client import StoreClient, StoreHttpError, StoreUnreachableError
from consumers.store_lock import ReaderHold
from consumers.usage_command import OnWait, StoreBusyError, open_client, reach_store, store_client
from pipeline.compute import Days, compute
from pipeline.decode import decode_event
from pipeline.events import MAX_FUTURE_MS, PlanChanged, Rejection, format_ms
from pipeline.infra.settings import Settings
from pipeline.kafka import KafkaSetupError, consumer_config
from pipeline.progress import FileProgress, OnProgress
from pipeline.records import billing_session_record
from pipeline.report import Format, render
from pipeline.rules.attribution import USAGE_COLUMNS, DayOf, UnknownZoneError, UsageBook, UsageRow, zone
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.rules.model import BillingSession
from pipeline.stream.partition import place

__all__ = [
    "Comparison",
    "Period",
    "Report",
    "SessionDifference",
    "Truth",
    "compare",
    "reconcile",
    "reconcile_command",
    "render_report",
]

EXIT_EQUAL: Final = 0
EXIT_DIFFERENT: Final = 1
EXIT_ERROR: Final = 2

METRICS: Final = USAGE_COLUMNS[3:]
DAY_COLUMNS: Final = ("account_id", "app_id", "day", "source", *METRICS)
SESSION_COLUMNS: Final = (
    "status",
    "billing_session_id",
    "account_id",
    "app_id",
    "day",
    "kind",
    "started_at",
    "clickhouse_started_at",
)
#: Sessions listed in the terminal table; csv lists none, json all.
TABLE_SESSIONS: Final = 200
#: Without a message for this long while messages are still expected, the read fails.
STALL_SECONDS: Final = 60.0
#: Days read either side of the period: a late agent transfer can move the start of a usage session
#: across midnight, and reconcile must see both places to move it rather than count it twice.
MARGIN_DAYS: Final = 1
_API_TIMEOUT_SECONDS: Final = 600.0

Status = Literal["missing", "extra", "moved", "voided"]
T = TypeVar("T")


class ReconcileError(RuntimeError):
    """Reconcile cannot go on; the message says why and what to do."""


# -- the period ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """Local days ``first``..``last`` (inclusive) in the IANA zone ``tz``."""

    first: date
    last: date
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    @property
    def days(self) -> Days:
        return Days(self.first, self.last)

    def widened(self) -> Period:
        """The period and :data:`MARGIN_DAYS` either side: what is read to see sessions cross its edges."""
        margin = timedelta(days=MARGIN_DAYS)
        return Period(self.first - margin, self.last + margin, self.tz)

    def holds(self, day: str) -> bool:
        """Whether the ISO day ``day`` is one of the period's."""
        return self.first.isoformat() <= day <= self.last.isoformat()

    def __str__(self) -> str:
        return f"{self.first.isoformat()}..{self.last.isoformat()} ({self.tz})"


def make_period(start: date, end: date, tz: str) -> Period:
    """A validated period; ReconcileError says what is wrong with the options."""
    first = start.date() if isinstance(start, datetime) else start
    last = end.date() if isinstance(end, datetime) else end
    if first > last:
        raise ReconcileError(f"--from {first} is after --to {last}: give the first day first")
    try:
        zone(tz)
    except UnknownZoneError as exc:
        raise ReconcileError(f"--timezone: {exc}") from exc
    return Period(first, last, tz)


# -- the truth -------------------------------------------------------------------------------------


@dataclass
class Truth:
    """The rules over all available events, for the period."""

    source: str
    #: Final sessions of the period's days and the margin days either side.
    sessions: list[BillingSession]
    unfinished: list[BillingSession]
    #: Usage of the period's days.
    rows: list[UsageRow]
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    invalid_examples: list[str] = field(default_factory=list)
    #: Events older than this may have been deleted by retention (None: nothing was deleted).
    complete_from_ms: int | None = None
    #: How long before its first event a conversation session can reach (longest idle gap).
    reach_ms: int = 0
    plans_truncated: bool = False
    #: A digest of exactly which input this is, for the insert tokens.
    scope: str = ""


def max_gap_ms(config: RulesConfig, plan_timeouts: Sequence[int] = ()) -> int:
    """The longest silence that can still join two events into one conversation session (R2)."""
    return max(config.idle_timeout_ms, *config.app_idle_timeout_ms.values(), *plan_timeouts,
               config.open_transfer_timeout_ms)  # fmt: skip


def truth_from_archive(
    path: Path, period: Period, config: RulesConfig, *, now_ms: int, console: Console | None = None
) -> Truth:
    """Meter a JSON-lines archive (any order) and keep the period's sessions."""
    invalid: list[str] = []

    def on_invalid(lineno: int, reason: str) -> None:
        if len(invalid) < 10:
            invalid.append(f"{path}:{lineno}: skipped: {reason[:300]}")

    if path.is_dir():
        raise ReconcileError(f"--archive {path} is a directory: give a JSON-lines file of events")
    stat = path.stat()
    with FileProgress(console or Console(stderr=True), stat.st_size, "recomputing") as on_progress:
        result = compute(
            path, period.zone, config, now_ms=now_ms, on_invalid=on_invalid, on_progress=on_progress,
            keep=period.widened().days,
        )  # fmt: skip
    return Truth(
        source=f"archive {path}",
        sessions=result.sessions,
        unfinished=result.unfinished,
        rows=_rows(result.sessions, period),
        events=result.stats.events + result.plan_events,
        invalid=result.invalid,
        duplicates=result.stats.duplicates,
        invalid_examples=invalid,
        reach_ms=max_gap_ms(config),
        scope=f"archive|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
    )


def truth_from_topics(settings: Settings, period: Period, *, now_ms: int, console: Console | None = None) -> Truth:
    """Read the input topics up to their high watermarks into a temporary file and meter it."""
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="metering-reconcile-") as tmp:
        path = Path(tmp) / "events.jsonl"
        with path.open("wb") as out:
            dump = dump_topics(settings, out, now_ms=now_ms, console=console)
        status = console.status("recomputing in time order") if console.is_terminal else contextlib.nullcontext()
        with status:
            result = compute(
                path, period.zone, settings.rules, now_ms=now_ms, on_invalid=lambda *_: None,
                keep=period.widened().days, unordered=True,
            )  # fmt: skip
    marks = ",".join(f"{t}[{p}]={high}" for (t, p), (_, high) in sorted(dump.watermarks.items()))
    return Truth(
        source=f"topics {', '.join(settings.topics.inputs)} at {settings.kafka_bootstrap}",
        sessions=result.sessions,
        unfinished=result.unfinished,
        rows=_rows(result.sessions, period),
        events=result.stats.events + result.plan_events,
        invalid=sum(dump.rejected.values()),
        duplicates=result.stats.duplicates,
        rejected=dict(dump.rejected),
        complete_from_ms=dump.complete_from_ms,
        reach_ms=max_gap_ms(settings.rules, dump.plan_timeouts),
        plans_truncated=dump.plans_truncated,
        scope=f"topics|{settings.kafka_bootstrap}|{marks}",
    )


def _rows(sessions: list[BillingSession], period: Period) -> list[UsageRow]:
    """Usage per (account, app, day) of the sessions on the period's days."""
    book = UsageBook(period.zone)
    book.add_all(sessions)
    return [row for row in book.rows() if period.holds(row[2])]


# -- reading the topics ------------------------------------------------------------------------------


@dataclass
class TopicDump:
    """What :func:`dump_topics` read: counts, and what retention may have taken."""

    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    watermarks: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    complete_from_ms: int | None = None
    plans_truncated: bool = False
    plan_timeouts: list[int] = field(default_factory=list)


def dump_topics(
    settings: Settings,
    out: IO[bytes],
    *,
    now_ms: int,
    console: Console | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> TopicDump:
    """Write the valid events of the input topics, up to the high watermarks taken now, as lines.

    Nothing is committed and no consumer group is joined (partitions are assigned). Messages
    are read ``read_committed``, as the workers read them. Each is checked as the workers check
    it: decoded against the time it was received (its Kafka timestamp) and placed by topic and
    partition; billing-plans contributes its ``plan_changed`` events (idle timeouts). On a
    terminal, a large read shows a progress bar over the messages to read.
    """
    consumer = KafkaConsumer(
        consumer_config(
            settings, f"{settings.app_id}-reconcile", **{"enable.partition.eof": True, "enable.auto.commit": False}
        )
    )
    dump = TopicDump()
    try:
        remaining = _watermarks(consumer, settings, dump)
        consumer.assign([TopicPartition(t, p, dump.watermarks[(t, p)][0]) for t, p in remaining])
        total = sum(high - dump.watermarks[key][0] for key, high in remaining.items())
        reading = _Reading(consumer, remaining, _Filter(settings, out, dump), now_ms, stall_seconds)
        with FileProgress(console or Console(stderr=True), total, "reading input topics", unit="messages") as shown:
            reading.run(settings, shown)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"reading the input topics from Kafka at {settings.kafka_bootstrap} failed ({exc}): check "
            "METERING_KAFKA_BOOTSTRAP and that the brokers are up, or reconcile from an archive (--archive FILE)"
        ) from exc
    finally:
        consumer.close()
    dump.complete_from_ms = _complete_from(dump, reading.first_seen, settings, now_ms)
    return dump


class _Reading:
    """Consumes the assigned partitions until each reaches the offset it had when reconcile began."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        remaining: dict[tuple[str, int], int],
        events: _Filter,
        now_ms: int,
        stall_seconds: float,
    ) -> None:
        self.consumer = consumer
        self.remaining = remaining
        self.events = events
        self.now_ms = now_ms
        self.stall_seconds = stall_seconds
        #: When each partition's first retained message was received (what retention may have taken).
        self.first_seen: dict[tuple[str, int], int] = {}

    def run(self, settings: Settings, on_progress: OnProgress | None) -> None:
        remaining = self.remaining
        done = 0
        last_message = time.monotonic()
        while remaining:
            messages = self.consumer.consume(2000, timeout=1.0)
            if messages:
                last_message = time.monotonic()
            elif time.monotonic() - last_message > self.stall_seconds:
                raise ReconcileError(_stalled(settings, remaining, self.stall_seconds))
            for m in messages:
                done += self._take(m)
            if on_progress is not None:
                on_progress(done)

    def _take(self, m: Any) -> int:
        """Handle one message; 1 if it was input to read, else 0."""
        remaining = self.remaining
        key = (m.topic() or "", m.partition() or 0)
        error = m.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                if key in remaining and (m.offset() or 0) >= remaining[key]:
                    del remaining[key]
                return 0
            raise ReconcileError(f"reading {key[0]}[{key[1]}] from Kafka failed: {error}")
        high = remaining.get(key)
        offset = m.offset() or 0
        if high is None or offset >= high:
            remaining.pop(key, None)
            return 0
        received = _received_ms(m, self.now_ms)
        self.first_seen.setdefault(key, received)
        self.events.take(m.value() or b"", key[0], key[1], received)
        if offset + 1 >= high:
            del remaining[key]
        return 1


def _watermarks(consumer: KafkaConsumer, settings: Settings, dump: TopicDump) -> dict[tuple[str, int], int]:
    """Record (low, high) of every input partition; the partitions with something to read."""
    remaining: dict[tuple[str, int], int] = {}
    for topic in settings.topics.inputs:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaSetupError(
                f"input topic {topic!r} does not exist at {settings.kafka_bootstrap}: check the METERING_TOPIC_* "
                "settings (they must be the workers'), or reconcile from an archive (--archive FILE)"
            )
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15, cached=False)
            dump.watermarks[(topic, partition)] = (low, high)
            if high > low:
                remaining[(topic, partition)] = high
    return remaining


def _received_ms(message: Any, now_ms: int) -> int:
    kind, ts = message.timestamp()
    return int(ts) if kind and ts > 0 else now_ms


class _Filter:
    """Writes to ``out`` what the workers would meter of a message, and counts what they would not."""

    def __init__(self, settings: Settings, out: IO[bytes], dump: TopicDump) -> None:
        topics = settings.topics
        self.plans = topics.plans
        self.partitions = settings.partitions
        self.conversation_topics = frozenset({topics.turns, topics.transfers})
        self.alert_topics = frozenset({topics.alerts})
        self.out = out
        self.dump = dump

    def take(self, value: bytes, topic: str, partition: int, received_ms: int) -> None:
        if topic == self.plans:
            self._plan(value)
            return
        decoded = decode_event(value, received_ms)
        if isinstance(decoded, Rejection):
            self.dump.rejected[decoded.code] += 1
            return
        placed = place(
            decoded[1],
            topic,
            partition,
            self.partitions,
            conversation_topics=self.conversation_topics,
            alert_topics=self.alert_topics,
        )
        if isinstance(placed, Rejection):
            self.dump.rejected[placed.code] += 1
            return
        self._write(value)

    def _plan(self, value: bytes) -> None:
        """Idle timeouts come from ``plan_changed`` events, read as the workers' plan feed reads them."""
        decoded = decode_event(value, 2**62)
        if isinstance(decoded, Rejection) or not isinstance(decoded[1], PlanChanged):
            return
        minutes = decoded[1].idle_timeout_minutes
        if minutes is not None:
            self.dump.plan_timeouts.append(minutes * MINUTE)
        self._write(value)

    def _write(self, value: bytes) -> None:
        # A newline in valid JSON can only be whitespace, so the line stays the same event.
        self.out.write(value.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")
        self.dump.written += 1


def _complete_from(
    dump: TopicDump, first_seen: dict[tuple[str, int], int], settings: Settings, now_ms: int
) -> int | None:
    """The newest instant before which retention may have deleted conversation or alert input.

    For a partition whose low watermark is above 0, everything deleted was received before its
    first retained message; if nothing is retained, we cannot tell when, so ``now_ms``.
    """
    bound: int | None = None
    for (topic, partition), (low, high) in dump.watermarks.items():
        if low == 0:
            continue
        if topic == settings.topics.plans:
            dump.plans_truncated = True
            continue
        since = first_seen.get((topic, partition), now_ms) if high > low else now_ms
        bound = since if bound is None else max(bound, since)
    return bound


def _stalled(settings: Settings, remaining: dict[tuple[str, int], int], seconds: float) -> str:
    waiting = ", ".join(f"{t}[{p}] up to offset {high}" for (t, p), high in sorted(remaining.items())[:5])
    return (
        f"Kafka at {settings.kafka_bootstrap} delivered nothing for {seconds:.0f} s while {waiting} "
        "was still to be read. An open producer transaction holds read_committed readers back; wait for it "
        "to end and run again, or reconcile from an archive (--archive FILE)"
    )


# -- the comparison --------------------------------------------------------------------------------

Location = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class SessionDifference:
    """One session-level difference: where the truth starts it, where ClickHouse counts it (None: nowhere).

    ``day`` is the local day of the truth's start, or of ClickHouse's for an extra session.
    """

    status: Status
    billing_session_id: str
    account_id: str
    app_id: str
    kind: str
    day: str
    started_ms: int | None
    clickhouse_started_ms: int | None
    reason: str

    def row(self) -> tuple[str, ...]:
        def at(ms: int | None) -> str:
            return "" if ms is None else format_ms(ms)

        return (self.status, self.billing_session_id, self.account_id, self.app_id, self.day, self.kind,
                at(self.started_ms), at(self.clickhouse_started_ms))  # fmt: skip


@dataclass
class Comparison:
    """Session-level differences and what a repair writes to remove them."""

    differences: list[SessionDifference] = field(default_factory=list)
    inserts: list[BillingSession] = field(default_factory=list)
    voids: list[SessionVoid] = field(default_factory=list)
    truth_sessions: int = 0
    clickhouse_sessions: int = 0
    #: ClickHouse sessions of conversations the truth does not hold final yet: not compared.
    unfinished: int = 0
    #: Session ids left alone because retention may have deleted input they depend on.
    unverifiable: int = 0

    def count(self, status: Status) -> int:
        return sum(1 for d in self.differences if d.status == status)

    @property
    def unrepairable(self) -> int:
        return self.count("voided")


def _location(s: BillingSession | StoredSession) -> Location:
    return (s.account_id, s.app_id, s.kind, bucket_of(s.started_ms))


def compare(truth: Truth, stored: Sequence[StoredSession], period: Period) -> Comparison:
    """Compare the truth's sessions with ClickHouse's, id by id (see the module docstring).

    Both sides cover the period and its margin days; the ids compared are those either side
    places on the period's days, each with all its places on either side, so a session that
    moved across the period's edge is moved (voided on one side, inserted on the other), never
    counted on both days. Ids only in the margin are another period's business.
    """
    day_of = DayOf(period.zone)

    def inside(ms: int) -> bool:
        return period.holds(day_of(ms))

    unfinished_ids = {s.billing_session_id for s in truth.unfinished}
    unfinished_conversations = {s.conversation_session_id for s in truth.unfinished if s.conversation_session_id}
    verifiable = _verifier(truth)
    out = Comparison()
    live: dict[str, list[StoredSession]] = {}
    voided: set[tuple[str, Location]] = set()
    for e in stored:
        if e.billing_session_id in unfinished_ids or e.conversation_session_id in unfinished_conversations:
            out.unfinished += 1
        elif e.voided:
            voided.add((e.billing_session_id, _location(e)))
        else:
            live.setdefault(e.billing_session_id, []).append(e)
    by_id = {s.billing_session_id: s for s in truth.sessions}
    ours = {sid for sid, s in by_id.items() if inside(s.started_ms)}
    theirs = {sid for sid, entries in live.items() if any(inside(e.started_ms) for e in entries)}
    out.truth_sessions, out.clickhouse_sessions = len(ours), len(theirs)
    for sid in sorted(ours | theirs):
        t, entries = by_id.get(sid), live.get(sid, [])
        involved: list[BillingSession | StoredSession] = [*entries, *([t] if t is not None else [])]
        if not all(verifiable(x) for x in involved):
            out.unverifiable += 1
        elif t is None:
            for e in entries:
                _void(out, e, day_of, "extra", "the rules over all events do not bill this session")
        else:
            _compare_one(out, t, entries, voided, day_of)
    return out


def _compare_one(
    out: Comparison,
    t: BillingSession,
    entries: list[StoredSession],
    voided: set[tuple[str, Location]],
    day_of: DayOf,
) -> None:
    where = _location(t)
    elsewhere = [e for e in entries if _location(e) != where]
    if len(elsewhere) < len(entries):  # counted where it belongs; anything else is a duplicate
        for e in elsewhere:
            _void(out, e, day_of, "extra", f"also counted at {format_ms(e.started_ms)}; it starts at "
                  f"{format_ms(t.started_ms)}")  # fmt: skip
        return
    day = day_of(t.started_ms)
    stored = elsewhere[0].started_ms if elsewhere else None
    if (t.billing_session_id, where) in voided:
        reason = "billed by the rules but voided earlier; voids are permanent: see session_voids for the run"
        out.differences.append(_difference("voided", t, day, t.started_ms, stored, reason))
        return
    out.inserts.append(t)
    status: Status = "moved" if elsewhere else "missing"
    reason = "moved by events that came late" if elsewhere else "billed by the rules, not in ClickHouse"
    out.differences.append(_difference(status, t, day, t.started_ms, stored, reason))
    for e in elsewhere:
        out.voids.append(_void_of(e, f"moved: the rules start it at {format_ms(t.started_ms)}"))


def _void(out: Comparison, e: StoredSession, day_of: DayOf, status: Status, reason: str) -> None:
    out.voids.append(_void_of(e, f"{status}: {reason}"))
    out.differences.append(_difference(status, e, day_of(e.started_ms), None, e.started_ms, reason))


def _difference(  # noqa: PLR0917 - one call per status, all fields needed
    status: Status, s: BillingSession | StoredSession, day: str, truth_ms: int | None, stored_ms: int | None,
    reason: str,
) -> SessionDifference:  # fmt: skip
    return SessionDifference(
        status=status,
        billing_session_id=s.billing_session_id,
        account_id=s.account_id,
        app_id=s.app_id,
        kind=s.kind,
        day=day,
        started_ms=truth_ms,
        clickhouse_started_ms=stored_ms,
        reason=reason,
    )


def _void_of(e: StoredSession, reason: str) -> SessionVoid:
    return SessionVoid(
        billing_session_id=e.billing_session_id,
        account_id=e.account_id,
        app_id=e.app_id,
        kind=e.kind,  # type: ignore[arg-type]
        started_ms=e.started_ms,
        conversation_session_id=e.conversation_session_id,
        session_index=e.session_index,
        reason=reason,
    )


def _verifier(truth: Truth) -> Callable[[BillingSession | StoredSession], bool]:
    """Whether a session cannot depend on input retention deleted (see the module docstring).

    Deleted messages were received before ``complete_from_ms``, so their events happened before
    it plus the 24 h an event may be ahead of its receipt (R10). A conversation session reaches
    back at most the longest idle gap before its first event; an alert only to itself.
    """
    bound = truth.complete_from_ms
    if bound is None:
        return lambda _: True
    horizon = bound + MAX_FUTURE_MS

    def verifiable(s: BillingSession | StoredSession) -> bool:
        if s.kind == "alert":
            return s.started_ms > horizon
        start = s.conversation_started_ms if s.conversation_started_ms is not None else s.started_ms
        return start - truth.reach_ms > horizon

    return verifiable


# -- per-day figures -------------------------------------------------------------------------------

Figures = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class DayDifference:
    account_id: str
    app_id: str
    day: str
    clickhouse: Figures
    truth: Figures

    @property
    def difference(self) -> Figures:
        a, b = self.truth, self.clickhouse
        return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4])

    def rows(self) -> list[tuple[str | int, ...]]:
        key = (self.account_id, self.app_id, self.day)
        return [(*key, "clickhouse", *self.clickhouse), (*key, "truth", *self.truth),
                (*key, "difference", *self.difference)]  # fmt: skip


def compare_days(truth: Sequence[UsageRow], clickhouse: Sequence[UsageRow]) -> list[DayDifference]:
    """(account, app, day) whose figures differ, in order; a side without a row has zeros."""
    zero: Figures = (0, 0, 0, 0, 0)
    ours = {r[:3]: tuple(r[3:]) for r in truth}
    theirs = {r[:3]: tuple(r[3:]) for r in clickhouse}
    return [
        DayDifference(*key, theirs.get(key, zero), ours.get(key, zero))  # type: ignore[arg-type]
        for key in sorted(ours.keys() | theirs.keys())
        if ours.get(key, zero) != theirs.get(key, zero)
    ]


# -- where ClickHouse is ---------------------------------------------------------------------------


class ReconcileStore(Protocol):
    """The two operations reconcile needs from whoever holds ClickHouse."""

    where: str

    def snapshot(self, period: Period) -> Snapshot: ...

    def apply(self, batch: RepairBatch) -> RepairOutcome: ...

    def close(self) -> None: ...


class DirectStore:
    """ClickHouse opened by this process (a server, or an embedded database nobody holds)."""

    def __init__(
        self, client: Client, database: str, where: str, *, owned: bool = True, hold: ReaderHold | None = None
    ) -> None:
        self.client = client
        self.database = database
        self.where = where
        self._owned = owned
        self._hold = hold

    def snapshot(self, period: Period) -> Snapshot:
        return snapshot(self.client, self.database, start=period.first, end=period.last, tz=period.tz)

    def apply(self, batch: RepairBatch) -> RepairOutcome:
        return apply_batch(self.client, self.database, batch)

    def close(self) -> None:
        if self._owned:
            self.client.close()
        if self._hold is not None:
            self._hold.release()


class ApiStore:
    """The running service that holds the embedded database, through its operators' reconcile routes."""

    def __init__(self, client: StoreClient) -> None:
        self.api = client.api
        self.where = f"the running metering service at {client.api}"
        self._client = client

    def snapshot(self, period: Period) -> Snapshot:
        request = PeriodRequest(start=period.first, end=period.last, timezone=period.tz)
        return msgspec.json.decode(self._post("/reconcile/sessions", msgspec.json.encode(request)), type=Snapshot)

    def apply(self, batch: RepairBatch) -> RepairOutcome:
        return msgspec.json.decode(self._post("/reconcile/repair", msgspec.json.encode(batch)), type=RepairOutcome)

    def close(self) -> None:
        return None

    def _post(self, path: str, body: bytes) -> bytes:
        try:
            return self._client.post_json(path, body)
        except StoreHttpError as exc:
            raise _api_error(self.api, path, exc) from exc
        except StoreUnreachableError as exc:
            raise StoreBusyError(
                f"the running metering service at {self.api} did not answer {path} ({exc}); if it has just "
                "stopped, run this again"
            ) from exc


def _api_error(api: str, path: str, exc: StoreHttpError) -> Exception:
    message = exc.message
    if exc.status == 404:
        return ReconcileError(
            f"the running metering service at {api} has no {path}: it runs an older version. Restart it "
            "(metering run / metering sink) with this one, then run reconcile again"
        )
    if exc.status in (401, 403):
        return ReconcileError(f"the running metering service at {api} refused {path}: {message}")
    if exc.status == 503:
        return ClickHouseUnavailableError(f"the running metering service at {api}: {message}")
    return ReconcileError(f"the running metering service at {api} answered {exc.status} to {path}: {message}")


def open_store(settings: Settings, on_wait: OnWait | None = None) -> ReconcileStore:
    """The running service if it holds the embedded database (waiting for one that starts), else our own connection."""
    settings = settings.with_clickhouse_default()
    hold = None
    if settings.embedded_clickhouse:
        reached = reach_store(settings, on_wait=on_wait)
        if isinstance(reached, ReaderHold):
            hold = reached
        else:
            try:
                return ApiStore(store_client(settings, reached, timeout=_API_TIMEOUT_SECONDS))
            except StoreBusyError as exc:
                raise ReconcileError(str(exc)) from exc
    where = redact(settings.clickhouse_url)
    try:
        client = open_client(settings)
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    return DirectStore(client, settings.clickhouse_database, f"ClickHouse at {where}", hold=hold)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Repaired:
    run_id: str
    inserted: int
    voided: int
    days_after: list[DayDifference]


@dataclass
class Report:
    """Everything `metering reconcile` prints, and its exit status."""

    period: Period
    where: str
    truth: Truth
    comparison: Comparison
    days: list[DayDifference]
    repaired: Repaired | None = None

    @property
    def exit_code(self) -> int:
        if self.repaired is not None:
            clean = not self.repaired.days_after and not self.comparison.unrepairable
        else:
            clean = not self.days and not self.comparison.differences
        return EXIT_EQUAL if clean else EXIT_DIFFERENT


@dataclass(frozen=True, slots=True)
class Who:
    """Who runs the repair, for the audit trail."""

    os_user: str
    host: str

    @classmethod
    def here(cls) -> Who:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid {os.getuid()}"
        return cls(user, socket.gethostname())


def reconcile(
    store: ReconcileStore,
    period: Period,
    truth_of: Callable[[], Truth],
    *,
    repair: bool,
    who: Who | None = None,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> Report:
    """Snapshot ClickHouse, then compute the truth (this order: see the module docstring), compare, repair."""
    stored = store.snapshot(period.widened())
    truth = truth_of()
    comparison = compare(truth, stored.sessions, period)
    report = Report(period, store.where, truth, comparison, compare_days(truth.rows, _of(period, stored.usage)))
    if repair:
        report.repaired = _repair(store, report, who or Who.here(), now_ms)
    return report


def _of(period: Period, rows: Sequence[UsageRow]) -> list[UsageRow]:
    return [row for row in rows if period.holds(row[2])]


def _repair(store: ReconcileStore, report: Report, who: Who, now_ms: Callable[[], int]) -> Repaired:
    """Write the run row, the inserts, the voids, the final run row; then read usage again."""
    comparison, period = report.comparison, report.period
    run = ReconcileRun(
        run_id=str(uuid.uuid4()), period_from=period.first, period_to=period.last, timezone=period.tz,
        source=report.truth.source[:4096], status="running", started_ms=now_ms(),
        missing=len(comparison.inserts), extra=len(comparison.voids), unrepairable=comparison.unrepairable,
        os_user=who.os_user, host=who.host,
    )  # fmt: skip
    scope = f"{period}|{report.truth.scope}"
    inserted = voided = 0
    try:
        store.apply(RepairBatch(run=run))
        inserts = sorted(comparison.inserts, key=lambda s: s.billing_session_id)
        for chunk in _chunks(inserts):
            records = [billing_session_record(s) for s in chunk]
            token = _token(scope, "insert", [(s.billing_session_id, s.started_ms) for s in chunk])
            inserted += store.apply(RepairBatch(run=run, token=token, inserts=records)).inserted
        voids = sorted(comparison.voids, key=lambda v: (v.billing_session_id, v.started_ms))
        for part in _chunks(voids):
            token = _token(scope, "void", [(v.billing_session_id, v.started_ms) for v in part])
            voided += store.apply(RepairBatch(run=run, token=token, voids=part)).voided
    except Exception as exc:
        failed = msgspec.structs.replace(
            run, status="failed", finished_ms=now_ms(), inserted=inserted, voided=voided, detail=str(exc)[:4000]
        )
        with contextlib.suppress(Exception):  # the original error is the one to report
            store.apply(RepairBatch(run=failed))
        raise
    store.apply(RepairBatch(run=msgspec.structs.replace(
        run, status="done", finished_ms=now_ms(), inserted=inserted, voided=voided)))  # fmt: skip
    after = store.snapshot(period).usage if (inserted or voided) else None
    days_after = report.days if after is None else compare_days(report.truth.rows, _of(period, after))
    return Repaired(run.run_id, inserted, voided, days_after)


def _chunks(items: Sequence[T]) -> Iterator[list[T]]:
    for i in range(0, len(items), MAX_BATCH):
        yield list(items[i : i + MAX_BATCH])


def _token(scope: str, what: str, keys: Sequence[tuple[str, int]]) -> str:
    """Deterministic insert token: the run scope and exactly these records (see SessionWriter)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{scope}|{what}".encode())
    for sid, started in keys:
        h.update(f"\n{sid}|{started}".encode())
    return f"reconcile:{what}:{h.hexdigest()}"


# -- output ----------------------------------------------------------------------------------------


def render_report(report: Report, fmt: Format) -> str:
    """The report on stdout: per-day differences (csv), plus the sessions (table: some, json: all)."""
    day_rows = [row for d in report.days for row in d.rows()]
    if fmt == "csv":
        return render(DAY_COLUMNS, day_rows, "csv")
    differences = report.comparison.differences
    if fmt == "json":
        payload = {
            "summary": _summary(report),
            "days": [dict(zip(DAY_COLUMNS, row, strict=True)) for row in day_rows],
            "sessions": [{**dict(zip(SESSION_COLUMNS, d.row(), strict=True)), "reason": d.reason} for d in differences],
        }
        return json.dumps(payload, indent=1) + "\n"
    title = f"Usage differences {report.period}"
    text = render(DAY_COLUMNS, day_rows, "table", title=title) if day_rows else f"{title}: none\n"
    if differences:
        shown = [d.row() for d in differences[:TABLE_SESSIONS]]
        text += render(SESSION_COLUMNS, shown, "table", title="Session differences")
        if len(differences) > TABLE_SESSIONS:
            text += f"... and {len(differences) - TABLE_SESSIONS} more: --format json lists them all\n"
    return text


def _summary(report: Report) -> dict[str, Any]:
    c, t = report.comparison, report.truth
    return {
        "period": {"from": report.period.first.isoformat(), "to": report.period.last.isoformat(),
                   "timezone": report.period.tz},
        "source": t.source,
        "clickhouse": report.where,
        "events": t.events,
        "invalid": t.invalid,
        "duplicates": t.duplicates,
        "truth_sessions": c.truth_sessions,
        "clickhouse_sessions": c.clickhouse_sessions,
        "missing": c.count("missing"),
        "extra": c.count("extra"),
        "moved": c.count("moved"),
        "voided": c.count("voided"),
        "unfinished": len(t.unfinished),
        "unfinished_in_clickhouse": c.unfinished,
        "unverifiable": c.unverifiable,
        "days_different": len(report.days),
        "repair": None if report.repaired is None else {
            "run_id": report.repaired.run_id,
            "inserted": report.repaired.inserted,
            "voided": report.repaired.voided,
            "days_different_after": len(report.repaired.days_after),
        },
        "exit_code": report.exit_code,
    }  # fmt: skip


def summary_text(report: Report) -> str:
    """The stderr summary: what was read, what differs, what was done, and what to do next."""
    c, t, r = report.comparison, report.truth, report.repaired
    lines = [
        f"reconcile {report.period}: truth from {t.source} ({t.events} events, {t.invalid} left out as invalid"
        f"{_codes(t.rejected)}, {t.duplicates} duplicates); ClickHouse: {report.where}",
        f"sessions: {c.truth_sessions} billed by the rules, {c.clickhouse_sessions} in ClickHouse; "
        f"{c.count('missing')} missing, {c.count('extra')} extra, {c.count('moved')} moved, "
        f"{c.count('voided')} voided earlier; {len(report.days)} (account, app, day) differ",
        *t.invalid_examples,
    ]
    if t.unfinished or c.unfinished:
        lines.append(
            f"{len(t.unfinished)} sessions of conversations still going on ({c.unfinished} already in ClickHouse) "
            "were left alone: reconcile again once they are over"
        )
    if c.unverifiable:
        lines.append(
            f"{c.unverifiable} sessions may depend on messages retention deleted (before "
            f"{format_ms(t.complete_from_ms or 0)}) and were left alone: reconcile this period from an archive"
        )
    if t.plans_truncated:
        lines.append("the billing-plans topic lost messages to retention: idle timeouts of old plans are unknown")
    if c.unrepairable:
        lines.append(f"{c.unrepairable} sessions billed by the rules are voided: see session_voids for who voided them")
    if r is not None:
        state = "usage now equals the truth" if not r.days_after else f"{len(r.days_after)} days still differ"
        lines.append(f"repaired (run {r.run_id}): {r.inserted} sessions inserted, {r.voided} voided; {state}")
    elif c.differences or report.days:
        lines.append("run again with --repair to write the corrections")
    return "\n".join(lines) + "\n"


def _codes(rejected: dict[str, int]) -> str:
    return f": {', '.join(f'{n} {code}' for code, n in sorted(rejected.items()))}" if rejected else ""


# -- the command -----------------------------------------------------------------------------------


def reconcile_command(
    settings: Settings,
    *,
    start: date,
    end: date,
    tz: str | None,
    archive: Path | None,
    repair: bool,
    fmt: Format,
) -> int:
    """`metering reconcile`: 0 equal (or repaired), 1 differences left, 2 an error (stderr says what to do)."""
    err = Console(stderr=True)
    now_ms = time.time_ns() // 1_000_000
    try:
        period = make_period(start, end, tz or settings.timezone)
        if archive is not None:
            with archive.open("rb"):  # unreadable: say so before touching ClickHouse
                pass
        store = open_store(settings, on_wait=lambda message: err.print(message, highlight=False))
        try:
            report = reconcile(store, period, _truth_source(settings, period, archive, now_ms, err), repair=repair)
        finally:
            store.close()
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {exc.filename or archive}: {exc.strerror or exc}", highlight=False)
        return EXIT_ERROR
    except (ReconcileError, ClickHouseError, StoreBusyError, KafkaSetupError, KafkaException, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return EXIT_ERROR
    sys.stdout.write(render_report(report, fmt))
    sys.stderr.write(summary_text(report))
    return report.exit_code


def _truth_source(
    settings: Settings, period: Period, archive: Path | None, now_ms: int, console: Console
) -> Callable[[], Truth]:
    if archive is not None:
        return lambda: truth_from_archive(archive, period, settings.rules, now_ms=now_ms, console=console)
    return lambda: truth_from_topics(settings, period, now_ms=now_ms, console=console)
