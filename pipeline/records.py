"""Transitional alias: ``pipeline.records`` moved to ``pipeline.stream.records``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.stream import records as _moved
from pipeline.stream.records import billing_session_record

__all__ = ["billing_session_record"]

sys.modules[__name__] = _moved
