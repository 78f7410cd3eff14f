"""`metering compute`: the billing rules over a JSON-lines file, with the stream's own engine.

The file is read once in file order through a ``Meter`` with the stream's lateness rules; a
file in time order (within the allowed lateness) is therefore metered in one pass with memory
bound by its open conversations and the event ids of the last ``RESEND_WINDOW_MS`` of event
time. Those ids make a copy that a producer re-sent after its conversation session became final
(an export of an at-least-once pipeline) the duplicate it is, not a late event. If an event
turns out to be late (the file is not in time order beyond the lateness, or a copy comes later
than the window) the result of that pass would not be the true one, so the file is metered
again in time order (an external sort, in runs), which is exact for any order.

`metering reconcile` needs more than the per-day rows: the billing sessions themselves, to
compare with ClickHouse id by id. ``keep`` asks for them, restricted to the local days of the
period (memory bounded by the period, not the file), and split by finality: a session is final
when the stream could have emitted it by ``now_ms`` (R9: an idle partition's clock follows the
wall clock), and *unfinished* when only the end of input closed it (a conversation still going
on). The rows are the same with or without ``keep``; without it nothing extra is done.
"""

from __future__ import annotations

import gc
import heapq
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import IO, Final
from zoneinfo import ZoneInfo

from pipeline.balance.plans import TimeoutSchedule
from pipeline.contract.decode import decode_input
from pipeline.contract.events import (
    AgentsSubscribed,
    AgentTransfer,
    AlertDelivered,
    ConversationTurn,
    InputEvent,
    PlanChanged,
    Rejection,
)
from pipeline.infra.progress import OnProgress
from pipeline.infra.report import Cell
from pipeline.rules.agent_book import AGENT_COLUMNS, AgentBook
from pipeline.rules.attribution import (
    USAGE_COLUMNS,
    DayOf,
    Period,
    UsageBook,
    UsageRow,
    period_labels,
    period_order,
    zone,
)
from pipeline.rules.config import MINUTE, RulesConfig
from pipeline.rules.meter import LATE, Meter, MeterStats, Outcome
from pipeline.rules.model import BillingSession

RUN_SIZE: Final = 400_000
#: How long after an event a re-sent copy of it is still recognised in the single pass (event time).
RESEND_WINDOW_MS: Final = 60 * MINUTE
_FEW_COLLECTIONS: Final = (20_000, 20, 50)

# Hot-path names as Finals of this module: compiled, a C global rather than a dict lookup (pipeline.infra.native).
_TURN: Final = ConversationTurn
_TRANSFER: Final = AgentTransfer
_ALERT: Final = AlertDelivered
_REJECTION: Final = Rejection

OnInvalid = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class Days:
    """Local days ``first`` to ``last`` (inclusive) in the zone of the run: what ``keep`` and ``within`` select."""

    first: date
    last: date

    @staticmethod
    def between(first: date | None, last: date | None) -> Days:
        """The days from ``first`` to ``last``, either of them open."""
        return Days(first or date.min, last or date.max)


@dataclass(frozen=True, slots=True)
class Periods:
    """What the rows count: per ``by`` period, and ``within`` those local days only (a period they cut
    holds only the days inside, as `metering usage --from --to`)."""

    by: Period = "day"
    within: Days | None = None

    def books(self, tz: ZoneInfo) -> tuple[UsageBook, AgentBook]:
        first = self.within.first.isoformat() if self.within else ""
        last = self.within.last.isoformat() if self.within else ""
        return UsageBook(tz, self.by, first, last), AgentBook(tz.key, self.by, first, last)


@dataclass
class ComputeResult:
    rows: list[UsageRow]
    stats: MeterStats
    lines: int = 0
    invalid: int = 0
    plan_events: int = 0
    #: R11 seats and active agents of the file (``AgentBook.rows`` appends them to ``rows``).
    agents: AgentBook | None = None
    resorted: bool = False
    late_after_sort: int = 0
    #: With ``keep``: the final billing sessions that start on the kept days, in emission order.
    sessions: list[BillingSession] = field(default_factory=list)
    #: With ``keep``: sessions of conversation sessions not final by ``now_ms`` (any day).
    unfinished: list[BillingSession] = field(default_factory=list)
    #: With ``within``: every (account, app) that has a billing session in the file, on any day.
    apps: set[tuple[str, str]] = field(default_factory=set)
    #: The plans' idle timeouts, as the stream's plan feed applies them (replaced plans included).
    timeouts: TimeoutSchedule = field(default_factory=TimeoutSchedule)

    def report(self, *, zero_fill: bool = False) -> tuple[tuple[str, ...], Sequence[Sequence[Cell]]]:
        """The columns and rows `metering compute` prints: docs/interfaces.md's eight, then R11's agents.

        By day the third column is ``day`` (docs/interfaces.md), by any other period ``period``.
        ``zero_fill`` (for a run ``within`` days) adds a row of zeros for every period of those days
        without usage, for every app of ``apps``: the series the console shows, app by app.
        """
        if self.agents is None:
            return USAGE_COLUMNS, self.rows
        book = self.agents
        rows = self.rows
        if zero_fill and book.first:
            first, last = date.fromisoformat(book.first), date.fromisoformat(book.last)
            rows = _zero_filled(rows, self.apps, period_labels(zone(book.zone_name), book.period, first, last))
        columns: tuple[str, ...] = (*USAGE_COLUMNS, *AGENT_COLUMNS)
        if book.period != "day":
            columns = tuple("period" if c == "day" else c for c in columns)
        return columns, book.rows(rows)


def kept_sessions(result: ComputeResult, tz: ZoneInfo, keep: Days) -> list[BillingSession]:
    """Every billing session of a run with ``keep`` that starts on the kept days, final or unfinished."""
    day_of = DayOf(tz)
    first, last = keep.first.isoformat(), keep.last.isoformat()
    return [*result.sessions, *(s for s in result.unfinished if first <= day_of(s.started_ms) <= last)]


def _zero_filled(rows: list[UsageRow], apps: set[tuple[str, str]], labels: list[str]) -> list[UsageRow]:
    """``rows`` and a row of zeros for every app and period of ``labels`` that has none, in row order."""
    have = {(r[0], r[1], r[2]) for r in rows}
    zeros: list[UsageRow] = [
        (acc, app, label, 0, 0, 0, 0, 0) for acc, app in apps for label in labels if (acc, app, label) not in have
    ]
    return sorted([*rows, *zeros], key=lambda r: (r[0], r[1], period_order(r[2])))


class _Collector:
    """Adds drained sessions to the book and, with ``keep``, keeps those of the kept days."""

    __slots__ = ("book", "first", "last", "result")

    def __init__(self, book: UsageBook, keep: Days | None, result: ComputeResult) -> None:
        self.book = book
        self.result = result
        self.first = keep.first.isoformat() if keep else ""
        self.last = keep.last.isoformat() if keep else ""

    def __call__(self, sessions: list[BillingSession]) -> None:
        self.book.add_all(sessions)
        if self.first:
            day_of = self.book.day_of
            first, last = self.first, self.last
            self.result.sessions.extend(s for s in sessions if first <= day_of(s.started_ms) <= last)

    def finish(self, meter: Meter, now_ms: int) -> None:
        """End of input: with ``keep``, what is final by ``now_ms`` first, then the unfinished rest."""
        if self.first:
            meter.idle_tick(now_ms)
            self(meter.drain()[0])
            meter.finish()
            unfinished = meter.drain()[0]
            self.book.add_all(unfinished)
            self.result.unfinished = unfinished
        else:
            meter.finish()
            self.book.add_all(meter.drain()[0])
        self.result.rows = self.book.rows()
        self.result.apps = self.book.apps
        self.result.stats = meter.stats


class _Late(Exception):
    """The file is not in time order: the single pass stops here."""


def compute(
    path: Path,
    tz: ZoneInfo,
    config: RulesConfig,
    *,
    now_ms: int,
    on_invalid: OnInvalid,
    on_progress: OnProgress | None = None,
    keep: Days | None = None,
    unordered: bool = False,
    periods: Periods = Periods(),
    resend_window_ms: int = RESEND_WINDOW_MS,
) -> ComputeResult:
    """Per-app usage of the events in ``path`` per ``periods``; invalid lines go to ``on_invalid``.

    ``keep`` also returns the billing sessions of those local days (see the module docstring).
    ``unordered`` says the file is known not to be in time order (a dump of several Kafka
    partitions): the single pass would only find that out, so it goes to the sort at once.
    """
    # The engine's state holds no reference cycles: the cyclic collector can run rarely (~3 % faster).
    thresholds = gc.get_threshold()
    gc.set_threshold(*_FEW_COLLECTIONS)
    try:
        if unordered:
            return _compute_sorted(
                path, tz, config, now_ms=now_ms, on_invalid=on_invalid, reported=0, keep=keep, periods=periods
            )
        return _compute_in_one_pass(path, tz, config, now_ms, on_invalid, on_progress, keep, periods, resend_window_ms)
    finally:
        gc.set_threshold(*thresholds)


def _compute_in_one_pass(  # noqa: PLR0917 - compute's arguments, passed on
    path: Path,
    tz: ZoneInfo,
    config: RulesConfig,
    now_ms: int,
    on_invalid: OnInvalid,
    on_progress: OnProgress | None,
    keep: Days | None,
    periods: Periods,
    resend_window_ms: int,
) -> ComputeResult:
    book, agents = periods.books(tz)
    result = ComputeResult(rows=[], stats=MeterStats(), agents=agents)
    meter = Meter(replace(config, dedupe_horizon_ms=min(config.dedupe_horizon_ms, resend_window_ms)))
    collect = _Collector(book, keep, result)
    reported = 0
    try:
        with path.open("rb") as f:
            lineno = 0
            for lines in _line_batches(f, on_progress):
                for line in lines:
                    lineno += 1
                    decoded = decode_input(line, now_ms)
                    if type(decoded) is _REJECTION:
                        _invalid(result, on_invalid, lineno, line, decoded)
                        continue
                    t, event = decoded  # type: ignore[misc]
                    reported = lineno
                    if type(event) is _TURN or type(event) is _ALERT:
                        outcome = meter.apply(t, event)
                    elif type(event) is _TRANSFER:
                        agents.transfer(event)
                        outcome = meter.apply(t, event)
                    else:
                        outcome = _apply(meter, t, event, result)
                    if outcome is LATE:
                        raise _Late
                    if meter.sessions:
                        collect(meter.drain()[0])
            result.lines = lineno
    except _Late:
        return _compute_sorted(
            path, tz, config, now_ms=now_ms, on_invalid=on_invalid, reported=reported, keep=keep, periods=periods
        )
    collect.finish(meter, now_ms)
    return result


def _compute_sorted(
    path: Path,
    tz: ZoneInfo,
    config: RulesConfig,
    *,
    now_ms: int,
    on_invalid: OnInvalid,
    reported: int,
    keep: Days | None = None,
    periods: Periods = Periods(),
) -> ComputeResult:
    """Exact for any order: meter the valid events sorted by time (external sort in runs)."""

    def report_new(lineno: int, reason: str) -> None:
        if lineno > reported:
            on_invalid(lineno, reason)

    book, agents = periods.books(tz)
    result = ComputeResult(rows=[], stats=MeterStats(), resorted=True, agents=agents)
    meter = Meter(config)
    collect = _Collector(book, keep, result)
    with tempfile.TemporaryDirectory(prefix="metering-sort-") as tmp, path.open("rb") as f:
        valid = ((t, lineno, line) for lineno, t, line in _valid_lines(f, now_ms, report_new, result))
        for t, event in _sorted_events(valid, Path(tmp), now_ms):
            if _apply(meter, t, event, result) is Outcome.LATE:
                result.late_after_sort += 1
            if meter.sessions:
                collect(meter.drain()[0])
    collect.finish(meter, now_ms)
    return result


def _apply(meter: Meter, t: int, event: InputEvent, result: ComputeResult) -> Outcome:
    kind = type(event)
    if kind is _TURN or kind is _ALERT:
        return meter.apply(t, event)  # type: ignore[arg-type]
    if kind is _TRANSFER:
        if result.agents is not None:
            result.agents.transfer(event)  # type: ignore[arg-type]
        return meter.apply(t, event)  # type: ignore[arg-type]
    # billing-plans and billing-accounts events: only plans (idle timeouts) and seats matter here
    result.plan_events += 1
    if isinstance(event, PlanChanged):
        for app_id, at_ms, timeout_ms, event_id in result.timeouts.add(event):
            meter.plan_changed(app_id, at_ms, timeout_ms, event_id)
    elif isinstance(event, AgentsSubscribed) and result.agents is not None:
        result.agents.subscribed(t, event)
    return Outcome.APPLIED


def _invalid(result: ComputeResult, on_invalid: OnInvalid, lineno: int, line: bytes, rejection: Rejection) -> None:
    """Report an invalid line; blank lines are not events and not errors."""
    if line.strip():
        result.invalid += 1
        on_invalid(lineno, rejection.reason)


def _valid_lines(
    f: IO[bytes], now_ms: int, on_invalid: OnInvalid, result: ComputeResult
) -> Iterator[tuple[int, int, bytes]]:
    lineno = 0
    for lineno, line in enumerate((line for lines in _line_batches(f, None) for line in lines), 1):
        decoded = decode_input(line, now_ms)
        if type(decoded) is Rejection:
            _invalid(result, on_invalid, lineno, line, decoded)
            continue
        yield lineno, decoded[0], line.rstrip(b"\r")  # type: ignore[index]
    result.lines = lineno


def _line_batches(f: IO[bytes], on_progress: OnProgress | None, chunk_bytes: int = 1 << 20) -> Iterator[list[bytes]]:
    """The file's lines without their newline, a large chunk at a time (much cheaper than ``for line in f``).

    Lists rather than lines: compiled, the loop over a list is C, the step of a generator a call.
    """
    done = 0
    carry = b""
    while True:
        chunk = f.read(chunk_bytes)
        if not chunk:
            break
        done += len(chunk)
        lines = chunk.split(b"\n")
        lines[0] = carry + lines[0]
        carry = lines.pop()
        yield lines
        if on_progress is not None:
            on_progress(done)
    if carry:
        yield [carry]


def _sorted_events(lines: Iterable[tuple[int, int, bytes]], tmp: Path, now_ms: int) -> Iterator[tuple[int, InputEvent]]:
    """Events in (time, line) order; runs beyond ``RUN_SIZE`` are spilled to ``tmp`` and merged."""
    runs: list[Path] = []
    run: list[tuple[int, int, bytes]] = []
    for item in lines:
        run.append(item)
        if len(run) >= RUN_SIZE:
            runs.append(_spill(sorted(run), tmp, len(runs)))
            run = []
    run.sort()
    merged: Iterable[tuple[int, int, bytes]] = heapq.merge(*(_read_run(p) for p in runs), run) if runs else run
    for _, _, line in merged:
        decoded = decode_input(line, now_ms)
        assert type(decoded) is not Rejection, "a line valid before sorting is valid after"
        yield decoded  # type: ignore[misc]


def _spill(run: list[tuple[int, int, bytes]], tmp: Path, index: int) -> Path:
    path = tmp / f"run-{index:05d}"
    with path.open("wb") as out:
        for t, lineno, line in run:
            out.write(b"%d\t%d\t%s\n" % (t, lineno, line))
    return path


def _read_run(path: Path) -> Iterator[tuple[int, int, bytes]]:
    with path.open("rb") as f:
        for row in f:
            t, lineno, line = row.rstrip(b"\n").split(b"\t", 2)
            yield int(t), int(lineno), line
        os.unlink(path)
