"""Transitional alias: types of ``pipeline.events``, now ``pipeline.contract.events`` (pipeline/infra/moved.py)."""

from pipeline.contract.events import DEFAULT_TOPIC_OF_TYPE as DEFAULT_TOPIC_OF_TYPE
from pipeline.contract.events import MAX_FUTURE_MS as MAX_FUTURE_MS
from pipeline.contract.events import PlanChanged as PlanChanged
from pipeline.contract.events import Rejection as Rejection
from pipeline.contract.events import format_ms as format_ms
