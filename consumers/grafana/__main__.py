"""``python -m consumers.grafana [DIRECTORY]``: write the dashboards (``make dashboards``)."""

from __future__ import annotations

import sys
from pathlib import Path

from consumers.grafana import write

DEFAULT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"

if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    changed = write(directory)
    print("\n".join(f"wrote {path}" for path in changed) or f"{directory}: up to date")
