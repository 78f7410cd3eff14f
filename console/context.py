"""What the console's routes work with, built once by the store process and kept on ``app.state``.

Routes never build clients or read settings themselves: they take a :class:`ConsoleContext` (or
something made from it, such as :class:`~console.tenancy.AccountScope`) from a dependency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as DriverError

from console.auth import Authenticator
from pipeline.infra.settings import ConsoleSettings

__all__ = ["ConsoleContext"]


@dataclass
class ConsoleContext:
    """The store's ClickHouse and the console's configuration.

    ``client`` is the store's own client, shared with the sink: short queries only (each call
    holds its handle while it runs). Anything that streams or runs long (an export) takes
    :meth:`own_handle`, a client of its own, so it can never hold the sink up.
    """

    client: Client
    database: str
    settings: ConsoleSettings
    authenticator: Authenticator
    #: The store's operator token (``<data_dir>/run/store.token``); None: operators' routes answer 403.
    operator_token: str | None = None
    #: Opens another client on the same database (embedded: another chDB handle; server: another pool).
    open_handle: Callable[[], Client] | None = None
    #: For issue-10b and later: anything else the routes need (a Kafka producer, the plan catalogue).
    extras: dict[str, Any] = field(default_factory=dict)

    def unready_reason(self) -> str | None:
        """None when ClickHouse answers ``SELECT 1``, else why not (``/readyz``)."""
        try:
            self.client.command("SELECT 1")
        except DriverError as exc:
            text = str(exc).strip()
            return f"ClickHouse does not answer: {text.splitlines()[0] if text else repr(exc)}"
        return None

    def now(self) -> datetime:
        """``METERING_CONSOLE_NOW`` when set (tests, demos), else the wall clock, in UTC."""
        fixed = self.settings.now
        return fixed.astimezone(UTC) if fixed is not None else datetime.now(UTC)

    @contextlib.contextmanager
    def own_handle(self) -> Iterator[Client]:
        """A database client of this caller's own, closed afterwards (the shared one if none can be opened)."""
        if self.open_handle is None:
            yield self.client
            return
        client = self.open_handle()
        try:
            yield client
        finally:
            client.close()
