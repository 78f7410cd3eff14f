"""The dashboards' template variables, and what each may put into SQL.

Nothing typed by a viewer reaches ClickHouse: there is no text-box variable, and the others
refuse values outside their options (``allowCustomValue: false``). The options are

- ``tz``: the zone names the ClickHouse server knows (``system.time_zones``), kept to IANA-name
  characters (letters, digits, ``_ + - /``), so a reporting zone is always a valid zone;
- ``account``, ``app``: the ids in the database. An id is free text (the event contract allows
  any 1 to 128 characters), so the option's *value* is the id with each backslash doubled and the
  option's *text* the id: Grafana's ``singlequote`` format escapes ``'`` (as ``\\'``) but not
  ``\\``, so only with both escaped is every id one ClickHouse string literal, never SQL;
- ``by``: day, week or month, as ``metering usage --by``.

"All" of account and app is the custom value ``''`` (pasted as it is): the queries read it as
"no filter", as ``metering usage`` without ``--account``/``--app``, however many ids there are.

PromQL cannot take that value (nor Grafana's ``regex`` format, ``escapeRegex`` of grafana
``packages/grafana-data/src/text/string.ts``, whose ``\\.`` is no escape a PromQL string accepts
and which leaves ``"`` as it is), so each of the two has a hidden companion,
``account_regex`` and ``app_regex``: ClickHouse turns the selection into the body of a PromQL regex
matcher, ``(?s:.*)`` for "All", else the ids joined by ``|``, every byte outside ``[A-Za-z0-9_-]``
and ASCII written ``\\\\xHH`` in the PromQL string (``\\xHH`` in the regex): one literal character
whatever the id holds (quotes, backslashes, regex metacharacters, newlines). Grafana refreshes a
query variable whenever a variable its query names changes, so they follow the selection, and the
panels paste them with the ``raw`` format (``label=~"${app_regex:raw}"``).
"""

from __future__ import annotations

from typing import Any, Final

from consumers.grafana.bind import ALL_VALUE, account_filter, selection
from consumers.grafana.panels import CLICKHOUSE

__all__ = [
    "DATABASE",
    "MATCH_ALL",
    "PROMQL_SELECTION",
    "ZONE_NAME",
    "account",
    "app",
    "by",
    "clickhouse_source",
    "common",
    "database",
    "prometheus_source",
    "promql_regexes",
    "tz",
]

#: The database the dashboards read when nobody changes the hidden constant (the product's default).
DATABASE: Final = "metering"
#: What an option of ``tz`` may be: IANA zone names are made of these (``America/Argentina/Salta``).
ZONE_NAME: Final = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"
#: The PromQL regex of "All": any label value, newlines too (Prometheus 2 lets ``.`` stop at them).
MATCH_ALL: Final = "(?s:.*)"
#: The label matchers of a per-app Prometheus series (labels ``account_id``, ``app_id``) for the selection.
PROMQL_SELECTION: Final = 'account_id=~"${account_regex:raw}", app_id=~"${app_regex:raw}"'


def _source(name: str, plugin: str, label: str) -> dict[str, Any]:
    """Picks a data source of the plugin's type; the provisioned one (uid = name) by default."""
    return {
        "type": "datasource",
        "name": name,
        "label": label,
        "query": plugin,
        "current": {"text": label, "value": name},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def clickhouse_source() -> dict[str, Any]:
    return _source("clickhouse", "grafana-clickhouse-datasource", "ClickHouse")


def prometheus_source() -> dict[str, Any]:
    return _source("prometheus", "prometheus", "Prometheus")


def database() -> dict[str, Any]:
    """Hidden: change it under Dashboard settings > Variables if the metering database has another name."""
    return {
        "type": "constant",
        "name": "database",
        "label": "ClickHouse database",
        "query": DATABASE,
        "current": {"text": DATABASE, "value": DATABASE},
        "hide": 2,
        "options": [{"selected": True, "text": DATABASE, "value": DATABASE}],
    }


def _query(
    name: str, label: str, sql: str, *, multi: bool, include_all: bool, current: dict[str, Any]
) -> dict[str, Any]:
    variable = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": CLICKHOUSE,
        "query": sql,
        "definition": sql,
        "refresh": 1,
        "sort": 0,
        "multi": multi,
        "includeAll": include_all,
        "allowCustomValue": False,
        "current": current,
        "hide": 0,
        "regex": "",
        "options": [],
    }
    if include_all:
        variable["allValue"] = ALL_VALUE
    return variable


def _ids(column: str, tables: tuple[str, ...], where: str = "") -> str:
    """(value, text) options: the id with backslashes doubled (see the module's docstring), the id."""
    union = "\n    UNION ALL\n".join(f"    SELECT {column} AS id, account_id FROM ${{database}}.{t}" for t in tables)
    return (
        "SELECT DISTINCT replaceAll(id, '\\\\', '\\\\\\\\') AS value, id AS text\n"
        f"FROM\n(\n{union}\n)\n{where}ORDER BY text"
    )


def account(tables: tuple[str, ...]) -> dict[str, Any]:
    return _query("account", "Account", _ids("account_id", tables), multi=False, include_all=True,
                  current={"selected": True, "text": "All", "value": "$__all"})  # fmt: skip


def app(tables: tuple[str, ...]) -> dict[str, Any]:
    """Multi-select, "All" by default; lists the apps of the chosen account."""
    where = f"WHERE {account_filter()}\n"
    return _query("app", "App", _ids("app_id", tables, where), multi=True, include_all=True,
                  current={"selected": True, "text": ["All"], "value": ["$__all"]})  # fmt: skip


def tz() -> dict[str, Any]:
    sql = (
        "SELECT time_zone FROM system.time_zones\n"
        f"WHERE match(time_zone, '{ZONE_NAME}')\n"
        "ORDER BY time_zone != 'UTC', time_zone"
    )
    variable = _query("tz", "Reporting time zone", sql, multi=False, include_all=False,
                      current={"selected": True, "text": "UTC", "value": "UTC"})  # fmt: skip
    variable["description"] = "The zone of the local days usage is reported in (`metering usage --timezone`)."
    return variable


def common(id_tables: tuple[str, ...]) -> list[dict[str, Any]]:
    """The variables of every dashboard; ``id_tables`` list the accounts and apps to pick from."""
    return [clickhouse_source(), prometheus_source(), database(), account(id_tables), app(id_tables), tz()]


def _promql_regex(of: str) -> dict[str, Any]:
    """Hidden: the selection of variable ``of`` as a PromQL regex body (see the module's docstring).

    Bytes of 0x80 and above (the rest of a UTF-8 character) are kept: no metacharacter, nothing a
    PromQL string escapes; the others outside ``[A-Za-z0-9_-]`` become ``\\\\xHH``.
    """
    sql = (
        f"SELECT if(empty(ids), '{MATCH_ALL}', arrayStringConcat(arrayMap(id -> arrayStringConcat(arrayMap(\n"
        r"    b -> if(match(b, '^[A-Za-z0-9_-]$') OR b >= '\x80', b, concat('\\\\x', hex(b))),"
        "\n    splitByString('', id))), ids), '|')) AS regex\n"
        f"FROM (SELECT {selection(of)} AS ids)"
    )
    variable = _query(f"{of}_regex", f"{of.capitalize()} (PromQL regex)", sql, multi=False, include_all=False,
                      current={"selected": True, "text": MATCH_ALL, "value": MATCH_ALL})  # fmt: skip
    variable["hide"] = 2
    variable["description"] = f"The {of} variable for PromQL label matchers (follows it; not for editing)."
    return variable


def promql_regexes() -> list[dict[str, Any]]:
    """The hidden companions of account and app for dashboards with per-app Prometheus panels."""
    return [_promql_regex("account"), _promql_regex("app")]


def by() -> dict[str, Any]:
    periods = ("day", "week", "month")
    return {
        "type": "custom",
        "name": "by",
        "label": "Usage by",
        "description": "Period of the usage table, as `metering usage --by` (weeks start on Monday).",
        "query": ",".join(periods),
        "current": {"selected": True, "text": "day", "value": "day"},
        "options": [{"selected": p == "day", "text": p, "value": p} for p in periods],
        "multi": False,
        "includeAll": False,
        "allowCustomValue": False,
        "hide": 0,
    }
