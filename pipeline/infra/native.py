"""The rules engine compiled with mypyc: the same Python source, run as a C extension.

`metering compute` and the stream workers spend their time in the rules engine; mypyc compiles
those plain, typed modules into one extension (``make setup`` runs ``build()``).
The Python source stays the definition: without a build, or with ``METERING_INTERPRETED=1``,
everything runs interpreted with the same results. A build records the hash of each source it
compiled; when a source has changed since, the build is out of date and is not used at all
(a stale extension would silently run old rules), so an edit takes effect at once, interpreted,
until the next ``make setup``.

Written for the compiler where it pays: state as plain classes (their fields become C reads),
imported classes and constants bound to a module's ``Final`` names (a C global instead of a dict
lookup at each use), direct calls rather than bound methods kept in variables.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

#: The modules compiled together. Each must keep type-checking under mypy --strict.
MODULES: Final = (
    "pipeline.contract.decode",
    "pipeline.contract.partitioner",
    "pipeline.rules.config",
    "pipeline.rules.model",
    "pipeline.rules.segmentation",
    "pipeline.rules.billing",
    "pipeline.rules.attribution",
    "pipeline.rules.meter",
    "pipeline.rules.agent_book",
    "pipeline.compute",
    "pipeline.stream.partition",
)
#: The project's modules they import: mypyc builds their types and constants into the extension,
#: so a change there makes a build out of date too (a test keeps this list complete).
DEPENDS: Final = (
    "pipeline.contract.events",
    "pipeline.rules.agents",
    "pipeline.balance.plans",
    "pipeline.infra.progress",
    "pipeline.infra.report",
    "pipeline.stream.records",
    "pipeline.runtime.processor",
)
GROUP: Final = "pipeline.infra.native"
INTERPRETED_ENV: Final = "METERING_INTERPRETED"

ROOT: Final = Path(__file__).resolve().parents[2]
MANIFEST: Final = ROOT / "pipeline" / "native-build.json"

log = logging.getLogger(__name__)


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def fingerprint(root: Path = ROOT, modules: Sequence[str] = (*MODULES, *DEPENDS)) -> dict[str, str]:
    """SHA-256 of each module's source, plus the interpreter the build is for."""
    prints = {m: hashlib.sha256(source_of(m, root).read_bytes()).hexdigest() for m in modules}
    prints["python"] = sys.implementation.cache_tag or ""
    return prints


def stale(manifest: Path = MANIFEST, root: Path = ROOT, modules: Sequence[str] = (*MODULES, *DEPENDS)) -> list[str]:
    """What differs between the build recorded in ``manifest`` and the sources now (empty: up to date)."""
    try:
        built: dict[str, str] = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return ["no build"]
    now = fingerprint(root, modules)
    return [name for name in sorted(set(now) | set(built)) if now.get(name) != built.get(name)]


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the engine modules from their ``.py`` files even where a compiled extension sits beside them."""

    def __init__(self, modules: Sequence[str], root: Path) -> None:
        self.paths = {m: source_of(m, root) for m in modules}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.paths.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def choose(
    root: Path = ROOT,
    modules: Sequence[str] = MODULES,
    *,
    depends: Sequence[str] = DEPENDS,
    meta_path: list[Any] = sys.meta_path,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """Use the compiled engine if its build matches the sources, else the source; returns which.

    Runs when ``pipeline`` is imported, before any engine module is.
    """
    manifest = root / MANIFEST.relative_to(ROOT)
    if not any(manifest.parent.rglob("native__mypyc*")):
        return "interpreted"
    if environ.get(INTERPRETED_ENV, "") not in ("", "0"):
        meta_path.insert(0, _SourceFirst(modules, root))
        return "interpreted"
    changed = stale(manifest, root, (*modules, *depends))
    if changed:
        meta_path.insert(0, _SourceFirst(modules, root))
        log.warning(
            "the compiled rules engine is out of date (%s changed): running it interpreted; "
            "`make setup` compiles it again",
            ", ".join(changed),
        )
        return "interpreted"
    return "compiled"


def is_compiled(module: ModuleType) -> bool:
    return not str(getattr(module, "__file__", "")).endswith(".py")


def build() -> int:
    """Compile ``MODULES`` in place with mypyc and record what was compiled; a no-op when up to date."""
    if not stale():
        print("pipeline.infra.native: compiled rules engine is up to date")
        return 0
    # Build tools are test extras: a runtime without them must still import this module.
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import setup  # type: ignore[import-untyped]  # noqa: PLC0415

    for old in MANIFEST.parent.rglob("*.so"):  # the whole package: a moved module leaves its old build
        old.unlink()
    MANIFEST.unlink(missing_ok=True)
    prints = fingerprint()
    os.chdir(ROOT)
    setup(
        name="metering-native",
        ext_modules=mypycify([str(source_of(m).relative_to(ROOT)) for m in MODULES], group_name=GROUP, opt_level="3"),
        script_args=["build_ext", "--inplace", "--quiet"],
    )
    MANIFEST.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"pipeline.infra.native: compiled {len(MODULES)} modules with mypyc")
    return 0
