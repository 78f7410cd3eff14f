"""Transitional alias: ``pipeline.metrics`` moved to ``pipeline.infra.metrics``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.infra import metrics as _moved
from pipeline.infra.metrics import CONSUMER_LAG

__all__ = ["CONSUMER_LAG"]

sys.modules[__name__] = _moved
