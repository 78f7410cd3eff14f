"""§4 Exports: ``GET /api/v1/sessions.csv``, every billing session of the range, streamed.

Streamed as ClickHouse writes it (CSV from the query's row stream, 64 KiB at a time), so memory
stays flat however many rows; on a database handle of the export's own (``own_handle``:
embedded, another chDB connection to the same engine; a server, another client and connection
pool), so a slow download never holds the sink's handle. At most three months (92 days) a
request unless ``METERING_CONSOLE_EXPORT_MAX_DAYS`` raises it, and a few exports at a time: three in
the process, two of them at most for one account (:class:`ExportSlots`), so one account's slow
downloads never lock the other accounts out; more get 429 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Annotated, Final

import anyio.to_thread
from clickhouse_connect.driver.exceptions import Error as DriverError
from fastapi import Depends, Query
from fastapi.responses import StreamingResponse

import sql
from console.attachments import attachment
from console.context import ConsoleContext
from console.deps import account_scope, billing_router, console_context
from console.errors import ApiError, bad_parameter
from console.tenancy import AccountScope, check_scoped
from console.usage_range import check_zone, local_midnight, parse_day
from consumers.clickhouse.errors import ClickHouseError
from consumers.reports.sessions import SESSION_COLUMNS
from pipeline.infra.logs import fields

router = billing_router(prefix="/api/v1", tags=["exports"])

CHUNK_BYTES: Final = 64 * 1024
#: Exports running at once in this process; more get 429 (each holds a handle, a thread and some of a core).
MAX_CONCURRENT_EXPORTS: Final = 3
#: Of them, one account's: its slow downloads never take every slot, so other accounts' exports still start.
MAX_EXPORTS_PER_ACCOUNT: Final = 2
#: Long-lived reading threads, one per export that may run: a thread's allocator arena is reused
#: by the next export instead of a new thread growing a new one.
_PUMPS = ThreadPoolExecutor(MAX_CONCURRENT_EXPORTS, thread_name_prefix="sessions-export")


class ExportSlots:
    """Who runs exports now: at most ``per_account`` for an account and ``total`` in all."""

    def __init__(self, total: int = MAX_CONCURRENT_EXPORTS, per_account: int = MAX_EXPORTS_PER_ACCOUNT) -> None:
        self.total = total
        self.per_account = per_account
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    def take(self, account: str) -> str | None:
        """A slot for ``account`` (None), or why there is none (the 429's message)."""
        with self._lock:
            if self._running.get(account, 0) >= self.per_account:
                return (
                    f"{self.per_account} exports of this account are already running: try again when one has finished"
                )
            if sum(self._running.values()) >= self.total:
                return "the console is running as many exports as it can: try again in a few seconds"
            self._running[account] = self._running.get(account, 0) + 1
            return None

    def running(self) -> dict[str, int]:
        """Exports running now, by account."""
        with self._lock:
            return dict(self._running)

    def give_back(self, account: str) -> None:
        with self._lock:
            left = self._running.get(account, 0) - 1
            if left > 0:
                self._running[account] = left
            else:
                self._running.pop(account, None)


_slots = ExportSlots()
_QUERY: Final = "console_sessions_export"
_QUEUED: Final = 4
_STALLED_SECONDS: Final = 300.0

log = logging.getLogger(__name__)


def _header() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(SESSION_COLUMNS)
    return out.getvalue().encode()


@router.get(
    "/sessions.csv",
    summary="One row per billing session whose start falls in the local dates from..to (streamed CSV)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "the sessions as an attachment"}},
)
def sessions_csv(
    *,
    scope: Annotated[AccountScope, Depends(account_scope)],
    context: Annotated[ConsoleContext, Depends(console_context)],
    app: Annotated[str | None, Query(description="one app of the account; all apps when left out")] = None,
    from_: Annotated[str | None, Query(alias="from", description="first local date (default: 29 days ago)")] = None,
    to: Annotated[str | None, Query(description="last local date, included (default: today)")] = None,
    timezone: Annotated[str, Query(description="IANA zone of the dates")] = "UTC",
) -> StreamingResponse:
    tz = check_zone(timezone)
    today = context.now().astimezone(tz).date()
    last = parse_day("to", to) if to is not None else today
    first = parse_day("from", from_) if from_ is not None else last - timedelta(days=29)
    if first > last:
        raise bad_parameter("from", f"{first} is after to ({last}): give the earlier date first")
    limit = context.settings.export_max_days
    if (last - first).days + 1 > limit:
        raise bad_parameter(
            "to", f"the range is {(last - first).days + 1} days: an export covers at most {limit} days; split it"
        )
    if app is not None:
        if not app.strip():
            raise bad_parameter("app", "is empty: give an app id, or leave it out for all apps")
        scope.require_app(app)
    busy = _slots.take(scope.account_id)
    if busy is not None:
        raise ApiError(429, busy, headers={"Retry-After": "10"})
    try:
        stream = _open(scope, context, app, local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz))
    except BaseException:
        _slots.give_back(scope.account_id)
        raise
    name = f"sessions-{app or 'all-apps'}-{first}-{last}.csv"
    return StreamingResponse(
        stream,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": attachment(name), "Cache-Control": "no-store"},
    )


def _open(
    scope: AccountScope, context: ConsoleContext, app: str | None, start: object, end: object
) -> AsyncIterator[bytes]:
    """Start the query on a handle of the export's own; the iterator streams it and closes both."""
    check_scoped(_QUERY)
    handles = contextlib.ExitStack()
    try:
        client = handles.enter_context(context.own_handle())
        parameters = {
            "database": scope.database,
            "account": scope.account_id,
            "apps": [app] if app else [],
            "start": start,
            "end": end,
        }
        try:
            raw = client.raw_stream(sql.query(_QUERY), parameters=parameters, fmt="CSV")
            assert isinstance(raw, io.IOBase)  # the sync client's stream
        except DriverError as exc:  # the database is down, or not migrated
            raise ClickHouseError(f"the sessions export could not start: {exc}") from exc
        handles.callback(raw.close)
    except BaseException:
        handles.close()
        raise
    return _chunks(raw, handles, scope.account_id)


def _chunks(raw: io.IOBase, handles: contextlib.ExitStack, account: str) -> AsyncIterator[bytes]:
    """The export's bytes, read from ClickHouse by one thread of its own (a pump) through a small queue.

    Reading in the server's thread pool would touch the stream from a different thread at every
    chunk, and every thread's allocator arena keeps what it once held: measured, 20-40 MiB more
    per export than one reading thread. The pumps are long-lived threads (``_PUMPS``). The queue holds at most
    ``_QUEUED`` chunks, so a slow client slows the query down instead of filling memory.
    """
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_QUEUED)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        """False when the client is gone (or has taken nothing for ``_STALLED_SECONDS``): stop."""
        deadline = time.monotonic() + _STALLED_SECONDS
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                chunks.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            if not put(_header()):
                return
            while chunk := raw.read(CHUNK_BYTES):
                if not put(chunk):
                    return
            put(None)
        except BaseException as exc:  # the stream failed mid-way: the client sees a cut download
            put(exc)
        finally:
            handles.close()
            _slots.give_back(account)

    _PUMPS.submit(pump)

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                item = await anyio.to_thread.run_sync(chunks.get)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    log.warning("sessions export failed mid-way", extra=fields(error=str(item)))
                    raise item
                yield item
        finally:
            stop.set()  # the client went away or the export ended: the pump stops and closes the handle

    return stream()
