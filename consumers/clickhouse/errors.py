"""The exceptions of the ClickHouse layer, each saying what failed and what to do about it.

Callers branch on the type (a bad setting stops start-up, an unavailable server is retried
by whoever owns the loop), and people read the message, so every message names the setting,
table or ClickHouse error code involved and the likely fix. Driver exceptions are chained as
``__cause__`` so nothing of the original is lost.
"""

from __future__ import annotations

from pipeline.infra.clickhouse_url import URL_SETTING, ClickHouseConfigError, ClickHouseError

__all__ = [
    "URL_SETTING",
    "ClickHouseConfigError",
    "ClickHouseError",
    "ClickHouseUnavailableError",
    "ClickHouseWriteError",
    "MigrationError",
    "MissingTablesError",
]


class ClickHouseUnavailableError(ClickHouseError):
    """The database could not be reached or opened; retrying later may succeed."""


class MissingTablesError(ClickHouseError):
    """The database or its metering tables do not exist yet: nothing was migrated there."""


class MigrationError(ClickHouseError):
    """The schema and this code disagree (edited or unknown migration, failed statement)."""


class ClickHouseWriteError(ClickHouseError):
    """An insert failed; ``transient`` says whether retrying the same batch may succeed.

    ``code`` is the ClickHouse error code when the server gave one.
    """

    def __init__(self, message: str, *, code: int | None, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient
