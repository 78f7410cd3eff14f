"""Transitional alias: ``pipeline.logs`` moved to ``pipeline.infra.logs``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.infra import logs as _moved
from pipeline.infra.logs import fields

__all__ = ["fields"]

sys.modules[__name__] = _moved
