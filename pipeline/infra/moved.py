"""Transitional alias: the old paths of moved modules, for the files other branches rewrite; delete at the merge.

``pipeline/settings.py``, ``pipeline/reconcile.py`` and ``pipeline/runtime/engine.py`` are being rewritten
on other branches, so they keep importing modules by their paths before the layout moves until the merge,
where ``layout-moves.py`` rewrites them. Until then an import of an old path gets the moved module itself
(one module object: its state, its metrics, what tests patch). No file sits at an old path, so git follows
each move as a rename.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Final

#: old module -> its new place (the files above import these old paths).
MOVED: Final = {
    "pipeline.events": "pipeline.contract.events",
    "pipeline.decode": "pipeline.contract.decode",
    "pipeline.kafka": "pipeline.infra.kafka",
    "pipeline.logs": "pipeline.infra.logs",
    "pipeline.metrics": "pipeline.infra.metrics",
    "pipeline.progress": "pipeline.infra.progress",
    "pipeline.records": "pipeline.stream.records",
    "pipeline.report": "pipeline.infra.report",
    "consumers.store_client": "cli.store_client",
    "consumers.store_lock": "cli.store_lock",
    "consumers.usage_command": "cli.usage_command",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec on it: the module keeps its own


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Let the old paths import (after every real finder: a file at an old path would win)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
