"""Transitional alias: ``pipeline.events`` moved to ``pipeline.contract.events``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.contract import events as _moved
from pipeline.contract.events import DEFAULT_TOPIC_OF_TYPE, MAX_FUTURE_MS, PlanChanged, Rejection, format_ms

__all__ = ["DEFAULT_TOPIC_OF_TYPE", "MAX_FUTURE_MS", "PlanChanged", "Rejection", "format_ms"]

sys.modules[__name__] = _moved
