"""The balances of one input partition: messages in, alerts, snapshots and changelog records out.

The adapter's pure part (no Kafka, the clock passed in): decodes `billing-plans` and
`billing-sessions` messages, applies them with the rules of ``pipeline.balance``, and says
what to produce. The balance processor (``pipeline.stream.balance``) owns one per assigned
partition and writes all of it, with the consumed offsets, in one Kafka transaction.

The changelog holds each app's state under two kinds of keys, so that a batch rewrites only
what it touched: ``h<RS>{app_id}``, the app without its session-id buckets, and
``d<RS>{day}<RS>{hour}<RS>{app_id}``, the charged session ids of one UTC day (of their close)
that started in one hour: a shard that a batch of recent sessions touches once, small enough
for one Kafka message even for an app with millions of sessions a day. Only the shards that
got a session are rewritten; once a day is settled its shards get tombstones.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

import msgspec
from msgspec import Struct

from pipeline.balance.ledger import (
    AppBalance,
    BalanceConfig,
    Charged,
    Tally,
    advance,
    apply_event,
    charge,
    close_instant,
    entitled,
)
from pipeline.balance.money import ZERO, format_money, sub
from pipeline.contract.decode import decode_event
from pipeline.contract.events import (
    AgentsSubscribed,
    BalanceAlert,
    BalanceSnapshot,
    BillingSessionRecord,
    DeadLetter,
    FundsAdded,
    FundsRefunded,
    LateRecord,
    PlanChanged,
    PlanEvent,
    Rejection,
    ms_to_datetime,
)
from pipeline.infra.kafka import partition_of
from pipeline.rules.agents import SeatTimeline
from pipeline.rules.config import DAY, HOUR
from pipeline.rules.meter import Outcome
from pipeline.rules.model import Kind
from pipeline.stream.records import billing_session_of, dead_letter

SEP: Final = "\x1e"
KINDS: Final[tuple[Kind, ...]] = ("usage", "alert", "voice")
LATE_REASON: Final = (
    "balance: the session closes on a day the balance has settled (past the dedupe horizon); "
    "not charged, left for reconciliation"
)

_session_decoder: Final = msgspec.json.Decoder(BillingSessionRecord)
_record_encoder: Final = msgspec.msgpack.Encoder()
_json: Final = msgspec.json.Encoder()


class AppRecord(Struct, kw_only=True):
    """Everything persisted for one app: its balance, its seats and how many changes it has had."""

    balance: AppBalance
    seats: SeatTimeline
    version: int = 0


_app_decoder: Final = msgspec.msgpack.Decoder(AppRecord)
_bucket_decoder: Final = msgspec.msgpack.Decoder(dict[str, Charged])


@dataclass(frozen=True, slots=True)
class Input:
    """One consumed message, as the partition needs it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(slots=True)
class Outputs:
    """What a batch produces, and the figures the metrics take once the batch is committed."""

    alerts: list[BalanceAlert] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    late: list[LateRecord] = field(default_factory=list)
    charged: dict[str, int] = field(default_factory=dict)
    cost: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    reversed: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    invalid: dict[tuple[str, str], int] = field(default_factory=dict)
    backdated: int = 0

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


def reject(
    message: Input,
    rejection: Rejection,
    now_ms: int,
    dead: list[DeadLetter],
    invalid: dict[tuple[str, str], int],
) -> None:
    """A consumed message that is not valid: its dead letter, counted by topic and reason code."""
    dead.append(
        dead_letter(
            message.value or b"",
            rejection,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            received_at=ms_to_datetime(now_ms),
        )
    )
    key = (message.topic, rejection.code)
    invalid[key] = invalid.get(key, 0) + 1


def misrouted(key: str, partition: int, partitions: int, key_named: str) -> Rejection | None:
    """The rejection of a message keyed for another partition (whose processor holds the key's state), if it is."""
    expected = partition_of(key.encode(), partitions)
    if expected == partition:
        return None
    return Rejection(
        "misrouted",
        f"misrouted: key {key!r} belongs on partition {expected}, not {partition}; produce with the key "
        f"{key_named} and a Java-compatible murmur2 partitioner (librdkafka: murmur2_random)",
    )


def head_key(app_id: str) -> bytes:
    return f"h{SEP}{app_id}".encode()


def bucket_key(app_id: str, day: int, hour: int) -> bytes:
    return f"d{SEP}{day}{SEP}{hour}{SEP}{app_id}".encode()


def decode_session(value: bytes | None) -> BillingSessionRecord | Rejection:
    if value is None:
        return Rejection("not_json", "empty message (no value)")
    try:
        record = _session_decoder.decode(value)
    except msgspec.ValidationError as exc:
        return Rejection("schema", f"not a billing session record: {exc}")
    except msgspec.DecodeError as exc:
        return Rejection("not_json", str(exc))
    for name in ("started_at", "ended_at", "conversation_started_at", "conversation_ended_at"):
        value_at = getattr(record, name)
        if value_at is not None and value_at.tzinfo is None:
            return Rejection("schema", f"{name} {value_at.isoformat()} has no time zone offset")
    if not record.billing_session_id:
        return Rejection("schema", "billing_session_id is empty")
    return record


def snapshot(record: AppRecord, now_ms: int, unlimited_plans: frozenset[str]) -> BalanceSnapshot:
    """The `balance-state` message of an app: its figures in the currency of its latest plan."""
    state = record.balance
    plan = state.plan
    tally = state.tallies.get(state.currency) or Tally()
    seats = record.seats.changes
    expires = state.expires_at(now_ms)
    upcoming = state.plans.pending(max(now_ms, state.seen_ms))
    request = state.pending_extension()
    return BalanceSnapshot(
        account_id=state.account_id,
        app_id=state.app_id,
        plan=None if plan is None else plan.plan,
        currency=state.currency,
        funds=format_money(tally.funds),
        usage_cost=format_money(tally.usage_cost),
        alert_cost=format_money(tally.alert_cost),
        voice_cost=format_money(tally.voice_cost),
        usage_sessions=tally.usage_sessions,
        alert_sessions=tally.alert_sessions,
        voice_sessions=tally.voice_sessions,
        unpriced_sessions=state.unpriced,
        balance=format_money(tally.balance),
        threshold=format_money(state.threshold),
        status=state.status,
        entitled=entitled(state, now_ms, unlimited_plans),
        agents=seats[-1][2] if seats else 0,
        version=record.version,
        updated_at=ms_to_datetime(now_ms),
        expires_at=None if expires is None else ms_to_datetime(expires),
        expired=expires is not None and expires <= now_ms,
        scheduled_plan=upcoming[0].plan if upcoming else None,
        scheduled_at=ms_to_datetime(upcoming[0].effective_ms) if upcoming else None,
        owner=state.owner,
        extension_request_id=None if request is None else request.request_id,
        extension_days=None if request is None else request.days,
        extension_reason=None if request is None else request.reason,
        extension_requested_at=None if request is None else ms_to_datetime(request.requested_ms),
    )


#: The duplicates metric's label of each billing-plans event type (``metering_balance_duplicates_total``).
_DUPLICATE_NAME: Final[dict[type, str]] = {PlanChanged: "plan", FundsAdded: "funds", FundsRefunded: "refund"}


def _costs(state: AppBalance) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for currency, tally in state.tallies.items():
        out[("usage", currency)] = tally.usage_cost
        out[("alert", currency)] = tally.alert_cost
        out[("voice", currency)] = tally.voice_cost
    return out


class BalancePartition:
    """The apps of one partition of `billing-sessions` + `billing-plans` (co-partitioned by ``app_id``)."""

    def __init__(
        self,
        partition: int,
        partitions: int,
        *,
        plans_topic: str,
        sessions_topic: str,
        config: BalanceConfig,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.plans_topic = plans_topic
        self.sessions_topic = sessions_topic
        self.config = config
        self.apps: dict[str, AppRecord] = {}
        #: app -> the (day, start hour) shards in the changelog, and those changed since written
        self._written: dict[str, set[tuple[int, int]]] = {}
        self._touched: dict[str, set[tuple[int, int]]] = {}
        self._dirty: set[str] = set()
        #: (instant, app) of plans not yet in force and terms not yet over: entitlement may change then
        #: without any input
        self._due: list[tuple[int, str]] = []
        self._scheduled: set[tuple[int, str]] = set()

    # -- restore ---------------------------------------------------------------------------

    def restore(self, items: Iterable[tuple[bytes, bytes | None]], now_ms: int) -> None:
        """Load the changelog records of this partition, oldest first (later ones win)."""
        heads: dict[str, bytes] = {}
        buckets: dict[tuple[str, int, int], bytes] = {}
        for key, value in items:
            kind, _, rest = key.decode().partition(SEP)
            if kind == "h":
                if value is None:
                    heads.pop(rest, None)
                else:
                    heads[rest] = value
            elif kind == "d":
                day, hour, app_id = rest.split(SEP, 2)
                if value is None:
                    buckets.pop((app_id, int(day), int(hour)), None)
                else:
                    buckets[(app_id, int(day), int(hour))] = value
        self.apps.clear()
        self._written.clear()
        self._touched.clear()
        self._dirty.clear()
        self._due.clear()
        self._scheduled.clear()
        for app_id, value in heads.items():
            self.apps[app_id] = _app_decoder.decode(value)
            self._written[app_id] = set()
        for (app_id, day_number, hour_number), value in buckets.items():
            record = self.apps.get(app_id)
            if record is not None:
                record.balance.days.setdefault(day_number, {}).update(_bucket_decoder.decode(value))
                self._written[app_id].add((day_number, hour_number))
        for app_id, record in self.apps.items():
            self._schedule(app_id, record, now_ms)

    # -- inputs ----------------------------------------------------------------------------

    def apply(self, message: Input, now_ms: int, out: Outputs) -> None:
        """Apply one message; bad ones become dead letters in ``out``, with the reason."""
        if message.topic == self.sessions_topic:
            self._apply_session(message, now_ms, out)
        else:
            self._apply_plan_event(message, now_ms, out)

    def _app(self, app_id: str, account_id: str) -> AppRecord:
        record = self.apps.get(app_id)
        if record is None:
            record = self.apps[app_id] = AppRecord(balance=AppBalance(app_id=app_id), seats=SeatTimeline(app_id=app_id))
            self._written[app_id] = set()
        if not record.balance.account_id:
            record.balance.account_id = account_id
        return record

    def _misrouted(self, message: Input, app_id: str, now_ms: int, out: Outputs) -> bool:
        """Dead-letter a message keyed for another partition (its app's state lives there); whether it was."""
        rejection = misrouted(app_id, self.partition, self.partitions, "events.md names (app_id)")
        if rejection is None:
            return False
        self._dead(message, rejection, now_ms, out)
        return True

    def _dead(self, message: Input, rejection: Rejection, now_ms: int, out: Outputs) -> None:
        reject(message, rejection, now_ms, out.dead, out.invalid)

    def _apply_session(self, message: Input, now_ms: int, out: Outputs) -> None:
        decoded = decode_session(message.value)
        if isinstance(decoded, Rejection):
            self._dead(message, decoded, now_ms, out)
            return
        if self._misrouted(message, decoded.app_id, now_ms, out):
            return
        session = billing_session_of(decoded)
        record = self._app(session.app_id, session.account_id)
        before = _costs(record.balance)
        step = charge(record.balance, session, self.config)
        if step.outcome is Outcome.DUPLICATE:
            out.count(out.duplicates, "session")
            return
        if step.outcome is Outcome.LATE:
            out.late.append(
                LateRecord(
                    reason=LATE_REASON,
                    event=msgspec.Raw(message.value or b""),
                    app_id=session.app_id,
                    event_id=session.billing_session_id,
                    occurred_at=decoded.started_at,
                    partition_clock=ms_to_datetime(record.balance.clock_ms),
                    source_topic=message.topic,
                    source_partition=message.partition,
                    source_offset=message.offset,
                )
            )
            return
        out.count(out.charged, session.kind)
        if session.billing_session_id not in record.balance.held:
            self._touch(session.app_id, close_instant(session) // DAY, session.started_ms)
        self._changed(record, before, step.alerts, out)

    def _apply_plan_event(self, message: Input, now_ms: int, out: Outputs) -> None:
        decoded = (
            decode_event(message.value or b"", now_ms)
            if message.value is not None
            else Rejection("not_json", "empty message (no value)")
        )
        if isinstance(decoded, Rejection):
            self._dead(message, decoded, now_ms, out)
            return
        _, event = decoded
        if not isinstance(event, PlanEvent):
            kind = event.__struct_config__.tag
            rejection = Rejection(
                "wrong_topic",
                f"a {kind} event does not belong on topic {message.topic!r}: produce it to the topic of its type "
                "(see docs/events.md)",
            )
            self._dead(message, rejection, now_ms, out)
            return
        if self._misrouted(message, event.app_id, now_ms, out):
            return
        record = self._app(event.app_id, event.account_id)
        if isinstance(event, AgentsSubscribed):
            if record.seats.apply(event) is Outcome.DUPLICATE:
                out.count(out.duplicates, "seats")
            else:
                self._changed(record, None, [], out)
            return
        state = record.balance
        before = _costs(state)
        backdated = state.counters.plans_backdated
        held = dict(state.held)
        step = apply_event(state, event)
        if isinstance(event, PlanChanged):
            for sid, (start, _, day) in held.items():
                if sid not in state.held and day in state.days:
                    self._touch(event.app_id, day, start)  # priced at last: now in its day's bucket
            for sid in state.held.keys() - held.keys():
                start, _, day = state.held[sid]
                self._touch(event.app_id, day, start)  # its plan was replaced: out of its day's bucket
            out.backdated += state.counters.plans_backdated - backdated
        if step.outcome is Outcome.DUPLICATE:
            out.count(out.duplicates, _DUPLICATE_NAME.get(type(event), "other"))
            return
        self._schedule(event.app_id, record, now_ms)
        self._changed(record, before, step.alerts, out)

    def _schedule(self, app_id: str, record: AppRecord, now_ms: int) -> None:
        """Remember the app's coming instants: a scheduled plan taking effect, a term ending.

        Entitlement (and with a new plan the threshold) changes then without any input.
        """
        state = record.balance
        instants = {p.effective_ms for p in state.plans.pending(now_ms)}
        for plan in [state.plans.at(now_ms), *state.plans.pending(now_ms)]:
            end = None if plan is None else plan.term_end(state.extension_days(plan))
            if end is not None and end > now_ms:
                instants.add(end)
        for instant in sorted(instants):
            if (instant, app_id) not in self._scheduled:
                self._scheduled.add((instant, app_id))
                heapq.heappush(self._due, (instant, app_id))

    def _touch(self, app_id: str, day: int, start_ms: int) -> None:
        self._touched.setdefault(app_id, set()).add((day, start_ms // HOUR))

    def _changed(
        self,
        record: AppRecord,
        before: dict[tuple[str, str], Decimal] | None,
        alerts: list[BalanceAlert],
        out: Outputs,
    ) -> None:
        """Mark the app changed; ``before`` is its cost before the input (None: the input cannot change it)."""
        record.version += 1
        self._dirty.add(record.balance.app_id)
        out.alerts.extend(alerts)
        if before is None:
            return
        for key, amount in _costs(record.balance).items():
            delta = sub(amount, before.get(key, ZERO))
            if delta > 0:
                out.cost[key] = out.cost.get(key, ZERO) + delta
            elif delta < 0:
                out.reversed[key] = out.reversed.get(key, ZERO) + sub(ZERO, delta)

    # -- outputs ---------------------------------------------------------------------------

    def due(self, now_ms: int, out: Outputs) -> None:
        """Apps whose scheduled plan is now in force, or whose term ended, get a new snapshot; a plan
        that becomes current may cross a line (its threshold or currency counts from its instant)."""
        while self._due and self._due[0][0] <= now_ms:
            instant, app_id = heapq.heappop(self._due)
            self._scheduled.discard((instant, app_id))
            record = self.apps.get(app_id)
            if record is not None:
                out.alerts.extend(advance(record.balance, instant))
                record.version += 1
                self._dirty.add(app_id)

    def has_due(self, now_ms: int) -> bool:
        return bool(self._due) and self._due[0][0] <= now_ms

    def take_changes(
        self, now_ms: int, unlimited_plans: frozenset[str]
    ) -> tuple[list[BalanceSnapshot], list[tuple[bytes, bytes | None]]]:
        """The snapshots and changelog records of the apps changed since the last call."""
        snapshots: list[BalanceSnapshot] = []
        records: list[tuple[bytes, bytes | None]] = []
        for app_id in sorted(self._dirty):
            record = self.apps[app_id]
            snapshots.append(snapshot(record, now_ms, unlimited_plans))
            state = record.balance
            head = msgspec.structs.replace(record, balance=msgspec.structs.replace(state, days={}))
            records.append((head_key(app_id), _record_encoder.encode(head)))
            written = self._written.setdefault(app_id, set())
            touched = self._touched.pop(app_id, set())
            for day in sorted({d for d, _ in touched}):
                bucket = state.days.get(day)
                if bucket is None:
                    continue  # settled in the same batch: tombstoned below if it was written
                hours = {h for d, h in touched if d == day}
                shards: dict[int, dict[str, Charged]] = {h: {} for h in hours}
                for sid, charged in bucket.items():
                    shard = shards.get(charged[0] // HOUR)
                    if shard is not None:
                        shard[sid] = charged
                for hour, shard in sorted(shards.items()):
                    records.append((bucket_key(app_id, day, hour), _record_encoder.encode(shard)))
                    written.add((day, hour))
            for day, hour in sorted(k for k in written if k[0] not in state.days):
                records.append((bucket_key(app_id, day, hour), None))
                written.discard((day, hour))
        self._dirty.clear()
        return snapshots, records


def encode(record: BalanceAlert | BalanceSnapshot | DeadLetter | LateRecord) -> bytes:
    return _json.encode(record)
