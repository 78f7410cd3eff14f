"""Transitional alias: types of ``pipeline.records``, now ``pipeline.stream.records`` (pipeline/infra/moved.py)."""

from pipeline.stream.records import billing_session_record as billing_session_record
