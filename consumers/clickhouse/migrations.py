"""Apply the numbered migrations of ``sql/migrations`` once each, and remember them.

Why tracked and checksummed: ClickHouse DDL is not transactional and ``IF NOT EXISTS`` makes
a changed ``CREATE`` a silent no-op on a database that already has the table, so the code
and the schema could drift apart unnoticed. Each applied file is recorded in
``schema_migrations`` with its SHA-256; running again applies only what is new, and a file
that changed after it was applied stops the start-up with a message saying what to do.

Every statement is written ``IF NOT EXISTS``, so a migration that failed half-way (nothing
recorded) can be fixed and run again without hand clean-up.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

import sql
from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.errors import ClickHouseUnavailableError, MigrationError

__all__ = ["Migration", "load_migrations", "migrate", "split_statements"]

_FILE_NAME: Final = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNN_name.sql`` file: its version, name, text and the SHA-256 of the text."""

    version: int
    name: str
    text: str

    @property
    def file(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def statements(self) -> list[str]:
        return split_statements(self.text)


def load_migrations() -> list[Migration]:
    """The shipped migrations in version order; a misnamed or duplicate file is an error."""
    found: dict[int, Migration] = {}
    for file_name, text in sql.migration_files():
        match = _FILE_NAME.match(file_name)
        if match is None:
            raise MigrationError(f"sql/migrations/{file_name}: migration files are named NNN_lower_snake.sql")
        migration = Migration(version=int(match.group(1)), name=match.group(2), text=text)
        if migration.version in found:
            raise MigrationError(
                f"sql/migrations/{file_name} and {found[migration.version].file} share version {migration.version}"
            )
        found[migration.version] = migration
    return [found[v] for v in sorted(found)]


def migrate(client: Client, database: str, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Create ``database`` and apply what is not applied yet; returns what was applied now.

    Idempotent: a second run applies nothing. Raises :class:`MigrationError` if an applied
    migration's file has changed or the database has one this code does not know.
    """
    check_database_name(database)
    wanted = list(load_migrations() if migrations is None else migrations)
    params = {"database": database}
    _run(client, sql.query("create_database"), params, f"creating database {database}")
    _run(client, sql.query("create_schema_migrations"), params, f"creating {database}.schema_migrations")
    applied = _applied(client, database)
    _check_applied(database, wanted, applied)
    done: list[Migration] = []
    for migration in wanted:
        if migration.version in applied:
            continue
        for index, statement in enumerate(migration.statements, start=1):
            _run(client, statement, params, f"migration {migration.file}, statement {index}", migration=migration)
        _record(client, database, migration)
        done.append(migration)
    return done


def _applied(client: Client, database: str) -> dict[int, tuple[str, str]]:
    try:
        rows = client.query(sql.query("applied_migrations"), parameters={"database": database}).result_rows
    except OperationalError as exc:
        raise ClickHouseUnavailableError(f"reading {database}.schema_migrations failed: {exc}") from exc
    return {int(version): (str(name), str(checksum)) for version, name, checksum in rows}


def _check_applied(database: str, wanted: Sequence[Migration], applied: dict[int, tuple[str, str]]) -> None:
    known = {m.version: m for m in wanted}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"database {database} has migration {version:03d}_{name} applied, which this code does not "
                "ship: it was migrated by a newer version. Run that version, or use another database."
            )
        if migration.checksum != checksum:
            next_version = max(known) + 1
            raise MigrationError(
                f"sql/migrations/{migration.file} changed after it was applied to database {database} "
                f"(applied sha256 {checksum[:12]}..., file now {migration.checksum[:12]}...). Applied migrations "
                f"are never edited: restore the file and put the change in a new {next_version:03d}_<name>.sql."
            )


def _run(
    client: Client, statement: str, params: dict[str, str], what: str, *, migration: Migration | None = None
) -> None:
    try:
        client.command(statement, parameters=params)
    except OperationalError as exc:
        raise ClickHouseUnavailableError(f"{what} failed, the database is unavailable: {exc}") from exc
    except DatabaseError as exc:
        hint = " It was not recorded: fix the file and run again." if migration is not None else ""
        raise MigrationError(f"{what} failed (ClickHouse code {exc.code}): {exc}.{hint}") from exc


def _record(client: Client, database: str, migration: Migration) -> None:
    try:
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
            database=database,
        )
    except DatabaseError as exc:
        raise MigrationError(
            f"migration {migration.file} was applied but recording it in {database}.schema_migrations failed "
            f"(ClickHouse code {exc.code}): {exc}. Running again re-applies it harmlessly (IF NOT EXISTS)."
        ) from exc


def split_statements(text: str) -> list[str]:
    """The ``;``-separated statements of ``text``, ignoring ``;`` in quotes and comments.

    Statements holding nothing but comments and blanks are dropped.
    """
    statements: list[str] = []
    start = 0
    code_seen = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"`":
            i = _skip_quoted(text, i)
            code_seen = True
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if ch == ";":
            if code_seen:
                statements.append(text[start:i].strip())
            start, code_seen = i + 1, False
        elif not ch.isspace():
            code_seen = True
        i += 1
    if code_seen:
        statements.append(text[start:].strip())
    return statements


def _skip_quoted(text: str, i: int) -> int:
    """Index just past the quoted literal or identifier opening at ``i`` (``\\`` escapes)."""
    quote = text[i]
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == quote:
            if text.startswith(quote * 2, i):  # doubled quote inside the literal
                i += 2
                continue
            return i + 1
        i += 1
    return i
