"""The one retry helper: bounded, with backoff, only for errors known to be transient.

Built on tenacity. :class:`Backoff` is the delay policy; it serves as tenacity's wait and as
the delay of loops that must keep polling Kafka while they wait (the sink's kept batch).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from pipeline.infra.logs import fields

__all__ = ["Backoff", "retrying"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff(wait_base):
    """``initial`` seconds, doubled per failed attempt up to ``maximum``, less up to ``jitter`` (a fraction) of it.

    The jitter keeps processes that failed together from retrying together; a delay never
    exceeds ``maximum``.
    """

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        return base * (1.0 - self.jitter * rand())

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def retrying(
    what: str,
    *,
    transient: type[BaseException] | tuple[type[BaseException], ...],
    attempts: int | None = None,
    seconds: float | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    level: int = logging.WARNING,
    **context: Any,
) -> Retrying:
    """Retry ``transient`` errors of ``what`` after :class:`Backoff` delays, logging each failed attempt.

    At most ``attempts`` tries or ``seconds`` of trying (neither: until ``sleep`` raises, which is how
    a loop that must stop on request ends); then the last error is raised as it was. Any other
    error is raised at once. Each failed attempt is logged at ``level`` with ``context``. Call the
    result with the function to run.
    """
    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(max(1, attempts))
    if seconds is not None:
        stop = stop | stop_after_delay(seconds)

    def log_attempt(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.log(
            level,
            f"{what} failed: retrying",
            extra=fields(
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 3),
                error=str(error),
                **context,
            ),
        )

    return Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop,
        wait=backoff or Backoff(),
        sleep=sleep,
        before_sleep=log_attempt,
        reraise=True,
    )
