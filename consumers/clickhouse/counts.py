"""Keep ``usage_counts`` (migration 012) exact: whoever writes sessions or voids recounts what it touched.

A count is a function of the sets in ``usage_15m`` and ``voids_15m``, which replays, late sessions,
voids and moves keep exact; recounting a key only ever writes the value those sets hold. So a
recount is idempotent and can be repeated after any failure, and the one rule is order:

1. write (``SessionStore.insert``: the sessions; reconcile: the voids);
2. read the server's clock: the recount's version;
3. recount the keys written in 1 from the sets (``INSERT ... SELECT``: one per UTC day they fall in,
   over the accounts x apps x buckets of that day, a superset: recounting a key is always harmless);
4. read the clock again, and sum the accounts' rows of 3 per bucket into ``usage_counts_account``
   (migration 013: the console's all-apps series) under that second version.

A recount's snapshot is taken after its version, and every write a recount is owed happened before
that recount's version; so the row with the greatest version of a key saw every write made to the
key, and ``ReplacingMergeTree(version)`` (or ``FINAL`` before merges) keeps it, whatever writers run
at once (a sink per partition, a repair). Step 4 likewise: the account sum with the greatest version
started after every recount of 3 it is owed had landed. A crash between 1 and 4 leaves the count behind the sets
until the same keys are recounted: the sink commits offsets only after 3, so its redelivered batch
does it; a repair run recounts its whole period when it ends (:func:`recount_period`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Final

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

import sql
from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.errors import ClickHouseWriteError
from pipeline.infra import failpoints

__all__ = ["BUCKET_MS", "Key", "bucket_of", "key_of", "recount", "recount_period"]

#: usage_15m's bucket, in milliseconds (``toStartOfFifteenMinutes``).
BUCKET_MS: Final = 15 * 60 * 1000
_DAY_MS: Final = 86_400_000

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
    days: dict[int, _Day] = {}
    for account, app, bucket_ms in keys:
        day = days.get(bucket_ms // _DAY_MS)
        if day is None:
            day = days[bucket_ms // _DAY_MS] = _Day(bucket_ms)
        day.add(account, app, bucket_ms)
    if not days:
        return
    # tests: a crash (kill) or an outage (fail) after the write, before its recount
    failpoints.hit("counts.recount", lambda why: ClickHouseWriteError(why, code=None, transient=True))
    for table in ("usage_counts", "usage_counts_account"):
        if table == "usage_counts_account":  # tests: a crash or an outage between the two recounts
            failpoints.hit("counts.account_sum", lambda why: ClickHouseWriteError(why, code=None, transient=True))
        version = _clock(client, database)
        for _, day in sorted(days.items()):
            _refresh(
                client,
                database,
                table,
                accounts=sorted(day.accounts),
                apps=sorted(day.apps),
                first=_utc(day.first_ms),
                end=_utc(day.last_ms + BUCKET_MS),
                version=version,
                what=f"the usage counts of {len(day.apps)} apps",
            )


def recount_period(client: Client, database: str, first: date, last: date) -> None:
    """Recount every key of the UTC days ``first``..``last`` (a repair run's period, widened by the caller).

    One statement per day: each groups at most a day of every app's buckets.
    """
    for table in ("usage_counts", "usage_counts_account"):
        version = _clock(client, database)
        day = first
        while day <= last:
            start = datetime.combine(day, datetime.min.time(), UTC)
            end = start + timedelta(days=1)
            what = f"the usage counts of {day.isoformat()}"
            _refresh(client, database, table, accounts=[], apps=[], first=start, end=end, version=version, what=what)
            day += timedelta(days=1)


class _Day:
    """The keys to recount within one UTC day: their accounts, apps and bucket span."""

    __slots__ = ("accounts", "apps", "first_ms", "last_ms")

    def __init__(self, bucket_ms: int) -> None:
        self.accounts: set[str] = set()
        self.apps: set[str] = set()
        self.first_ms = self.last_ms = bucket_ms

    def add(self, account: str, app: str, bucket_ms: int) -> None:
        self.accounts.add(account)
        self.apps.add(app)
        self.first_ms = min(self.first_ms, bucket_ms)
        self.last_ms = max(self.last_ms, bucket_ms)


def _clock(client: Client, database: str) -> int:
    check_database_name(database)
    try:
        return int(client.query(sql.query("server_clock_ns")).result_rows[0][0])
    except (OperationalError, DatabaseError) as exc:
        raise _write_error("reading the server clock for a usage count", f"{database}.usage_counts", exc) from exc


def _refresh(
    client: Client,
    database: str,
    table: str,
    *,
    accounts: list[str],
    apps: list[str],
    first: datetime,
    end: datetime,
    version: int,
    what: str,
) -> None:
    """Recount ``table``: the apps' rows of usage_counts from the sets, or their sums per account."""
    parameters = {"database": database, "accounts": accounts, "first": first, "end": end, "version": version}
    if table == "usage_counts":
        parameters["apps"] = apps
    try:
        client.command(sql.query(f"{table}_refresh"), parameters=parameters)
    except (OperationalError, DatabaseError) as exc:
        raise _write_error(f"recounting {what}", f"{database}.{table}", exc) from exc


def _write_error(what: str, table: str, exc: OperationalError | DatabaseError) -> ClickHouseWriteError:
    if isinstance(exc, OperationalError):
        return ClickHouseWriteError(
            f"{what} in {table} did not complete: {exc}. The database is unreachable or timed "
            "out; the write is retried (its sessions are kept, and recounting twice changes nothing).",
            code=exc.code,
            transient=True,
        )
    return ClickHouseWriteError(
        f"{what} in {table} was refused (ClickHouse code {exc.code}): {exc}. "
        "Check that migrations 012 and 013 ran (metering run applies them).",
        code=exc.code,
        transient=False,
    )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
