"""The incremental rules engine: events in arrival order in, final billing sessions out (R1-R9).

One ``Meter`` owns one input partition: its event-time clock, the state of the conversations
routed to it and the alert ids it has seen. It holds no I/O and reads no clock: wall-clock
time arrives as an argument (``idle_tick``, ``clock_ceiling``) so that replays are exact.

Invariants the tests hold it to:
- every event no older than the allowed lateness is billed exactly as in a batch run over
  the same events sorted by time, whatever the arrival order;
- an event that would change a final conversation session is returned as late, never billed;
- applying an event twice changes nothing; a billing session is emitted once.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import IntEnum
from heapq import heappop, heappush
from typing import Final, Protocol

from msgspec.structs import astuple

from pipeline.contract.events import AgentTransfer, AlertDelivered, ConversationTurn
from pipeline.rules.billing import bill_alert, bill_segment
from pipeline.rules.config import IdleTimeouts, RulesConfig
from pipeline.rules.model import (
    AGENT,
    BOT,
    END_OF_CONVERSATION,
    EVENT_ID,
    TEST,
    TRANSFER_ENDED,
    TRANSFER_STARTED,
    USER,
    WHAT,
    BillingSession,
    Buffered,
    LateEvent,
    Segment,
    T,
)
from pipeline.rules.segmentation import gap_limit, horizon, split

# Hot-path names as Finals of this module: compiled, a C global rather than a dict lookup (pipeline.infra.native).
_TURN: Final = ConversationTurn
_TRANSFER: Final = AgentTransfer
_astuple: Final = astuple

NEVER: Final = -(2**62)
FOREVER: Final = 2**62

#: The field order ``Meter.apply`` unpacks (a test holds the event structs to it).
TURN_FIELDS: Final = (
    "event_id",
    "occurred_at",
    "account_id",
    "app_id",
    "conversation_id",
    "user_id",
    "channel",
    "speaker",
    "end_of_conversation",
    "is_test",
    "message_id",
)
TRANSFER_FIELDS: Final = (
    "event_id",
    "occurred_at",
    "account_id",
    "app_id",
    "conversation_id",
    "action",
    "agent_id",
    "user_id",
)

LATE_FINAL: Final = "would change a conversation session that is already final"
LATE_CLOCK: Final = "older than the partition clock minus the allowed lateness"


class Outcome(IntEnum):
    APPLIED = 0
    DUPLICATE = 1
    LATE = 2


# The members as constants: compiled, a constant is a C global, a member a lookup on the class.
APPLIED: Final = Outcome.APPLIED
DUPLICATE: Final = Outcome.DUPLICATE
LATE: Final = Outcome.LATE


#: A conversation's state as it is persisted: ``ConversationState``'s fields in order.
ConversationWire = tuple[str, str, list[Buffered], dict[str, int], int, int, str, int, bool, bool, int]
#: The partition clock as it is persisted: ``PartitionClock``'s fields in order.
ClockWire = tuple[int, int, bool]


class ConversationState:
    """What a conversation needs between events: its open sessions' events and its ids.

    ``events`` holds only events of sessions not yet final, sorted. ``seen`` maps event ids to
    their time, for deduplication, and outlives the events by the dedupe horizon. The ``tail_*``
    fields describe the last open session so that an in-order event costs O(1). A plain class,
    not a Struct, because compiled (``pipeline.infra.native``) its fields are read at C speed.
    """

    __slots__ = (
        "app_id",
        "conversation_id",
        "events",
        "horizon",
        "scheduled",
        "seen",
        "tail_eoc",
        "tail_first",
        "tail_start",
        "tail_timeout",
        "tail_transfer_open",
    )

    def __init__(
        self,
        app_id: str,
        conversation_id: str,
        events: list[Buffered],
        seen: dict[str, int],
        *,
        horizon: int = NEVER,
        tail_start: int = 0,
        tail_first: str = "",
        tail_timeout: int = 0,
        tail_eoc: bool = False,
        tail_transfer_open: bool = False,
        scheduled: int = FOREVER,
    ) -> None:
        self.app_id = app_id
        self.conversation_id = conversation_id
        self.events = events
        self.seen = seen
        self.horizon = horizon
        self.tail_start = tail_start
        self.tail_first = tail_first
        self.tail_timeout = tail_timeout
        self.tail_eoc = tail_eoc
        self.tail_transfer_open = tail_transfer_open
        self.scheduled = scheduled

    def to_wire(self) -> ConversationWire:
        return (
            self.app_id,
            self.conversation_id,
            self.events,
            self.seen,
            self.horizon,
            self.tail_start,
            self.tail_first,
            self.tail_timeout,
            self.tail_eoc,
            self.tail_transfer_open,
            self.scheduled,
        )

    @staticmethod
    def from_wire(w: ConversationWire) -> ConversationState:
        return ConversationState(
            w[0],
            w[1],
            w[2],
            w[3],
            horizon=w[4],
            tail_start=w[5],
            tail_first=w[6],
            tail_timeout=w[7],
            tail_eoc=w[8],
            tail_transfer_open=w[9],
            scheduled=w[10],
        )


class PartitionClock:
    """R9's partition clock: event time, or wall-clock time while the partition is idle.

    ``high_water`` is the highest event time ever seen; it never follows the wall clock, so
    an idle spell cannot expire state that a resumed replay still needs.
    """

    __slots__ = ("clock", "high_water", "idle")

    def __init__(self, clock: int = NEVER, high_water: int = NEVER, idle: bool = False) -> None:
        self.clock = clock
        self.high_water = high_water
        self.idle = idle

    def to_wire(self) -> ClockWire:
        return (self.clock, self.high_water, self.idle)

    @staticmethod
    def from_wire(w: ClockWire) -> PartitionClock:
        return PartitionClock(w[0], w[1], w[2])


@dataclass(slots=True)
class MeterStats:
    """Counters that explain every event: nothing disappears unexplained (R3, R4, R9)."""

    events: int = 0
    duplicates: int = 0
    late: int = 0
    sessions_final: int = 0
    sessions_billable: int = 0
    sessions_non_interactive: int = 0
    sessions_test: int = 0
    alerts_test: int = 0
    transfers_ended_without_start: int = 0
    transfers_started_while_open: int = 0
    transfers_left_open: int = 0
    usage_sessions: int = 0
    voice_sessions: int = 0
    alert_sessions: int = 0

    def add(self, other: MeterStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: How much event time passes between two sweeps of an archive for expired entries.
ARCHIVE_EXPIRY_EVERY: Final = 60_000


class Archive(Protocol):
    """Where a Meter keeps what it only has to remember: final conversations (their ids) and alert ids.

    Without one, they stay in memory until they expire, as for ``metering compute``. The stream
    worker with an on-disk store passes one backed by RocksDB, so 7 days of dedupe ids need no
    memory. ``expires`` is the high-water time after which an entry is forgotten.
    """

    def get_conversation(self, key: str) -> ConversationState | None: ...

    def put_conversation(self, key: str, conv: ConversationState, expires: int) -> None: ...

    def drop_conversation(self, key: str) -> None: ...

    def has_alert(self, key: str) -> bool: ...

    def put_alert(self, key: str, t: int, expires: int) -> None: ...

    def expire(self, high_water: int) -> None: ...


def conversation_key(app_id: str, conversation_id: str) -> str:
    return f"c\x1f{app_id}\x1f{conversation_id}"


def alert_key(app_id: str, event_id: str) -> str:
    return f"a\x1f{app_id}\x1f{event_id}"


class Meter:
    """Incremental billing for one partition; see the module docstring for its guarantees."""

    def __init__(
        self,
        config: RulesConfig,
        timeouts: IdleTimeouts | None = None,
        *,
        track_changes: bool = False,
        archive: Archive | None = None,
    ) -> None:
        self.config = config
        self.timeouts = timeouts or IdleTimeouts(config)
        self.partition = PartitionClock()
        self.conversations: dict[str, ConversationState] = {}
        self.alerts_seen: dict[str, int] = {}
        self.stats = MeterStats()
        self.sessions: list[BillingSession] = []
        self.late: list[LateEvent] = []
        #: The clock never moves past this (the shell sets wall clock + skew) so one event
        #: stamped hours ahead cannot finalize everything else early.
        self.clock_ceiling = FOREVER
        self._lateness = config.allowed_lateness_ms
        self._transfer_timeout = config.open_transfer_timeout_ms
        self._retention = config.allowed_lateness_ms + config.dedupe_horizon_ms
        self._due: list[tuple[int, str]] = []
        self._expiry: list[tuple[int, str]] = []
        self._track = track_changes
        self._archive = archive
        self._archive_swept = NEVER
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    # -- input ---------------------------------------------------------------------------

    def apply(self, t: int, event: ConversationTurn | AgentTransfer | AlertDelivered) -> Outcome:  # noqa: PLR0911, PLR0912, PLR0915 - the per-event hot path, flat on purpose for mypyc (see its docstring)
        """Apply one event received now; billing sessions it finalizes land in ``sessions``.

        The in-order path is written out flat: it runs for nearly every event of a stream.
        """
        self.stats.events += 1
        p = self.partition
        if t > p.high_water:
            p.high_water = t
            expiry = self._expiry
            if expiry and expiry[0][0] < t:
                self._expire()
            if self._archive is not None and t - self._archive_swept >= ARCHIVE_EXPIRY_EVERY:
                self._archive_swept = t
                self._archive.expire(t)
        ceiling = self.clock_ceiling
        capped = t if t < ceiling else ceiling
        if p.idle:
            p.idle = False
            p.clock = capped
        elif capped > p.clock:
            p.clock = capped
        # One call for all fields (``TURN_FIELDS``, ``TRANSFER_FIELDS``): compiled, each attribute is a lookup.
        if isinstance(event, _TURN):
            event_id, _, account_id, app_id, conversation_id, user_id, channel, speaker, eoc, test, _ = _astuple(event)
            code = USER if speaker == "user" else BOT if speaker == "bot" else AGENT
            if eoc:
                code |= END_OF_CONVERSATION
            if test:
                code |= TEST
            e: Buffered = (t, event_id, code, channel, user_id, "", account_id)
        elif isinstance(event, _TRANSFER):
            event_id, _, account_id, app_id, conversation_id, action, agent_id, user_id = _astuple(event)
            code = TRANSFER_STARTED if action == "started" else TRANSFER_ENDED
            e = (t, event_id, code, "", user_id or "", agent_id or "", account_id)
        else:
            outcome = self._apply_alert(t, event)
            self._sweep()
            return outcome
        key = f"c\x1f{app_id}\x1f{conversation_id}"
        conv = self.conversations.get(key)
        stale = t < p.clock - self._lateness
        if conv is None and self._archive is not None:
            conv = self._archive.get_conversation(key)
            if conv is not None:
                if event_id in conv.seen:
                    self.stats.duplicates += 1
                    return DUPLICATE
                if t <= conv.horizon:
                    return self._late(t, event_id, app_id, LATE_FINAL)
                self._archive.drop_conversation(key)  # a new session: in memory while it is open
                self.conversations[key] = conv
        if conv is None:
            if stale:
                return self._late(t, event_id, app_id, LATE_CLOCK)
            conv = ConversationState(app_id, conversation_id, [], {})
            self.conversations[key] = conv
        elif event_id in conv.seen:
            self.stats.duplicates += 1
            return DUPLICATE
        elif t <= conv.horizon:
            return self._late(t, event_id, app_id, LATE_FINAL)
        events = conv.events
        last_t = events[-1][T] if events else NEVER
        if t < last_t or (t == last_t and e < events[-1]):
            if not self._insert(key, conv, e, stale):
                return self._late(t, event_id, app_id, LATE_CLOCK)
        else:
            if events and not conv.tail_eoc:
                limit = conv.tail_timeout
                if conv.tail_transfer_open and self._transfer_timeout > limit:
                    limit = self._transfer_timeout
                new_session = t - last_t > limit
            else:
                new_session = True
            if new_session:
                if stale:
                    return self._late(t, event_id, app_id, LATE_CLOCK)
                conv.tail_start = t
                conv.tail_first = event_id
                conv.tail_timeout = self.timeouts.at(app_id, t)
                conv.tail_transfer_open = False
            events.append(e)
            if code & END_OF_CONVERSATION:
                conv.tail_eoc = True
                due = t + self._lateness
            else:
                conv.tail_eoc = False
                what = code & WHAT
                if what == TRANSFER_STARTED:
                    conv.tail_transfer_open = True
                elif what == TRANSFER_ENDED:
                    conv.tail_transfer_open = False
                limit = conv.tail_timeout
                if conv.tail_transfer_open and self._transfer_timeout > limit:
                    limit = self._transfer_timeout
                due = t + limit + self._lateness
            if due < conv.scheduled:
                conv.scheduled = due
                heappush(self._due, (due, key))
        conv.seen[event_id] = t
        if self._track:
            self.changed.add(key)
        due_list = self._due
        if due_list and due_list[0][0] < p.clock:
            self._sweep()
        return APPLIED

    def idle_tick(self, now_ms: int) -> None:
        """The partition received nothing for a while: its clock follows the wall clock (R9)."""
        p = self.partition
        p.idle = True
        p.clock = max(p.clock, now_ms)
        self._sweep()

    def plan_changed(self, app_id: str, at_ms: int, idle_timeout_ms: int | None, event_id: str = "") -> None:
        """An app's idle timeout changes from ``at_ms`` on; its open conversations are re-planned."""
        self.timeouts.plan_changed(app_id, at_ms, idle_timeout_ms, event_id)
        for key, conv in self.conversations.items():
            if conv.app_id == app_id and conv.events:
                self._set_tail(conv, self._split(conv)[-1])
                self._schedule(key, conv, NEVER)
        self._sweep()

    def finish(self) -> None:
        """End of input (offline compute): every open conversation session becomes final."""
        self.partition.clock = FOREVER
        self._sweep()

    def drain(self) -> tuple[list[BillingSession], list[LateEvent]]:
        sessions, late = self.sessions, self.late
        self.sessions, self.late = [], []
        return sessions, late

    # -- state ---------------------------------------------------------------------------

    def restore(
        self,
        partition: PartitionClock,
        conversations: Iterable[ConversationState],
        alerts: Iterable[tuple[str, int]],
    ) -> None:
        """Load persisted state (after a restart or rebalance) and rebuild the schedules."""
        self.partition = partition
        archive = self._archive
        for conv in conversations:
            key = conversation_key(conv.app_id, conv.conversation_id)
            if conv.events:
                self.conversations[key] = conv
                conv.scheduled = FOREVER
                self._schedule(key, conv, NEVER)
            elif archive is not None:  # kept in memory before (another store): archived now
                archive.put_conversation(key, conv, conv.horizon + self._retention)
                self._forget(key)
            else:
                self.conversations[key] = conv
                heappush(self._expiry, (conv.horizon + self._retention, key))
        for key, t in alerts:
            if archive is not None:
                archive.put_alert(key, t, t + self._retention)
                self._forget(key)
            else:
                self.alerts_seen[key] = t
                heappush(self._expiry, (t + self._retention, key))

    def take_changes(self) -> tuple[dict[str, ConversationState | int], set[str]]:
        """Keys changed since the last call (with their value) and keys removed, for persistence."""
        upserts: dict[str, ConversationState | int] = {}
        removed: set[str] = set()
        for key in self.changed | self.removed:
            value: ConversationState | int | None = (
                self.conversations.get(key) if key[0] == "c" else self.alerts_seen.get(key)
            )
            if value is None:
                removed.add(key)
            else:
                upserts[key] = value
        self.changed, self.removed = set(), set()
        return upserts, removed

    @property
    def open_conversations(self) -> int:
        return sum(1 for c in self.conversations.values() if c.events)

    # -- internals -----------------------------------------------------------------------

    def _late(self, t: int, event_id: str, app_id: str, reason: str) -> Outcome:
        self.stats.late += 1
        self.late.append(LateEvent(t, event_id, app_id, reason, self.partition.clock))
        return LATE

    def _apply_alert(self, t: int, event: AlertDelivered) -> Outcome:
        key = alert_key(event.app_id, event.event_id)
        archive = self._archive
        if key in self.alerts_seen or (archive is not None and archive.has_alert(key)):
            self.stats.duplicates += 1
            return DUPLICATE
        if t < self.partition.clock - self._lateness:
            return self._late(t, event.event_id, event.app_id, LATE_CLOCK)
        if archive is not None:
            archive.put_alert(key, t, t + self._retention)
        else:
            self.alerts_seen[key] = t
            heappush(self._expiry, (t + self._retention, key))
            if self._track:
                self.changed.add(key)
        if event.is_test:
            self.stats.alerts_test += 1
        else:
            self.stats.alert_sessions += 1
            self.sessions.append(bill_alert(t, event))
        return APPLIED

    def _insert(self, key: str, conv: ConversationState, e: Buffered, stale: bool) -> bool:
        """Insert an out-of-order event; False if, being stale, it would open a session of its own."""
        events = conv.events
        insort(events, e)
        segments = self._split(conv)
        if stale and _alone(segments, e):
            events.remove(e)
            return False
        self._set_tail(conv, segments[-1])
        self._schedule(key, conv, e[T] + self._lateness)
        return True

    def _tail_deadline(self, conv: ConversationState) -> int:
        last = conv.events[-1][T]
        if conv.tail_eoc:
            return last + self._lateness
        return last + gap_limit(conv.tail_timeout, conv.tail_transfer_open, self._transfer_timeout) + self._lateness

    def _set_tail(self, conv: ConversationState, seg: Segment) -> None:
        conv.tail_start = seg.start
        conv.tail_first = seg.first_event_id
        conv.tail_timeout = seg.timeout_ms
        conv.tail_eoc = seg.end_of_conversation
        conv.tail_transfer_open = seg.transfer_open

    def _split(self, conv: ConversationState) -> list[Segment]:
        app_id = conv.app_id
        at = self.timeouts.at
        return split(conv.events, lambda t: at(app_id, t), self._transfer_timeout)

    def _schedule(self, key: str, conv: ConversationState, due: int) -> None:
        if due < conv.scheduled:
            conv.scheduled = due
            heappush(self._due, (due, key))

    def _sweep(self) -> None:
        due = self._due
        clock = self.partition.clock
        while due and due[0][0] < clock:
            when, key = heappop(due)
            conv = self.conversations.get(key)
            if conv is not None and conv.scheduled == when:
                self._finalize_due(key, conv, clock)

    def _finalize_due(self, key: str, conv: ConversationState, clock: int) -> None:  # noqa: PLR0912 - finalization's cases in one place, on the compiled hot path
        conv.scheduled = FOREVER
        events = conv.events
        if events[0][EVENT_ID] == conv.tail_first:
            deadline = self._tail_deadline(conv)
            if deadline >= clock:
                self._schedule(key, conv, deadline)
                return
        segments = self._split(conv)
        done = 0
        for seg in segments:
            edge = horizon(seg, self._transfer_timeout)
            if edge + self._lateness >= clock:
                self._schedule(key, conv, edge + self._lateness)
                break
            self._finalize(conv, seg)
            conv.horizon = edge
            done += seg.events
        if not done:
            return
        del events[:done]
        if self._track:
            self.changed.add(key)
        if events:
            self._set_tail(conv, segments[-1])
        else:
            conv.tail_eoc = conv.tail_transfer_open = False
            if self._archive is None:
                heappush(self._expiry, (conv.horizon + self._retention, key))
        floor = min(self.partition.high_water - self._retention, conv.horizon + 1)
        if not events:
            if floor > conv.horizon:
                conv.seen = {}  # every id seen is of a final session, none within the horizon
            # else: kept whole; the conversation expires with all of them (none is newer than its horizon)
        elif any(t < floor for t in conv.seen.values()):
            conv.seen = {k: t for k, t in conv.seen.items() if t >= floor}
        if not events and self._archive is not None:
            self._archive.put_conversation(key, conv, conv.horizon + self._retention)
            del self.conversations[key]

    def _finalize(self, conv: ConversationState, seg: Segment) -> None:
        s = self.stats
        s.sessions_final += 1
        s.transfers_ended_without_start += seg.ended_without_start
        s.transfers_started_while_open += seg.started_while_open
        if seg.transfer_open:
            s.transfers_left_open += 1
        if not seg.interactive:
            s.sessions_non_interactive += 1
            return
        if seg.test:
            s.sessions_test += 1
            return
        s.sessions_billable += 1
        billed = bill_segment(conv.app_id, conv.conversation_id, seg)
        if billed[0].kind == "voice":
            s.voice_sessions += len(billed)
        else:
            s.usage_sessions += len(billed)
        self.sessions.extend(billed)

    def _expire(self) -> None:
        """Forget conversations and alert ids older than the dedupe horizon (high-water time)."""
        expiry = self._expiry
        high_water = self.partition.high_water
        while expiry and expiry[0][0] < high_water:
            _, key = heappop(expiry)
            if key[0] == "a":
                t = self.alerts_seen.get(key)
                if t is not None and t + self._retention < high_water:
                    del self.alerts_seen[key]
                    self._forget(key)
                continue
            conv = self.conversations.get(key)
            if conv is not None and not conv.events and conv.horizon + self._retention < high_water:
                del self.conversations[key]
                self._forget(key)

    def _forget(self, key: str) -> None:
        if self._track:
            self.removed.add(key)


def _alone(segments: list[Segment], e: Buffered) -> bool:
    """True if ``e`` would form a conversation session of its own."""
    event_id = e[EVENT_ID]
    return any(seg.events == 1 and seg.first_event_id == event_id for seg in segments)
