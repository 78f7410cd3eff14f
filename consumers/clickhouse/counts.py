"""Keep ``usage_counts`` (migration 012) exact: whoever writes sessions or voids recounts what it touched.

A count is a function of the sets in ``usage_15m`` and ``voids_15m``, which replays, late sessions,
voids and moves keep exact; recounting a key only ever writes the value those sets hold. So a
recount is idempotent and can be repeated after any failure, and the one rule is order:

1. write (``SessionStore.insert``: the sessions; reconcile: the voids);
2. read the server's clock: the recount's version;
3. recount the keys written in 1 from the sets (one ``INSERT ... SELECT``).

A recount's snapshot is taken after its version, and every write a recount is owed happened before
that recount's version; so the row with the greatest version of a key saw every write made to the
key, and ``ReplacingMergeTree(version)`` (or ``FINAL`` before merges) keeps it, whatever writers run
at once (a sink per partition, a repair). A crash between 1 and 3 leaves the count behind the sets
until the same keys are recounted: the sink commits offsets only after 3, so its redelivered batch
does it; a repair run recounts its whole period when it ends (:func:`recount_period`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

import sql
from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.errors import ClickHouseWriteError
from pipeline import failpoints

__all__ = ["BUCKET_MS", "Key", "bucket_of", "key_of", "recount", "recount_period"]

#: usage_15m's bucket, in milliseconds (``toStartOfFifteenMinutes``).
BUCKET_MS: Final = 15 * 60 * 1000
#: Keys per recount statement: bounds the bound parameter's size (a repair batch touches up to 20,000).
_KEYS_PER_STATEMENT: Final = 2000

Key = tuple[str, str, int]
"""``(account_id, app_id, bucket start in epoch ms)``: one row of usage_counts."""


def bucket_of(started_ms: int) -> int:
    """Start of the 15-minute UTC bucket of an instant (``toStartOfFifteenMinutes``)."""
    return started_ms - started_ms % BUCKET_MS


def key_of(account_id: str, app_id: str, started_ms: int) -> Key:
    """The usage_counts key that counts a session starting at ``started_ms``."""
    return (account_id, app_id, bucket_of(started_ms))


def recount(client: Client, database: str, keys: Iterable[Key]) -> None:
    """Steps 2 and 3 for ``keys`` (their writes, step 1, are done); raises :class:`ClickHouseWriteError`."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    failpoints.hit("counts.recount")  # tests: a crash after the write, before its recount
    version = _clock(client, database)
    for i in range(0, len(wanted), _KEYS_PER_STATEMENT):
        chunk = wanted[i : i + _KEYS_PER_STATEMENT]
        bound = [(account, app, _utc(ms)) for account, app, ms in chunk]
        first = min(b[2] for b in bound)
        end = max(b[2] for b in bound) + timedelta(milliseconds=BUCKET_MS)
        _refresh(client, database, bound, first=first, end=end, version=version, what=f"{len(chunk)} usage counts")


def recount_period(client: Client, database: str, first: date, last: date) -> None:
    """Recount every key of the UTC days ``first``..``last`` (a repair run's period, widened by the caller).

    One statement per month (usage_counts' partition), each streaming in usage_15m's order.
    """
    version = _clock(client, database)
    start = datetime.combine(first, datetime.min.time(), UTC)
    stop = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
    while start < stop:
        month_end = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        end = min(month_end, stop)
        what = f"the usage counts of {start:%Y-%m-%d} to {end:%Y-%m-%d}"
        _refresh(client, database, [], first=start, end=end, version=version, what=what)
        start = end


def _clock(client: Client, database: str) -> int:
    check_database_name(database)
    try:
        return int(client.query(sql.query("server_clock_ns")).result_rows[0][0])
    except (OperationalError, DatabaseError) as exc:
        raise _write_error("reading the server clock for a usage count", database, exc) from exc


def _refresh(
    client: Client,
    database: str,
    keys: Sequence[tuple[str, str, datetime]],
    *,
    first: datetime,
    end: datetime,
    version: int,
    what: str,
) -> None:
    parameters = {"database": database, "keys": list(keys), "first": first, "end": end, "version": version}
    try:
        client.command(sql.query("usage_counts_refresh"), parameters=parameters)
    except (OperationalError, DatabaseError) as exc:
        raise _write_error(f"recounting {what}", database, exc) from exc


def _write_error(what: str, database: str, exc: OperationalError | DatabaseError) -> ClickHouseWriteError:
    if isinstance(exc, OperationalError):
        return ClickHouseWriteError(
            f"{what} in {database}.usage_counts did not complete: {exc}. The database is unreachable or timed "
            "out; the write is retried (its sessions are kept, and recounting twice changes nothing).",
            code=exc.code,
            transient=True,
        )
    return ClickHouseWriteError(
        f"{what} in {database}.usage_counts was refused (ClickHouse code {exc.code}): {exc}. "
        "Check that migration 012 ran (metering run applies it).",
        code=exc.code,
        transient=False,
    )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
