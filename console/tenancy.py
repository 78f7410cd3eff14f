"""Account-scoped access to ClickHouse: every console query is bound to the token's account in SQL.

:class:`AccountScope` is what a billing route gets (``Depends(account_scope)``): its
:meth:`~AccountScope.query` runs a named query from ``sql/queries`` with ``account`` bound to the
principal's ``account_id`` and refuses a query whose SQL does not filter on ``{account:String}``,
so a console query cannot forget its tenant. :meth:`~AccountScope.require_app` answers 404 for an
app of another account exactly as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from clickhouse_connect.driver.client import Client

import sql
from console.errors import not_found
from consumers.clickhouse.usage import named_query

__all__ = ["ACCOUNT_PARAMETER", "AccountScope", "UnscopedQueryError"]

#: The bound parameter every console query filters on.
ACCOUNT_PARAMETER: Final = "{account:String}"


class UnscopedQueryError(RuntimeError):
    """A console query does not filter on the account: a programming error, never shown to users."""


@dataclass(frozen=True)
class AccountScope:
    """The principal's account and the store's database."""

    client: Client
    database: str
    account_id: str

    def query(self, name: str, **parameters: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql/queries/<name>.sql`` with ``account`` bound to this account."""
        check_scoped(name)
        return named_query(self.client, self.database, name, **parameters, account=self.account_id)

    def stream(self, client: Client, name: str, **parameters: Any) -> Iterator[tuple[Any, ...]]:
        """Rows of a named query one block at a time, on ``client`` (a handle of the caller's own)."""
        check_scoped(name)
        bound = {"database": self.database, **parameters, "account": self.account_id}
        with client.query_rows_stream(sql.query(name), parameters=bound) as rows:
            yield from rows

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` of this account (the first column must be ``account_id`` and hold it)."""
        if columns[0] != "account_id" or any(row[0] != self.account_id for row in rows):
            raise UnscopedQueryError(f"rows for {table} must be this account's ({self.account_id})")
        self.client.insert(table, rows, column_names=list(columns), database=self.database)

    def app_exists(self, app_id: str) -> bool:
        """True if ``app_id`` belongs to this account (usage, plans, funds, seats or a balance)."""
        return bool(self.query("console_app_exists", app=app_id))

    def require_app(self, app_id: str) -> str:
        """``app_id`` if it is this account's; else 404, the same answer as for an app nobody has."""
        if not self.app_exists(app_id):
            raise not_found(f"no app {app_id!r} in this account")
        return app_id


def check_scoped(name: str) -> None:
    if ACCOUNT_PARAMETER not in sql.query(name):
        raise UnscopedQueryError(f"sql/queries/{name}.sql does not filter on {ACCOUNT_PARAMETER}")
