"""Transitional alias: types of ``consumers.store_lock``, now ``cli.store_lock`` (pipeline/infra/moved.py)."""

from cli.store_lock import ReaderHold as ReaderHold
