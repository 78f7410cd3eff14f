"""Transitional alias: ``pipeline.decode`` moved to ``pipeline.contract.decode``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.contract import decode as _moved
from pipeline.contract.decode import decode_event

__all__ = ["decode_event"]

sys.modules[__name__] = _moved
