"""Transitional alias: ``consumers.usage_command`` moved to ``cli.usage_command``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from cli import usage_command as _moved
from cli.usage_command import OnWait, StoreBusyError, open_client, reach_store, store_client

__all__ = ["OnWait", "StoreBusyError", "open_client", "reach_store", "store_client"]

sys.modules[__name__] = _moved
