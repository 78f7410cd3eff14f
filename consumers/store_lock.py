"""Transitional alias: ``consumers.store_lock`` moved to ``cli.store_lock``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from cli import store_lock as _moved
from cli.store_lock import ReaderHold

__all__ = ["ReaderHold"]

sys.modules[__name__] = _moved
