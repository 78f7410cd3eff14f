"""The Prometheus series the metering processes export, read from the metrics they register.

Every process serves the default ``prometheus_client`` registry (``pipeline.infra.metrics.serve``; the
entitlement endpoint's ``/metrics`` is ``generate_latest()``), and a metric is registered there
when the module defining it is imported. So every module of the project's packages (those
``pyproject.toml`` ships) is imported, and the registry's families are read back with the
series names Prometheus stores: ``_total`` for counters, ``_bucket``/``_sum``/``_count`` for
histograms. A metric added in any module shows up without a list to keep.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from functools import cache
from pathlib import Path

from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def project_packages() -> list[str]:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.rstrip("*") for p in patterns if (ROOT / p.rstrip("*") / "__init__.py").exists())


@cache
def exported_series() -> frozenset[str]:
    for name in project_packages():
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if module.name.endswith("__main__"):  # running a package's main is not importing it
                continue
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as exc:  # an optional extra (rocksdict): its metrics, if any, go missing
                if exc.name is None or exc.name.split(".")[0] in project_packages():
                    raise
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return frozenset(names)
