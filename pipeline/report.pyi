"""Transitional alias: types of ``pipeline.report``, now ``pipeline.infra.report`` (pipeline/infra/moved.py)."""

from pipeline.infra.report import Format as Format
from pipeline.infra.report import render as render
