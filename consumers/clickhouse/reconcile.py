"""The ClickHouse side of `metering reconcile`: what is billed for a period, and the corrections.

``cli.reconcile`` decides; this module only reads and writes, so that the same few
operations serve a direct connection and the running service's API (which receives them as
JSON, hence the msgspec structs: one definition validates both).

- :func:`snapshot`: the sessions ClickHouse bills for some local days, each with whether it is
  voided, plus the per-day usage `metering usage` prints for those days.
- :func:`apply_batch`: one batch of a repair: the run's audit row, then missing sessions
  inserted through :class:`SessionStore` (tagged with the run), then voids, then the usage counts
  they touched; the run's last row (done or failed) recounts its whole period, so a run that died
  between a write and its recount is made good by the next run over the same days.

Why voids and not deletes (see ``sql/migrations/004_reconciliation.sql``): ``usage_15m`` holds
sets of ids, which cannot lose a member, and a billing system keeps what it once billed.
A void names the session id *and the 15-minute bucket it was counted in*; ``voids_15m`` sums
them per bucket and every usage query subtracts them there. Inserting a void twice, or the
voided session again, changes nothing, because both sides are sets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Annotated, Any, Final, Literal

from clickhouse_connect.driver.client import Client
from msgspec import Meta, Struct, field

from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.counts import BUCKET_MS, bucket_of, key_of, recount, recount_period
from consumers.clickhouse.store import SessionStore, insert_deduplicated
from consumers.clickhouse.usage import named_query, usage
from pipeline.contract.events import BillingSessionRecord
from pipeline.rules.attribution import UsageRow

__all__ = [
    "BUCKET_MS",
    "MAX_BATCH",
    "PeriodRequest",
    "ReconcileRun",
    "RepairBatch",
    "RepairOutcome",
    "SessionVoid",
    "Snapshot",
    "StoredSession",
    "apply_batch",
    "bucket_of",
    "runs",
    "snapshot",
]

#: Records per repair batch (and per API request): bounded memory on both sides.
MAX_BATCH: Final = 20_000

VOIDS_TABLE: Final = "session_voids"
_DAY: Final = timedelta(days=1)
RUNS_TABLE: Final = "reconcile_runs"

Kind = Literal["usage", "voice", "alert"]
Count = Annotated[int, Meta(ge=0)]
Text = Annotated[str, Meta(max_length=4096)]
Id = Annotated[str, Meta(min_length=1, max_length=256)]


class StoredSession(Struct, frozen=True, array_like=True):
    """A session id as ClickHouse counts it in one bucket (array-like: compact on the wire)."""

    billing_session_id: str
    account_id: str
    app_id: str
    kind: str
    started_ms: int
    conversation_session_id: str | None
    session_index: int
    conversation_started_ms: int | None
    voided: bool

    @property
    def bucket_ms(self) -> int:
        return bucket_of(self.started_ms)


class Snapshot(Struct, frozen=True):
    """What ClickHouse bills for a period: sessions (voided ones flagged) and usage per day."""

    sessions: list[StoredSession]
    usage: list[UsageRow]


class SessionVoid(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A void of one session id in one bucket; the placing columns are copied from its row."""

    billing_session_id: Id
    account_id: Id
    app_id: Id
    kind: Kind
    started_ms: int
    conversation_session_id: Id | None
    session_index: Count
    reason: Text


class ReconcileRun(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One row of the audit trail (``reconcile_runs``); the latest row of a run id is its state."""

    run_id: Id
    period_from: date
    period_to: date
    timezone: Id
    source: Text
    status: Literal["running", "done", "failed"]
    started_ms: int
    finished_ms: int | None = None
    missing: Count = 0
    extra: Count = 0
    unrepairable: Count = 0
    inserted: Count = 0
    voided: Count = 0
    os_user: Text = ""
    host: Text = ""
    detail: Text = ""


class RepairBatch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step of a repair: the run's row, and up to :data:`MAX_BATCH` inserts and voids.

    ``token`` makes the step idempotent: retried with the same records it is dropped by
    ClickHouse's insert deduplication (the caller derives it from the run scope and the records).
    """

    run: ReconcileRun
    token: Annotated[str, Meta(max_length=256)] = ""
    inserts: Annotated[list[BillingSessionRecord], Meta(max_length=MAX_BATCH)] = []
    voids: Annotated[list[SessionVoid], Meta(max_length=MAX_BATCH)] = []


class RepairOutcome(Struct, frozen=True):
    inserted: int
    voided: int


class PeriodRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /reconcile/sessions``: the local days (inclusive) and their zone."""

    start: date = field(name="from")
    end: date = field(name="to")
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"


def snapshot(client: Client, database: str, *, start: date, end: date, tz: str) -> Snapshot:
    """The sessions and per-day usage ClickHouse holds for local days ``start``..``end`` in ``tz``."""
    params: dict[str, Any] = {"tz": tz, "from": start, "to": end}
    rows = named_query(client, database, "reconcile_sessions", **params)
    voided = {
        (str(sid), str(acc), str(app), str(kind), int(bucket))
        for sid, acc, app, kind, bucket in named_query(client, database, "reconcile_voids", **params)
    }
    sessions = [
        StoredSession(
            str(sid),
            str(acc),
            str(app),
            str(kind),
            int(started),
            None if conv is None else str(conv),
            int(index),
            None if conv_started is None else int(conv_started),
            (str(sid), str(acc), str(app), str(kind), bucket_of(int(started))) in voided,
        )
        for sid, acc, app, kind, started, conv, index, conv_started in rows
    ]
    day_rows = usage(client, database, start=start, end=end, apps=[], account=None, period="day", tz=tz)
    return Snapshot(sessions=sessions, usage=day_rows)


def apply_batch(client: Client, database: str, batch: RepairBatch) -> RepairOutcome:
    """Write the run's row, then the batch's inserts and voids and recount them; raises ClickHouseWriteError.

    The run row goes first so that every session or void carrying a run id has a run row,
    even if the process dies half-way (that run then stays ``running`` in the trail). A run's
    final row (``done`` or ``failed``) is followed by a recount of every usage count of the run's
    days and a day either side (the snapshot's widening: local days in any zone).
    """
    check_database_name(database)
    if (batch.inserts or batch.voids) and not batch.token:
        raise ValueError("a repair batch with records needs a token: an empty one turns deduplication off")
    _record_run(client, database, batch.run)
    run_id = batch.run.run_id
    if batch.inserts:
        SessionStore(client, database).insert(batch.inserts, f"{batch.token}:insert", reconcile_run_id=run_id)
    if batch.voids:
        _insert_voids(client, database, batch.voids, f"{batch.token}:void", run_id)
        recount(client, database, {key_of(v.account_id, v.app_id, v.started_ms) for v in batch.voids})
    if batch.run.status != "running":
        recount_period(client, database, batch.run.period_from - _DAY, batch.run.period_to + _DAY)
    return RepairOutcome(inserted=len(batch.inserts), voided=len(batch.voids))


def runs(client: Client, database: str, limit: int = 100) -> list[ReconcileRun]:
    """The latest state of the last ``limit`` runs, newest first."""
    out = []
    for row in named_query(client, database, "reconcile_runs", limit=limit):
        (run_id, first, last, tz, source, status, started, finished, *counts, user, host, detail) = row
        missing, extra, unrepairable, inserted, voided = (int(c) for c in counts)
        out.append(
            ReconcileRun(
                run_id=str(run_id), period_from=first, period_to=last, timezone=str(tz), source=str(source),
                status=status, started_ms=int(started), finished_ms=None if finished is None else int(finished),
                missing=missing, extra=extra, unrepairable=unrepairable, inserted=inserted, voided=voided,
                os_user=str(user), host=str(host), detail=str(detail),
            )
        )  # fmt: skip
    return out


# -- writes ----------------------------------------------------------------------------------------

_clock_lock = threading.Lock()
_last_written = 0


def _version_ms() -> int:
    """Wall-clock milliseconds, strictly increasing in this process: the run row's version.

    Two rows of one run written in the same millisecond must still order, or FINAL could keep
    the ``running`` one.
    """
    global _last_written  # noqa: PLW0603 - one process-wide sequence
    with _clock_lock:
        _last_written = max(time.time_ns() // 1_000_000, _last_written + 1)
        return _last_written


def _record_run(client: Client, database: str, run: ReconcileRun) -> None:
    row = [
        run.run_id, run.period_from, run.period_to, run.timezone, run.source, run.status, run.started_ms,
        run.finished_ms, run.missing, run.extra, run.unrepairable, run.inserted, run.voided, run.os_user, run.host,
        run.detail, _version_ms(),
    ]  # fmt: skip
    names = [
        "run_id", "period_from", "period_to", "timezone", "source", "status", "started_at", "finished_at", "missing",
        "extra", "unrepairable", "inserted", "voided", "os_user", "host", "detail", "updated_at",
    ]  # fmt: skip
    _insert(client, database, RUNS_TABLE, [row], names=names, token=None, what=f"the audit row of run {run.run_id}")


def _insert_voids(client: Client, database: str, voids: Sequence[SessionVoid], token: str, run_id: str) -> None:
    names = [
        "billing_session_id", "account_id", "app_id", "kind", "started_at", "conversation_session_id",
        "session_index", "reconcile_run_id", "reason",
    ]  # fmt: skip
    rows = [
        [v.billing_session_id, v.account_id, v.app_id, v.kind, v.started_ms, v.conversation_session_id,
         v.session_index, run_id, v.reason]
        for v in voids
    ]  # fmt: skip
    _insert(client, database, VOIDS_TABLE, rows, names=names, token=token, what=f"{len(voids)} session voids")


def _insert(
    client: Client,
    database: str,
    table: str,
    rows: list[list[Any]],
    *,
    names: list[str],
    token: str | None,
    what: str,
) -> None:
    insert_deduplicated(
        client,
        database,
        table,
        rows,
        names=names,
        token=token,
        column_oriented=False,
        where=f"writing {what} into {database}.{table}",
        retry="run the same reconcile again (what was written is recognised and not written twice).",
        check="Check that migration 004 ran (`metering migrate`, or restart the service).",
    )
