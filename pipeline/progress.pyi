"""Transitional alias: types of ``pipeline.progress``, now ``pipeline.infra.progress`` (pipeline/infra/moved.py)."""

from pipeline.infra.progress import FileProgress as FileProgress
from pipeline.infra.progress import OnProgress as OnProgress
