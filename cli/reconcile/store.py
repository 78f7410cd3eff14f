"""Where ClickHouse is: the service holding the embedded database (through its API), or our own connection."""

from __future__ import annotations

from typing import Final, Protocol

import msgspec

from cli.reconcile.period import Period, ReconcileError
from cli.store_client import StoreClient, StoreHttpError, StoreUnreachableError
from cli.store_lock import ReaderHold
from cli.usage_command import OnWait, StoreBusyError, open_client, reach_store, store_client
from consumers.clickhouse import ClickHouseUnavailableError, Client
from consumers.clickhouse.client import redact
from consumers.clickhouse.reconcile import (
    PeriodRequest,
    RepairBatch,
    RepairOutcome,
    Snapshot,
    apply_batch,
    snapshot,
)
from pipeline.infra.settings import Settings

_API_TIMEOUT_SECONDS: Final = 600.0


class ReconcileStore(Protocol):
    """The two operations reconcile needs from whoever holds ClickHouse."""

    where: str

    def snapshot(self, period: Period) -> Snapshot: ...

    def apply(self, batch: RepairBatch) -> RepairOutcome: ...

    def close(self) -> None: ...


class DirectStore:
    """ClickHouse opened by this process (a server, or an embedded database nobody holds)."""

    def __init__(
        self, client: Client, database: str, where: str, *, owned: bool = True, hold: ReaderHold | None = None
    ) -> None:
        self.client = client
        self.database = database
        self.where = where
        self._owned = owned
        self._hold = hold

    def snapshot(self, period: Period) -> Snapshot:
        return snapshot(self.client, self.database, start=period.first, end=period.last, tz=period.tz)

    def apply(self, batch: RepairBatch) -> RepairOutcome:
        return apply_batch(self.client, self.database, batch)

    def close(self) -> None:
        if self._owned:
            self.client.close()
        if self._hold is not None:
            self._hold.release()


class ApiStore:
    """The running service that holds the embedded database, through its operators' reconcile routes."""

    def __init__(self, client: StoreClient) -> None:
        self.api = client.api
        self.where = f"the running metering service at {client.api}"
        self._client = client

    def snapshot(self, period: Period) -> Snapshot:
        request = PeriodRequest(start=period.first, end=period.last, timezone=period.tz)
        return msgspec.json.decode(self._post("/reconcile/sessions", msgspec.json.encode(request)), type=Snapshot)

    def apply(self, batch: RepairBatch) -> RepairOutcome:
        return msgspec.json.decode(self._post("/reconcile/repair", msgspec.json.encode(batch)), type=RepairOutcome)

    def close(self) -> None:
        return None

    def _post(self, path: str, body: bytes) -> bytes:
        try:
            return self._client.post_json(path, body)
        except StoreHttpError as exc:
            raise _api_error(self.api, path, exc) from exc
        except StoreUnreachableError as exc:
            raise StoreBusyError(
                f"the running metering service at {self.api} did not answer {path} ({exc}); if it has just "
                "stopped, run this again"
            ) from exc


def _api_error(api: str, path: str, exc: StoreHttpError) -> Exception:
    message = exc.message
    if exc.status == 404:
        return ReconcileError(
            f"the running metering service at {api} has no {path}: it runs an older version. Restart it "
            "(metering run / metering sink) with this one, then run reconcile again"
        )
    if exc.status in (401, 403):
        return ReconcileError(f"the running metering service at {api} refused {path}: {message}")
    if exc.status == 503:
        return ClickHouseUnavailableError(f"the running metering service at {api}: {message}")
    return ReconcileError(f"the running metering service at {api} answered {exc.status} to {path}: {message}")


def open_store(settings: Settings, on_wait: OnWait | None = None) -> ReconcileStore:
    """The running service if it holds the embedded database (waiting for one that starts), else our own connection."""
    settings = settings.with_clickhouse_default()
    hold = None
    if settings.embedded_clickhouse:
        reached = reach_store(settings, on_wait=on_wait)
        if isinstance(reached, ReaderHold):
            hold = reached
        else:
            try:
                return ApiStore(store_client(settings, reached, timeout=_API_TIMEOUT_SECONDS))
            except StoreBusyError as exc:
                raise ReconcileError(str(exc)) from exc
    where = redact(settings.clickhouse_url)
    try:
        client = open_client(settings)
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    return DirectStore(client, settings.clickhouse_database, f"ClickHouse at {where}", hold=hold)
