"""How a settings section is read from the environment and written back: one declaration, both ways.

A section is a frozen dataclass whose fields carry a :class:`Var` (the variable) and a pydantic
validator made by :func:`parsed` (its rule). Pydantic validates all of a section's variables at
once, so one error names every wrong one; ``section_env`` is the inverse, for child processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar, get_type_hints

from pydantic import BeforeValidator, TypeAdapter, ValidationError

__all__ = ["Var", "WholeMessage", "parsed", "read_section", "section_env"]

S = TypeVar("S")


class WholeMessage(ValueError):
    """A rule's message that is the whole line (it names the variable itself, never a secret's value)."""


@dataclass(frozen=True)
class Var:
    """Field metadata: the variable after its section's prefix (default: the field's name), written back by ``text``."""

    name: str = ""
    text: Callable[[Any], str] = str
    omit_empty: bool = False


def parsed(parse: Callable[[str], object]) -> BeforeValidator:
    """Parse a variable's text with ``parse``, whose ``ValueError`` states the rule."""

    def validate(value: object) -> object:
        return parse(value) if isinstance(value, str) else value

    return BeforeValidator(validate)


def read_section(cls: type[S], prefix: str, env: Mapping[str, str]) -> tuple[S, list[str]]:
    """The section from its variables (blank or unset: the default), and one message per wrong variable."""
    names = {field: prefix + var.name for field, var in _variables(cls).items()}
    given = {field: env[name].strip() for field, name in names.items() if env.get(name, "").strip()}
    try:
        section: S = _adapter(cls).validate_python(given)
    except ValidationError as exc:
        return cls(), [_message(error, names, env) for error in exc.errors()]
    return section, []


def section_env(section: object, prefix: str) -> dict[str, str]:
    """The variables that give ``section``: the inverse of :func:`read_section`."""
    env: dict[str, str] = {}
    for name, var in _variables(type(section)).items():
        text = var.text(getattr(section, name))
        if text or not var.omit_empty:
            env[prefix + var.name] = text
    return env


_VARIABLES: dict[type, dict[str, Var]] = {}
_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _variables(cls: type) -> dict[str, Var]:
    """The section's fields that have a variable, by field name, with the variable's name filled in."""
    if cls not in _VARIABLES:
        hints = get_type_hints(cls, include_extras=True)
        _VARIABLES[cls] = {
            f.name: replace(meta, name=meta.name or f.name.upper())
            for f in dataclasses.fields(cls)
            for meta in getattr(hints[f.name], "__metadata__", ())
            if isinstance(meta, Var)
        }
    return _VARIABLES[cls]


def _adapter(cls: type) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def _message(error: Any, names: Mapping[str, str], env: Mapping[str, str]) -> str:
    cause = error.get("ctx", {}).get("error")
    rule = str(cause) if cause is not None else error["msg"]
    if isinstance(cause, WholeMessage) or not error["loc"]:
        return rule
    name = names[str(error["loc"][0])]
    return f"{name}={env[name]!r}: {rule}"
