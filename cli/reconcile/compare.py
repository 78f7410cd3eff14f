"""The comparison: the truth's sessions against ClickHouse's, id by id, and usage per (account, app, day).

Within an id, by where it is counted (account, app, kind, 15-minute bucket), so a session a
late transfer moved is *moved*, not counted twice; see docs/reconcile.md for the statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cli.reconcile.period import Period
from cli.reconcile.truth import Truth
from consumers.clickhouse.reconcile import SessionVoid, StoredSession, bucket_of
from pipeline.contract.events import MAX_FUTURE_MS, format_ms
from pipeline.rules.attribution import DayOf, UsageRow
from pipeline.rules.model import BillingSession

Status = Literal["missing", "extra", "moved", "voided"]
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
