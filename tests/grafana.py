"""Grafana and its ClickHouse data source, emulated: a panel's SQL as ClickHouse receives it.

No Grafana server runs in the tests, so this does what Grafana does to a panel's ``rawSql``, in
the same two steps, following their sources:

1. In the browser the plugin calls Grafana's template service (grafana/clickhouse-datasource,
   ``src/data/CHDatasource.ts``, ``applyTemplateVariables``: ``applyConditionalAll``, then
   ``templateSrv.replace(rawSql, scopedVars, this.format)``). Grafana's variable syntax is
   ``$var``, ``${var}``, ``${var:format}``, ``[[var]]`` (the ``variableRegex`` of
   grafana ``public/app/features/variables/utils.ts``); a name that is not a variable, such as a
   macro, is left as it is. A variable set to "All" with a custom all value is pasted *without
   formatting* ("skip formatting of custom all values unless format set to text or
   percentencode", ``template_srv.ts``); without one, it stands for every option's value. The
   ``singlequote`` format quotes each value and escapes ``'`` as ``\\'`` and nothing else; with
   no format the plugin's own ``format`` quotes and joins an array and pastes one value as it is.
   Grafana's built-ins ``$__interval`` (``1m``) and ``$__interval_ms`` are replaced here too.
2. The plugin's backend expands its macros (``pkg/macros/macros.go``, matched by grafana/sqlds
   ``macros.go``: ``\\$__name\\b(?:\\((.*?)\\))?``, arguments split on commas), documented in
   ``docs/sources/query-editor.md`` ("Macros"), the time range in Unix seconds
   (``time.Time.Unix()``)::

       $__timeFilter(c)     c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)
       $__timeFilter_ms(c)  c >= fromUnixTimestamp64Milli(<from ms>) AND c <= fromUnixTimestamp64Milli(<to ms>)
       $__dateFilter(c)     c >= toDate('<from UTC date>') AND c <= toDate('<to UTC date>')
       $__fromTime          toDateTime(<from s>)            ($__toTime: <to s>)
       $__fromTime_ms       fromUnixTimestamp64Milli(<from ms>)
       $__timeInterval(c)   toStartOfInterval(toDateTime(c), INTERVAL <interval s, at least 1> second)
       $__interval_s        <interval s, at least 1>

A variable's options are what Grafana would list: a query variable's SQL run through the same
two steps (with the other variables' current values), a custom variable's comma-separated list.
Choosing a value re-validates every query variable whose query names the chosen one, as Grafana's
dashboards (grafana/scenes) do: ``SceneVariableSet.addDependentVariablesToUpdateQueue``, then
``MultiValueVariable.getStateUpdateGivenNewOptions`` keeps the current value if it is still an
option ("All" too, with ``includeAll``) and else takes the first option.

A Prometheus panel's ``expr`` goes through the same template service with the Prometheus data
source's ``interpolateQueryExpr`` as the default format (grafana/grafana
``packages/grafana-prometheus/src/datasource.ts``, ``applyTemplateVariables``); a format written in
the expression wins over it (``const fmt = fmt2 || fmt3 || format`` in scenes'
``sceneInterpolator.ts`` and grafana's ``template_srv.ts``), and ``raw`` is ``String(value)``
(scenes ``formatRegistry.ts``). Only ``raw`` is emulated there: the dashboards paste values that
ClickHouse made PromQL-ready, never Grafana's escaping of ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

#: grafana public/app/features/variables/utils.ts: variableRegex
VARIABLE: Final = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
ALL: Final = "$__all"

Option = tuple[str, str]  # (value, text)
Runner = Callable[[str], list[tuple[Any, ...]]]


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too, rows left out."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def repeated_row(dashboard: Mapping[str, Any], panel: Mapping[str, Any]) -> str | None:
    """The variable the row holding ``panel`` repeats by, if any."""
    for row in dashboard["panels"]:
        if row["type"] == "row" and any(p is panel for p in row.get("panels", [])):
            return row.get("repeat")
    return None


def _names(text: str) -> set[str]:
    """The variables a text names (what scenes' ``VariableDependencyConfig`` reads from a query)."""
    return {m.group(1) or m.group(2) or m.group(4) for m in VARIABLE.finditer(text)}


def _singlequote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _seconds_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class Grafana:
    """One dashboard open in a browser: the variables' selections, a time range, an interval."""

    dashboard: Mapping[str, Any]
    run: Runner
    start: datetime
    end: datetime
    interval_s: int = 60
    selected: dict[str, str | list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        for name, variable in self.variables.items():
            self.selected.setdefault(name, variable.get("current", {}).get("value", ""))

    # -- variables ----------------------------------------------------------------------------------

    def options(self, name: str) -> list[Option]:
        variable = self.variables[name]
        if variable["type"] == "custom":
            return [(v.strip(), v.strip()) for v in variable["query"].split(",")]
        if variable["type"] == "constant":
            return [(variable["query"], variable["query"])]
        assert variable["type"] == "query", f"variable {name}: type {variable['type']} is not emulated"
        rows = self.run(self.sql(variable["query"]))
        return [(str(r[0]), str(r[-1])) for r in rows]  # one column: value = text; two: value, text

    def select(self, name: str, value: str | list[str]) -> Grafana:
        """What a viewer can pick: an option (or several, or "All"), never free text."""
        variable = self.variables[name]
        if variable["type"] == "constant":  # edited in the dashboard's settings, not by a viewer
            variable["query"] = str(value)
            self.selected[name] = str(value)
            self._update_dependents(name)
            return self
        values = value if isinstance(value, list) else [value]
        if values != [ALL]:
            known = {v for v, _ in self.options(name)}
            assert set(values) <= known, f"{name}: {values} not among the options (allowCustomValue is false)"
        elif not variable.get("includeAll"):
            raise AssertionError(f"{name} has no All option")
        self.selected[name] = values if variable.get("multi") else values[0]
        self._update_dependents(name)
        return self

    def _update_dependents(self, name: str) -> None:
        """Re-validate the query variables whose query names ``name``, and theirs in turn."""
        for dependent in self.variables.values():
            if dependent["type"] == "query" and name in _names(dependent["query"]):
                self._validate(dependent["name"])
                self._update_dependents(dependent["name"])  # unchanged values stay: doing it again changes nothing

    def _validate(self, name: str) -> None:
        """``getStateUpdateGivenNewOptions``: keep the current value(s) still among the options, else the first.

        (Grafana also matches a single value by its text; the dashboards' values are unique, so by value.)
        """
        variable, options = self.variables[name], [v for v, _ in self.options(name)]
        current = self.selected[name]
        values = current if isinstance(current, list) else [current]
        if not options:
            kept = [ALL] if variable.get("includeAll") else []
        elif values == [ALL]:
            kept = [ALL] if variable.get("includeAll") else options[:1]
        else:
            kept = [v for v in values if v in options] or options[:1]
            if not variable.get("multi"):
                kept = kept[:1]
        self.selected[name] = kept if variable.get("multi") else (kept[0] if kept else "")

    def _value(self, name: str, fmt: str | None, scoped: Mapping[str, Option]) -> str | None:  # noqa: PLR0911 - one return per Grafana variable format
        if name in scoped:
            value, text = scoped[name]
            return text if fmt == "text" else self._format([value], fmt, multi=False)
        if name == "__interval":
            return _seconds_text(self.interval_s)
        if name == "__interval_ms":
            return str(self.interval_s * 1000)
        variable = self.variables.get(name)
        if variable is None:
            return None  # not a variable (a macro, or unknown): left as it is
        current = self.selected[name]
        values = current if isinstance(current, list) else [current]
        if values == [ALL]:
            if fmt == "text":
                return "All"
            if variable.get("allValue"):
                return self.interpolate(variable["allValue"], scoped)  # pasted without formatting
            values = [v for v, _ in self.options(name)]
            return self._format(values, fmt, multi=True)
        if fmt == "text":
            texts = dict(self.options(name))
            return " + ".join(texts.get(v, v) for v in values)
        return self._format(values, fmt, multi=isinstance(current, list))

    @staticmethod
    def _format(values: Sequence[str], fmt: str | None, *, multi: bool) -> str:
        if fmt == "singlequote":
            return ",".join(_singlequote(v) for v in values)
        if fmt is None:  # the plugin's `format`: an array quoted and joined (no escaping), a value as it is
            return "'" + "','".join(values) + "'" if multi else values[0]
        if fmt == "raw":
            return ",".join(values)
        raise AssertionError(f"variable format {fmt!r} is not emulated: add it to tests/grafana.py first")

    def interpolate(self, text: str, scoped: Mapping[str, Option] | None = None) -> str:
        """Step 1: Grafana's template service."""
        scope = scoped or {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            fmt = match.group(3) or match.group(6)
            value = self._value(name, fmt, scope)
            return match.group(0) if value is None else value

        return VARIABLE.sub(replace, text)

    # -- macros -------------------------------------------------------------------------------------

    def macros(self, text: str) -> str:
        """Step 2: the ClickHouse plugin's backend macros."""
        start_s, end_s = int(self.start.timestamp()), int(self.end.timestamp())
        start_ms, end_ms = int(self.start.timestamp() * 1000), int(self.end.timestamp() * 1000)
        interval = max(self.interval_s, 1)

        def one_column(args: list[str], name: str) -> str:
            assert len(args) == 1, f"$__{name} takes one argument, got {args}"
            return args[0]

        def day(moment: datetime) -> str:
            return f"toDate('{moment.astimezone(UTC).date().isoformat()}')"

        expansions: dict[str, Callable[[list[str]], str]] = {
            "timeFilter": lambda a: (f"{one_column(a, 'timeFilter')} >= toDateTime({start_s}) AND "
                                     f"{a[0]} <= toDateTime({end_s})"),
            "timeFilter_ms": lambda a: (f"{one_column(a, 'timeFilter_ms')} >= fromUnixTimestamp64Milli({start_ms}) "
                                        f"AND {a[0]} <= fromUnixTimestamp64Milli({end_ms})"),
            "dateFilter": lambda a: f"{one_column(a, 'dateFilter')} >= {day(self.start)} AND {a[0]} <= {day(self.end)}",
            "fromTime": lambda a: f"toDateTime({start_s})",
            "toTime": lambda a: f"toDateTime({end_s})",
            "fromTime_ms": lambda a: f"fromUnixTimestamp64Milli({start_ms})",
            "toTime_ms": lambda a: f"fromUnixTimestamp64Milli({end_ms})",
            "timeInterval": lambda a: (f"toStartOfInterval(toDateTime({one_column(a, 'timeInterval')}), "
                                       f"INTERVAL {interval} second)"),
            "interval_s": lambda a: str(interval),
        }  # fmt: skip
        for name, expand in expansions.items():
            pattern = re.compile(rf"\$__{name}\b(?:\((.*?)\))?")
            while found := pattern.search(text):
                args = [a.strip() for a in found.group(1).split(",")] if found.group(1) is not None else []
                text = text[: found.start()] + expand(args) + text[found.end() :]
        return text

    def promql(self, expr: str) -> str:
        """A panel's PromQL as Prometheus receives it: Grafana's built-ins, variables in the ``raw`` format."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            fmt = match.group(3) or match.group(6)
            if name in PROMQL_BUILTINS:
                return PROMQL_BUILTINS[name]
            if name not in self.variables:
                return match.group(0)  # not a variable: Prometheus will refuse it, and promtool says so
            assert fmt == "raw", (f"${{{name}}} in PromQL without the raw format: the Prometheus data source's own "
                                  f"escaping (interpolateQueryExpr) is not emulated: {expr}")  # fmt: skip
            current = self.selected[name]
            assert current not in (ALL, [ALL]), f"{name}: a custom all value in PromQL is not emulated"
            return ",".join(current) if isinstance(current, list) else current  # String(value) of JS

        return VARIABLE.sub(replace, expr)

    def sql(self, raw: str, scoped: Mapping[str, Option] | None = None) -> str:
        """What ClickHouse receives for ``raw``; fails on anything Grafana would leave unexpanded."""
        text = self.macros(self.interpolate(raw, scoped))
        left = re.findall(r"\$\{?\w+|\[\[\w+", text)
        assert not left, f"left unexpanded (not a variable or macro Grafana knows): {left}\n{text}"
        return text

    def query(self, raw: str, scoped: Mapping[str, Option] | None = None) -> list[tuple[Any, ...]]:
        return self.run(self.sql(raw, scoped))


# -- Prometheus -----------------------------------------------------------------------------------------

#: Grafana's interval variables in PromQL (``$__rate_interval`` is at least four scrape intervals).
PROMQL_BUILTINS: Final = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}


_PROMQL_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
     "inf", "nan", "Inf", "NaN"}
)  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a (substituted) PromQL expression selects.

    Strings, label matchers ``{...}``, ranges ``[...]`` and grouping labels ``by (...)`` are
    dropped first; what remains is functions (followed by ``(``), keywords, numbers and names.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if found.group() in _PROMQL_KEYWORDS or text[found.end() :].lstrip().startswith("("):
            continue
        names.add(found.group())
    return names


# -- label matchers, as Prometheus reads and applies them ------------------------------------------------------

_STRING: Final = r'"(?:\\.|[^"\\\n])*"'
_MATCHER: Final = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STRING})\s*,?")
_SELECTOR: Final = re.compile(rf'([A-Za-z_:][\w:]*)\s*\{{((?:[^{{}}"]|{_STRING})*)\}}')
_ESCAPES: Final = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}

Matcher = tuple[str, str, str]  # label, operator, value (unquoted)


class Selector(NamedTuple):
    metric: str
    matchers: list[Matcher]
    text: str  # as written: ``metric{...}``


def promql_selectors(expr: str) -> list[Selector]:
    """The ``metric{label op "value", ...}`` selectors of a (substituted) expression, their values unquoted."""
    out = []
    for selector in _SELECTOR.finditer(expr):
        body = selector.group(2)
        assert not _MATCHER.sub("", body).strip(), f"not a list of label matchers: {{{body}}}"
        matchers = [(m[1], m[2], promql_unquote(m[3])) for m in _MATCHER.finditer(body)]
        out.append(Selector(selector.group(1), matchers, selector.group(0)))
    return out


def promql_unquote(literal: str) -> str:
    """A double-quoted PromQL string's value: Go's escapes (``\\n``, ``\\\\``, ``\\"``, ``\\xHH`` a byte...).

    Prometheus's lexer accepts these and no other (promql/parser/lex.go ``lexEscape``: "unknown
    escape sequence"); octal escapes are left out (the dashboards write none).
    """
    assert len(literal) >= 2, literal
    assert literal[0] == literal[-1] == '"', literal
    out, text, i = bytearray(), literal[1:-1], 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind in _ESCAPES:
            out += _ESCAPES[kind].encode()
            i += 2
        elif kind in "xuU":
            digits = {"x": 2, "u": 4, "U": 8}[kind]
            code = int(text[i + 2 : i + 2 + digits], 16)
            out += bytes([code]) if kind == "x" else chr(code).encode()
            i += 2 + digits
        else:
            raise ValueError(f"unknown escape sequence \\{kind} in {literal}")
    return out.decode()


def promql_selects(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    """Whether a series with ``labels`` matches every matcher; a missing label is the empty string.

    A regex matcher matches the whole value (Prometheus anchors it: ``^(?:re)$``); Python's ``re``
    reads what the dashboards write (literals, ``\\xHH``, ``|``, ``(?s:.*)``) as Go's RE2 does.
    """

    def one(label: str, op: str, value: str) -> bool:
        actual = labels.get(label, "")
        if op in ("=", "!="):
            return (actual == value) == (op == "=")
        return (re.fullmatch(f"(?:{value})", actual) is not None) == (op == "=~")

    return all(one(*m) for m in matchers)
