"""The ClickHouse layer: where billing sessions are stored and usage is read back.

Small modules, each with one reason to change:

- ``client``: turn ``METERING_CLICKHOUSE_URL`` into the process's one client (embedded chDB
  or a server), with clear errors and narrow retries.
- ``migrations``: apply ``sql/migrations`` once each, tracked and checksummed.
- ``store``: the ``SessionWriter`` interface the sink needs and ``SessionStore``, its
  ClickHouse implementation (token-deduplicated, replay-proof inserts).
- ``fake``: an in-memory fake ``SessionWriter`` for unit tests of the sink.
- ``usage``: per-app per-period usage in any zone, in ``metering compute``'s columns.
"""

from __future__ import annotations

from consumers.clickhouse.client import Client, connect, parse_url
from consumers.clickhouse.errors import (
    ClickHouseConfigError,
    ClickHouseError,
    ClickHouseUnavailableError,
    ClickHouseWriteError,
    MigrationError,
)
from consumers.clickhouse.migrations import migrate
from consumers.clickhouse.store import SessionStore, SessionWriter
from consumers.clickhouse.usage import usage

__all__ = [
    "ClickHouseConfigError",
    "ClickHouseError",
    "ClickHouseUnavailableError",
    "ClickHouseWriteError",
    "Client",
    "MigrationError",
    "SessionStore",
    "SessionWriter",
    "connect",
    "migrate",
    "parse_url",
    "usage",
]
