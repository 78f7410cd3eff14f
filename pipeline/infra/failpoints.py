"""Named points where tests make a process fail on purpose; inert unless METERING_FAILPOINTS names them.

The fault-injection tests (``tests/faults``) start real processes with, e.g.,
``METERING_FAILPOINTS="sink.after_insert=kill@3"``. Syntax, actions and the list of points: docs/failpoints.md.
Without the variable, :func:`hit` is a dictionary lookup; a malformed value raises at the first hit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ENV", "FailpointError", "hit", "parse"]

ENV: Final = "METERING_FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised by a ``fail`` point whose caller gave no error of its own."""


@dataclass(slots=True)
class _Point:
    action: Literal["kill", "fail"]
    at_hit: int = 1
    seconds: float = 0.0
    hits: int = 0
    failing_until: float | None = None


_points: dict[str, _Point] | None = None
_lock: Final = threading.Lock()


def parse(spec: str) -> dict[str, _Point]:
    """``name=action;...`` as the module docstring says; ``ValueError`` naming what is wrong."""
    points: dict[str, _Point] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, action = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise ValueError(f"{ENV}: {item!r} is not name=action")
        action, _, at = action.partition("@")
        try:
            at_hit = int(at) if at else 1
            if at_hit < 1:
                raise ValueError
            if action == "kill":
                points[name] = _Point("kill", at_hit)
            elif action.startswith("fail:") and float(action[5:]) > 0:
                points[name] = _Point("fail", at_hit, seconds=float(action[5:]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{ENV}: {item!r}: the action is kill, kill@N, fail:SECONDS or fail:SECONDS@N (N >= 1)"
            ) from None
    return points


def _configured(env: Mapping[str, str]) -> dict[str, _Point]:
    global _points  # noqa: PLW0603 - read once per process, by design
    if _points is None:
        with _lock:
            if _points is None:
                _points = parse(env.get(ENV, ""))
    return _points


def hit(name: str, fail: Callable[[str], Exception] = FailpointError) -> None:
    """Pass the point ``name``: nothing happens unless METERING_FAILPOINTS arms it."""
    point = _configured(os.environ).get(name)
    if point is None:
        return
    with _lock:
        point.hits += 1
        now = time.monotonic()
        if point.hits == point.at_hit:
            if point.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            point.failing_until = now + point.seconds
        failing = point.failing_until is not None and now < point.failing_until
    if failing:
        raise fail(f"failpoint {name} ({ENV}): failing on purpose, hit {point.hits}")
