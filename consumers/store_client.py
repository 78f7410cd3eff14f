"""Transitional alias: ``consumers.store_client`` moved to ``cli.store_client``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from cli import store_client as _moved
from cli.store_client import StoreClient, StoreHttpError, StoreUnreachableError

__all__ = ["StoreClient", "StoreHttpError", "StoreUnreachableError"]

sys.modules[__name__] = _moved
