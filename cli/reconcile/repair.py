"""``--repair``: insert what is missing, void what is extra, with a ``reconcile_runs`` audit row before and after.

Every insert carries a deterministic token (the run's input and exactly these records), so a
retried or repeated run writes nothing twice; voids are permanent and subtracted once per bucket.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from cli.reconcile.compare import Comparison, DayDifference, compare_days
from cli.reconcile.period import Period
from cli.reconcile.store import ReconcileStore
from cli.reconcile.truth import Truth
from consumers.clickhouse.reconcile import MAX_BATCH, ReconcileRun, RepairBatch
from pipeline.rules.attribution import UsageRow
from pipeline.stream.records import billing_session_record

T = TypeVar("T")


@dataclass
class Repaired:
    run_id: str
    inserted: int
    voided: int
    days_after: list[DayDifference]


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


def repair_differences(  # noqa: PLR0917 - what a run found, as the run holds it
    store: ReconcileStore,
    period: Period,
    truth: Truth,
    comparison: Comparison,
    days: list[DayDifference],
    who: Who,
    now_ms: Callable[[], int],
) -> Repaired:
    """Write the run row, the inserts, the voids, the final run row; then read usage again."""
    run = ReconcileRun(
        run_id=str(uuid.uuid4()), period_from=period.first, period_to=period.last, timezone=period.tz,
        source=truth.source[:4096], status="running", started_ms=now_ms(),
        missing=len(comparison.inserts), extra=len(comparison.voids), unrepairable=comparison.unrepairable,
        os_user=who.os_user, host=who.host,
    )  # fmt: skip
    scope = f"{period}|{truth.scope}"
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
    days_after = days if after is None else compare_days(truth.rows, in_period(period, after))
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


def in_period(period: Period, rows: Sequence[UsageRow]) -> list[UsageRow]:
    """The usage rows of the period's own days (the margin days are another period's)."""
    return [row for row in rows if period.holds(row[2])]
