"""Usage tables as CSV, JSON or a terminal table: one renderer for `compute` and `usage`.

`compute` and `usage --by day` print byte-identical CSV for the same figures, so the two can be
compared line by line; both go through ``render``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Literal

from rich.console import Console
from rich.table import Table

Format = Literal["csv", "json", "table"]
FORMATS: tuple[Format, ...] = ("csv", "json", "table")

Cell = str | int | float | None


def render(columns: Sequence[str], rows: Sequence[Sequence[Cell]], fmt: Format, title: str = "") -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
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
