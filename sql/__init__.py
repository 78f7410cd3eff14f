"""The project's ClickHouse SQL, shipped as package data and read with importlib.resources.

SQL lives in ``.sql`` files rather than Python strings so that analysts and reviewers read
and diff it as SQL, and so that a migration's checksum is the checksum of a file anyone can
hash. Every file names the database as the bound parameter ``{database:Identifier}``, and
every value (zone, dates, ids) as a bound parameter too: nothing is formatted into SQL.

- ``migrations/NNN_name.sql``: the schema, applied in version order by
  ``consumers.clickhouse.migrations``; an applied file is never edited, a new one is added.
- ``queries/NAME.sql``: named statements and queries (``query("usage_by_period")``).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["migration_files", "query"]


def _folder(name: str) -> Traversable:
    return files(__name__).joinpath(name)


def query(name: str) -> str:
    """The text of ``queries/<name>.sql``; ``FileNotFoundError`` names the file if it is missing."""
    path = _folder("queries").joinpath(f"{name}.sql")
    if not path.is_file():
        raise FileNotFoundError(f"no named query {name!r}: expected sql/queries/{name}.sql")
    return path.read_text(encoding="utf-8")


def migration_files() -> list[tuple[str, str]]:
    """``(file name, text)`` of every ``migrations/*.sql``, sorted by file name."""
    folder = _folder("migrations")
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".sql")
    )
