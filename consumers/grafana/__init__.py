"""The Grafana dashboards, generated: ``make dashboards`` writes ``deploy/grafana/dashboards/*.json``.

Generated so that the dashboards' ClickHouse panels run the product's SQL (``sql/queries``, the
queries of `metering usage` and `metering plans`) rather than a copy that drifts: a test fails
while a committed file differs from what this package makes of the current queries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from consumers.grafana.balances import balances_dashboard
from consumers.grafana.usage import usage_dashboard

__all__ = ["DASHBOARDS", "render", "write"]

#: File name under deploy/grafana/dashboards -> the dashboard.
DASHBOARDS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "metering.json": usage_dashboard,
    "metering-balances.json": balances_dashboard,
}


def render(name: str) -> str:
    """The text of one dashboard file, as committed."""
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every dashboard into ``directory``; returns the files that changed."""
    changed = []
    for name in DASHBOARDS:
        path = directory / name
        text = render(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed
