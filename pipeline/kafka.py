"""Transitional alias: ``pipeline.kafka`` moved to ``pipeline.infra.kafka``; delete it at the merge.

Kept only for files another branch rewrites meanwhile (``pipeline/settings.py``, ``pipeline/reconcile.py``,
``pipeline/runtime/engine.py``); ``layout-moves.py`` rewrites their imports, then this file goes.
"""

import sys

from pipeline.infra import kafka as _moved
from pipeline.infra.kafka import KafkaSetupError, admin, consumer_config

__all__ = ["KafkaSetupError", "admin", "consumer_config"]

sys.modules[__name__] = _moved
