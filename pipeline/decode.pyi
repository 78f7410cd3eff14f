"""Transitional alias: types of ``pipeline.decode``, now ``pipeline.contract.decode`` (pipeline/infra/moved.py)."""

from pipeline.contract.decode import decode_event as decode_event
