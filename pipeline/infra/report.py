"""Usage tables as CSV, JSON or a terminal table: one renderer for `compute` and `usage`.

`compute` and `usage --by day` print byte-identical CSV for the same figures, so the two can be
compared line by line; both go through ``render``.

CSV is opened in spreadsheets, and some cells hold text from end users' platforms (app, user and
conversation ids): a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return would run as a formula there, so CSV writes it with a leading ``'`` (OWASP's advice on CSV
injection, :func:`spreadsheet_safe`). A cell that is a plain decimal number (``-5.00``) stays as it
is, and numbers stay numbers. The console's sessions export applies the same rule in SQL
(``sql/queries/console_sessions_export.sql``), so `metering compute --sessions` stays its oracle.
JSON and the terminal table keep the text as it is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from typing import Final, Literal

from rich.console import Console
from rich.table import Table

Format = Literal["csv", "json", "table"]
FORMATS: tuple[Format, ...] = ("csv", "json", "table")

Cell = str | int | float | None

#: What a spreadsheet takes for the start of a formula (or, tab and CR, for a cell it then trims).
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER: Final = re.compile(r"[+-]?[0-9]+([.][0-9]+)?")


def spreadsheet_safe(cell: Cell) -> Cell:
    """``cell`` as a CSV cell that no spreadsheet runs: formula-like text gets a leading ``'``."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def render(columns: Sequence[str], rows: Sequence[Sequence[Cell]], fmt: Format, title: str = "") -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
        return out.getvalue()
    if fmt == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=1) + "\n"
    table = Table(title=title or None, show_lines=False)
    for c in columns:
        table.add_column(c, justify="left" if c in _TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    console.print(table)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


_TEXT_COLUMNS = frozenset({"account_id", "app_id", "day", "week", "month", "period", "plan", "status", "currency"})
