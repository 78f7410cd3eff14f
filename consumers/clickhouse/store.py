"""Write billing sessions to ClickHouse so that a retried or replayed batch never counts twice.

Two layers of protection, because the sink can fail after ClickHouse accepted a batch and
before the Kafka offsets were committed:

1. A retry of the same batch carries the same ``token`` (the sink derives it from the
   topic, partition and offset range). ClickHouse keeps the block ids of recent inserts
   (``non_replicated_deduplication_window`` / the replicated log) and drops a block whose
   ``insert_deduplication_token`` it has seen, in ``billing_sessions`` and, with
   ``deduplicate_blocks_in_dependent_materialized_views``, in ``usage_15m`` too.
2. A replay that re-emits the same sessions under another token (a reset consumer group, a
   worker re-finalizing after a crash) is inserted again, and absorbed by the schema:
   ``billing_sessions`` replaces rows by session id on merge, and ``usage_15m`` holds sets of
   session ids, so every figure stays exact before and after merges.

Inserts are synchronous (``async_insert = 0``), and :meth:`SessionStore.insert` then recounts the
``usage_counts`` keys its sessions fall in (``consumers.clickhouse.counts``): when it returns, the
rows are written and counted, which is what lets the sink commit offsets afterwards. A retry with
the same token recounts again, so a failure between the insert and the recount is repaired by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.counts import key_of, recount
from consumers.clickhouse.errors import ClickHouseWriteError
from pipeline.contract.events import EPOCH, BillingSessionRecord

__all__ = ["COLUMNS", "TABLE", "SessionStore", "SessionWriter", "record_columns"]

TABLE: Final = "billing_sessions"

#: Columns written, in this order; ``inserted_at`` is filled by the server.
COLUMNS: Final = (
    "account_id",
    "app_id",
    "billing_session_id",
    "kind",
    "channel",
    "user_id",
    "conversation_id",
    "conversation_session_id",
    "session_index",
    "started_at",
    "ended_at",
    "conversation_started_at",
    "conversation_ended_at",
    "bot_ms",
    "agent_ms",
    "alert_id",
    "schema_version",
)

#: Per-insert settings: synchronous, deduplicated by token, in the materialized view too.
INSERT_SETTINGS: Final[dict[str, Any]] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def insert_deduplicated(
    client: Client,
    database: str,
    table: str,
    data: Sequence[Sequence[Any]],
    *,
    names: Sequence[str],
    token: str | None,
    column_oriented: bool,
    where: str,
    retry: str,
    check: str,
) -> None:
    """One synchronous insert deduplicated by ``token`` (None: by block content); failures as ClickHouseWriteError.

    ``where`` names the insert in the messages, ``retry`` says how to retry after a timeout
    (transient), ``check`` what to check after a refusal (not transient).
    """
    settings = dict(INSERT_SETTINGS)
    if token is not None:
        settings["insert_deduplication_token"] = token
    try:
        client.insert(
            table,
            data,
            column_names=list(names),
            database=database,
            column_oriented=column_oriented,
            settings=settings,
        )
    except DatabaseError as exc:
        transient = isinstance(exc, OperationalError)  # unreachable or timed out, unlike a refusal
        message = (
            f"{where} did not complete: {exc}. The database is unreachable or timed out; {retry}"
            if transient
            else f"{where} was refused (ClickHouse code {exc.code}): {exc}. {check}"
        )
        raise ClickHouseWriteError(message, code=exc.code, transient=transient) from exc


class SessionWriter(Protocol):
    """The one storage operation the billing-sessions sink needs.

    ``insert`` must be idempotent per ``token``: calling it again with the same records and
    token after a failure or a crash must not count anything twice. A token always stands
    for the same records in the same order (derive it from the offsets the batch came
    from), because a block whose token was seen is dropped whatever it holds. It returns
    once the records are durable and counted (readers see them) and raises otherwise (never
    a partial silent success); called again after a failure, it completes what is missing.
    """

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None: ...


class SessionStore:
    """:class:`SessionWriter` backed by the ``billing_sessions`` table.

    Takes a ready client (see ``client.connect``) and does no I/O until :meth:`insert`.
    """

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = check_database_name(database)

    @property
    def table(self) -> str:
        return f"{self._database}.{TABLE}"

    def insert(
        self, records: Sequence[BillingSessionRecord], token: str, *, reconcile_run_id: str | None = None
    ) -> None:
        """Insert ``records`` as one deduplicated block set, then recount their usage keys; ``token`` names the batch.

        ``reconcile_run_id`` marks rows written by `metering reconcile --repair` with its run (the
        audit trail, migration 004); the stream's rows leave it NULL.
        """
        if not token:
            raise ValueError("an insert token is required: an empty one turns token deduplication off")
        if not records:
            return
        columns = record_columns(records)
        names = list(COLUMNS)
        if reconcile_run_id is not None:
            columns.append([reconcile_run_id] * len(records))
            names.append("reconcile_run_id")
        insert_deduplicated(
            self._client,
            self._database,
            TABLE,
            columns,
            names=names,
            token=token,
            column_oriented=True,
            where=f"insert of {len(records)} billing sessions into {self.table} (token {token!r})",
            retry="retry the same batch with the same token.",
            check="Check that the migrations ran (metering run applies them).",
        )
        recount(self._client, self._database, {key_of(r.account_id, r.app_id, _ms(r.started_at)) for r in records})


def record_columns(records: Sequence[BillingSessionRecord]) -> list[list[Any]]:
    """Column-oriented values of ``records`` in :data:`COLUMNS` order; times as epoch ms."""
    return [
        [r.account_id for r in records],
        [r.app_id for r in records],
        [r.billing_session_id for r in records],
        [r.kind for r in records],
        [r.channel for r in records],
        [r.user_id for r in records],
        [r.conversation_id for r in records],
        [r.conversation_session_id for r in records],
        [r.session_index for r in records],
        [_ms(r.started_at) for r in records],
        [_ms(r.ended_at) for r in records],
        [_ms_or_none(r.conversation_started_at) for r in records],
        [_ms_or_none(r.conversation_ended_at) for r in records],
        [r.bot_ms for r in records],
        [r.agent_ms for r in records],
        [r.alert_id for r in records],
        [r.schema_version for r in records],
    ]


def _ms(value: datetime) -> int:
    """Epoch milliseconds (DateTime64(3) ticks); a naive time is refused, not guessed."""
    if value.tzinfo is None:
        raise ValueError(f"billing session time {value.isoformat()} has no time zone")
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _ms_or_none(value: datetime | None) -> int | None:
    return None if value is None else _ms(value)
