"""The product's named queries (``sql/queries/``) bound to a Grafana dashboard's variables.

A named query takes bound parameters (``{tz:String}``); Grafana's ClickHouse data source has no
parameters, only text its variables and macros expand into. Each parameter becomes one ``WITH``
alias, ``CAST(<Grafana expression> AS <its type>)``, and the query text itself is used unchanged:
so the dashboards run the SQL `metering usage` runs, voids and all, and a change to a query
reaches them with ``make dashboards``.

What a dashboard variable may put into the SQL is restricted where the variable is defined
(``consumers/grafana/variables.py``): values come from lists the dashboard queries or fixes, never
from free text, and every one is quoted by Grafana's ``singlequote`` format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import sql

__all__ = ["ALL_APPS", "ALL_VALUE", "BindingError", "Bound", "account_filter", "app_filter", "bind", "selection"]

#: ``{name:Type}``: a ClickHouse query parameter.
PARAMETER: Final = re.compile(r"\{(\w+):([^{}]+)\}")

#: The custom "All" value of the account and app variables: Grafana pastes it as it is (without
#: formatting), so it must be SQL: the empty string, which no id is (ids have 1 to 128 characters).
ALL_VALUE: Final = "''"


def selection(variable: str) -> str:
    """An account or app variable as an ``Array(String)`` of the chosen ids: empty for "All"."""
    return f"arrayFilter(a -> a != {ALL_VALUE}, [${{{variable}:singlequote}}])"


#: The app variable as the ``Array(String)`` the queries take: empty (all apps) for "All".
ALL_APPS: Final = selection("app")

_TZ: Final = "${tz:singlequote}"


#: Parameters bound the same way in every panel.
_STANDARD: Final[Mapping[str, str]] = {
    "database": "${database}",  # an Identifier: the dashboard's hidden constant, pasted as it is
    "tz": _TZ,
    "period": "${by:singlequote}",
    "apps": ALL_APPS,
    "account": f"nullIf(${{account:singlequote}}, {ALL_VALUE})",
    "step": "$__interval_s",
}


def _standard(name: str, kind: str) -> str | None:
    """The Grafana expression for a parameter the dashboards bind the same way everywhere."""
    if name not in ("from", "to"):
        return _STANDARD.get(name)
    macro = "$__fromTime" if name == "from" else "$__toTime"
    if kind in ("Date", "Nullable(Date)"):
        return f"toDate({macro}, {_TZ})"  # the local days the time range touches: `usage --from/--to`
    if kind.startswith("DateTime"):
        return macro  # instants, both ends included, as $__timeFilter(column) compares
    return None


class BindingError(ValueError):
    """A named query has a parameter no binding covers; the message says where to add one."""


@dataclass(frozen=True, slots=True)
class Bound:
    """A named query ready for Grafana: ``text()`` as it is, or inside a wrapping query."""

    name: str
    comments: str  # the query file's leading comment block: what the figures mean
    bindings: tuple[str, ...]  # ``CAST(... AS T) AS param_x``, in order of first use
    body: str

    def text(self, wrap: Callable[[str], str] | None = None) -> str:
        """The SQL for a panel; ``wrap`` receives the query as a subquery ``(\\n...\\n)``."""
        header = (
            f"-- sql/queries/{self.name}.sql, its parameters bound to this dashboard's variables and time range\n"
            "-- by `make dashboards` (consumers/grafana): change the .sql file, then run it, not this text.\n"
        )
        body = self.body
        if wrap is not None:
            body = wrap("(\n" + _indent(body) + "\n)")
        elif re.match(r"WITH\b", body, flags=re.IGNORECASE):
            return header + self.comments + re.sub(r"^WITH\b", "WITH\n" + self._with_list() + ",", body, count=1,
                                                   flags=re.IGNORECASE)  # fmt: skip
        with_clause = f"WITH\n{self._with_list()}\n" if self.bindings else ""
        return header + self.comments + with_clause + body

    def _with_list(self) -> str:
        return ",\n".join(f"    {b}" for b in self.bindings)


def bind(name: str, **overrides: str) -> Bound:
    """``sql/queries/<name>.sql`` with every parameter bound: ``overrides`` first, then the standard ones.

    Raises :class:`BindingError` for a parameter neither covers, so a new parameter in a query
    file stops ``make dashboards`` (and its test) instead of reaching Grafana unbound.
    """
    text = sql.query(name)
    lines = text.splitlines(keepends=True)
    split = next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))
    comments, body = "".join(lines[:split]), "".join(lines[split:]).strip() + "\n"
    bindings: dict[tuple[str, str], str] = {}
    aliases: dict[tuple[str, str], str] = {}
    for found in PARAMETER.finditer(body):
        key = (found.group(1), found.group(2))
        if key in aliases:
            continue
        expression = overrides.get(key[0]) or _standard(*key)
        if expression is None:
            raise BindingError(
                f"sql/queries/{name}.sql takes parameter {found.group(0)}, which the dashboards do not bind: "
                "bind it in consumers/grafana (a standard binding in bind.py, or an override where the panel is built)"
            )
        if key[1] == "Identifier":
            aliases[key] = expression
            continue
        alias = f"param_{key[0]}" if f"param_{key[0]}" not in aliases.values() else f"param_{key[0]}_{len(aliases)}"
        aliases[key] = alias
        bindings[key] = f"CAST({expression} AS {key[1]}) AS {alias}"
    bound_body = PARAMETER.sub(lambda m: aliases[(m.group(1), m.group(2))], body)
    return Bound(name, comments, tuple(bindings.values()), bound_body)


def _indent(text: str) -> str:
    return "\n".join(("    " + line) if line else line for line in text.rstrip("\n").split("\n"))


def app_filter(column: str = "app_id") -> str:
    """The app variable as a condition, for a panel's wrapper around a query without an apps parameter."""
    return f"(empty({ALL_APPS}) OR {column} IN {ALL_APPS})"


def account_filter(column: str = "account_id") -> str:
    """The account variable as a condition ("All" is the empty string: every account)."""
    return f"${{account:singlequote}} IN ({ALL_VALUE}, {column})"
