"""The event contract as JSON Schema files, with a loader so tests and producers can check payloads offline.

jsonschema and referencing are test-time dependencies only, so they are imported inside the functions.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    from referencing import Registry

__all__ = ["SchemaValidator", "load", "names", "registry", "validator"]

DEFAULT_VERSION = "v1"

# RFC 3339 date-time (with `t`/`z` allowed in lower case, as the RFC permits); calendar checks follow.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})", re.ASCII
)


class SchemaValidator(Protocol):
    """The part of ``jsonschema.Draft202012Validator`` that callers use."""

    def is_valid(self, instance: object) -> bool: ...

    def validate(self, instance: object) -> None: ...

    def iter_errors(self, instance: object) -> Iterator[Any]: ...


def names(version: str = DEFAULT_VERSION) -> list[str]:
    """Names (file stems) of every schema of ``version``, sorted."""
    folder = files(__name__).joinpath(version)
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if entry.name.endswith(".json"))


def load(name: str, version: str = DEFAULT_VERSION) -> dict[str, Any]:
    """The schema ``name`` (e.g. ``"conversation_turn"``) of ``version`` as a fresh dict."""
    text = files(__name__).joinpath(version, f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _versions() -> list[str]:
    return sorted(entry.name for entry in files(__name__).iterdir() if re.fullmatch(r"v[0-9]+", entry.name))


@functools.cache
def registry() -> Registry[Any]:
    """Every schema of every version, keyed by its ``$id``, so ``$ref``s resolve without the network."""
    from referencing import Registry  # noqa: PLC0415
    from referencing.jsonschema import DRAFT202012  # noqa: PLC0415

    schemas = [load(name, version) for version in _versions() for name in names(version)]
    return Registry().with_resources((schema["$id"], DRAFT202012.create_resource(schema)) for schema in schemas)


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _DATE_TIME.fullmatch(instance):
        return False
    datetime.fromisoformat(instance.upper())  # ValueError for 2026-02-30, hour 24, offset 24:00, ...
    return True


def validator(name: str, version: str = DEFAULT_VERSION) -> SchemaValidator:
    """A draft 2020-12 validator for schema ``name`` that also checks ``format`` (date-time included)."""
    from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]  # noqa: PLC0415

    # jsonschema checks "date-time" only if the optional rfc3339-validator is installed: check it here always.
    format_checker = FormatChecker()
    format_checker.checks("date-time", raises=ValueError)(_is_date_time)
    checker: SchemaValidator = Draft202012Validator(
        load(name, version), registry=registry(), format_checker=format_checker
    )
    return checker
