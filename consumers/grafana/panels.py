"""Grafana dashboard JSON (schema 39) from a few builders: panels, targets, rows and their layout.

Panels name their data sources through the dashboard's data source variables (``${clickhouse}``,
``${prometheus}``), so the same file works provisioned next to ``deploy/docker-compose.yml`` and
imported into a Grafana whose data sources have other uids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "CLICKHOUSE",
    "PROMETHEUS",
    "Panel",
    "clickhouse",
    "dashboard",
    "promql",
    "row",
    "stat",
    "table",
    "timeseries",
]

Panel = dict[str, Any]

CLICKHOUSE: Final = {"type": "grafana-clickhouse-datasource", "uid": "${clickhouse}"}
PROMETHEUS: Final = {"type": "prometheus", "uid": "${prometheus}"}
_WIDTH: Final = 24


def promql(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend, "range": True}


def clickhouse(sql: str, *, table: bool) -> dict[str, Any]:
    """A raw-SQL target of the ClickHouse plugin: a table, or a time series (a ``time`` column)."""
    return {
        "datasource": CLICKHOUSE,
        "editorType": "sql",
        "queryType": "table" if table else "timeSeries",
        "format": 1 if table else 0,
        "rawSql": sql,
    }


def _panel(kind: str, title: str, description: str, targets: Sequence[dict[str, Any]], *, w: int, h: int) -> Panel:
    (source,) = {t["datasource"]["uid"] for t in targets}  # a panel runs all its queries on one data source
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": next(t["datasource"] for t in targets if t["datasource"]["uid"] == source),
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "targets": [{"refId": chr(ord("A") + i), **t} for i, t in enumerate(targets)],
    }


def timeseries(
    title: str,
    description: str,
    targets: Sequence[dict[str, Any]],
    *,
    unit: str = "short",
    stacked: bool = False,
    bars: bool = False,
    w: int = 12,
    h: int = 8,
) -> Panel:
    panel = _panel("timeseries", title, description, targets, w=w, h=h)
    panel["fieldConfig"] = {
        "defaults": {
            "unit": unit,
            "min": 0,
            "custom": {
                "drawStyle": "bars" if bars else "line",
                "lineWidth": 1,
                "fillOpacity": 60 if bars else 10,
                "showPoints": "never",
                "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
            },
        },
        "overrides": [],
    }
    panel["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


def table(
    title: str,
    description: str,
    targets: Sequence[dict[str, Any]],
    *,
    w: int = 24,
    h: int = 10,
    footer: bool = False,
    overrides: Sequence[dict[str, Any]] = (),
) -> Panel:
    panel = _panel("table", title, description, targets, w=w, h=h)
    panel["fieldConfig"] = {"defaults": {"unit": "short"}, "overrides": list(overrides)}
    panel["options"] = {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": footer, "reducer": ["sum"], "fields": ""},
    }
    return panel


def stat(
    title: str, description: str, targets: Sequence[dict[str, Any]], *, w: int = 6, h: int = 8, rows: bool = False
) -> Panel:
    """The last value of each series; with ``rows``, one value per row of a table (named by its text)."""
    panel = _panel("stat", title, description, targets, w=w, h=h)
    panel["fieldConfig"] = {"defaults": {"unit": "short"}, "overrides": []}
    panel["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": rows},
        "colorMode": "value",
        "graphMode": "none",
        "textMode": "value_and_name",
    }
    return panel


def row(title: str, panels: Sequence[Panel], *, collapsed: bool = False, repeat: str | None = None) -> Panel:
    """A row and the panels under it; a repeated row is drawn once per value of ``repeat``."""
    out: Panel = {
        "type": "row",
        "title": title,
        "collapsed": collapsed,
        "gridPos": {"h": 1, "w": _WIDTH, "x": 0, "y": 0},
        "panels": list(panels),
    }
    if repeat:
        out["repeat"] = repeat
    return out


def _layout(rows: Sequence[Panel]) -> list[Panel]:
    """Ids and grid positions: panels left to right, a new line when the next does not fit.

    An expanded row's panels follow it at the top level (Grafana's model); a collapsed row keeps
    them in its ``panels`` and takes one line.
    """
    out: list[Panel] = []
    next_id = 1
    y = 0
    for r in rows:
        r["id"] = next_id
        next_id += 1
        r["gridPos"]["y"] = y
        y += 1
        top = y
        placed: list[Panel] = []
        x, line_height = 0, 0
        for panel in r["panels"]:
            w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if x + w > _WIDTH:
                y, x, line_height = y + line_height, 0, 0
            panel["id"] = next_id
            next_id += 1
            panel["gridPos"].update(x=x, y=y)
            x, line_height = x + w, max(line_height, h)
            placed.append(panel)
        y += line_height
        if r["collapsed"]:
            r["panels"] = placed
            y = top  # the content of a collapsed row is not drawn: the next row follows at once
            out.append(r)
        else:
            r["panels"] = []
            out.extend([r, *placed])
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[dict[str, Any]],
    rows: Sequence[Panel],
    *,
    time_from: str = "now-24h",
) -> dict[str, Any]:
    """A dashboard tagged ``metering``, linking to the others of the tag."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["metering"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "templating": {"list": list(variables)},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["metering"], "title": "Metering dashboards", "asDropdown": True}],
        "panels": _layout(rows),
    }
