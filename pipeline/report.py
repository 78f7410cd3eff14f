"""Transitional alias: ``pipeline.report`` moved to ``pipeline.infra.report``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.infra import report as _moved
from pipeline.infra.report import Format, render

__all__ = ["Format", "render"]

sys.modules[__name__] = _moved
