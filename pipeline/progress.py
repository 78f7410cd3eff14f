"""Transitional alias: ``pipeline.progress`` moved to ``pipeline.infra.progress``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.infra import progress as _moved
from pipeline.infra.progress import FileProgress, OnProgress

__all__ = ["FileProgress", "OnProgress"]

sys.modules[__name__] = _moved
