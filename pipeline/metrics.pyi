"""Transitional alias: types of ``pipeline.metrics``, now ``pipeline.infra.metrics`` (pipeline/infra/moved.py)."""

from pipeline.infra.metrics import CONSUMER_LAG as CONSUMER_LAG
