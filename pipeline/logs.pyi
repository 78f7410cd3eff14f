"""Transitional alias: types of ``pipeline.logs``, now ``pipeline.infra.logs`` (pipeline/infra/moved.py)."""

from pipeline.infra.logs import fields as fields
