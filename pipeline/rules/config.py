"""Parameters of the billing rules: one immutable object shared by the stream and `compute`."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR

SESSION_LENGTH_MS: Final = 15 * MINUTE
MIN_IDLE_TIMEOUT_MS: Final = 5 * MINUTE
MAX_IDLE_TIMEOUT_MS: Final = 14 * DAY
VOICE_CHANNELS: Final = frozenset({"voice", "ivr"})


class RulesConfigError(ValueError):
    """A rules parameter is outside what the billing rules allow."""


def check_idle_timeout(ms: int, where: str) -> int:
    if not MIN_IDLE_TIMEOUT_MS <= ms <= MAX_IDLE_TIMEOUT_MS:
        raise RulesConfigError(f"{where}: idle timeout {ms / MINUTE:g} min is outside 5 min .. 14 days (20160 min)")
    return ms


@dataclass(frozen=True)
class RulesConfig:
    """R1-R9 parameters.

    ``open_transfer_timeout_ms`` bounds R2's "an open transfer never times out": a transfer
    with no event of its conversation for that long is abandoned, so no session stays
    unbilled forever. ``dedupe_horizon_ms`` is how long (event time) the ids of a final
    conversation session are kept to recognise replays as duplicates rather than late events.
    """

    idle_timeout_ms: int = 15 * MINUTE
    app_idle_timeout_ms: Mapping[str, int] = field(default_factory=dict)
    allowed_lateness_ms: int = MINUTE
    open_transfer_timeout_ms: int = DAY
    dedupe_horizon_ms: int = 7 * DAY

    def __post_init__(self) -> None:
        check_idle_timeout(self.idle_timeout_ms, "idle timeout")
        for app, ms in self.app_idle_timeout_ms.items():
            check_idle_timeout(ms, f"idle timeout of app {app!r}")
        if self.allowed_lateness_ms < 0:
            raise RulesConfigError("allowed lateness must not be negative")
        if self.open_transfer_timeout_ms < MIN_IDLE_TIMEOUT_MS:
            raise RulesConfigError("open transfer timeout must be at least 5 minutes")
        if self.dedupe_horizon_ms < 0:
            raise RulesConfigError("dedupe horizon must not be negative")


class IdleTimeouts:
    """The idle timeout in force for an app at an instant: configuration, then plan changes.

    A conversation session uses the timeout in force at its start, so a plan change never
    reshapes a session that began before it.
    """

    __slots__ = ("_changes", "_default", "_static")

    def __init__(self, config: RulesConfig) -> None:
        self._default = config.idle_timeout_ms
        self._static: dict[str, int] = dict(config.app_idle_timeout_ms)
        self._changes: dict[str, tuple[list[int], list[int | None], list[str]]] = {}

    def plan_changed(self, app_id: str, at_ms: int, timeout_ms: int | None, event_id: str = "") -> None:
        """Record a plan's idle timeout (None: back to the configured one) from ``at_ms`` on.

        Of two plans stamped with the same millisecond the one with the greater ``event_id`` is
        in force, whatever their arrival order (as for prices, pipeline/balance/plans.py).
        """
        if timeout_ms is not None:
            check_idle_timeout(timeout_ms, f"plan of app {app_id!r}")
        times, values, ids = self._changes.setdefault(app_id, ([], [], []))
        i = bisect_right(times, at_ms)
        if i and times[i - 1] == at_ms:
            if event_id >= ids[i - 1]:
                values[i - 1] = timeout_ms
                ids[i - 1] = event_id
        else:
            times.insert(i, at_ms)
            values.insert(i, timeout_ms)
            ids.insert(i, event_id)

    def at(self, app_id: str, t: int) -> int:
        changes = self._changes.get(app_id)
        if changes is not None:
            times, values, _ = changes
            i = bisect_right(times, t)
            if i:
                value = values[i - 1]
                if value is not None:
                    return value
        return self._static.get(app_id, self._default)

    def minimum(self, app_id: str) -> int:
        """A lower bound of the app's timeout at any instant (schedules finalization early, never late)."""
        base = self._static.get(app_id, self._default)
        changes = self._changes.get(app_id)
        if changes is None:
            return base
        return min([base, *(v for v in changes[1] if v is not None)])
