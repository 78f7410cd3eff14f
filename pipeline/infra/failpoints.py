"""Named points where tests make a process fail on purpose; inert unless METERING_FAILPOINTS names them.

The fault-injection tests (``tests/faults``) start real processes with, for example::

    METERING_FAILPOINTS="sink.after_insert=kill@3"    # SIGKILL this process at the 3rd hit
    METERING_FAILPOINTS="sink.insert=fail:20"         # fail there for 20 s from the first hit

``name=action`` pairs are separated by ``;``. Actions:

- ``kill`` or ``kill@N``: the process sends itself SIGKILL at the first (N-th) hit, as a
  crash would: no ``finally``, no flush, no commit.
- ``fail:S`` or ``fail:S@N``: every hit raises, from the first (N-th) hit for ``S`` seconds,
  then the point is inert again. The caller says what to raise (the error its real
  dependency raises when it is down); :class:`FailpointError` otherwise.

The variable is read once, at the first :func:`hit`; a malformed value raises ``ValueError``
there, naming the variable, so a typo cannot silently disable a test's fault. Without the
variable, :func:`hit` is a dictionary lookup.

Points: ``sink.insert`` (before each ClickHouse insert of any sink of the process: an outage
hits them all), ``sink.after_insert`` (after a billing-sessions batch is written to ClickHouse,
before its offsets are committed; ``plan_sink.after_insert`` for the plan sinks),
``counts.recount`` (after sessions or voids are written, before their usage counts are recounted:
``consumers/clickhouse/counts.py``; failing raises a transient ClickHouse write error),
``counts.account_sum`` (after those counts, before their sums per account; likewise),
``worker.before_commit``, ``balance.before_commit`` and ``orders.before_commit``
(pipeline/runtime/transactions.py: a batch's outputs, changelog records and offsets are in its
transaction, not yet committed; failing aborts the transaction, as a broker error would, and
``kill`` crashes with it open).
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
