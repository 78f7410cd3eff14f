"""The one retry helper: only known-transient errors, bounded, with the backoff's delays, each attempt logged."""

from __future__ import annotations

import logging

import pytest

from pipeline.infra.retry import Backoff, retrying


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


NO_JITTER = Backoff(initial=0.5, maximum=2.0, jitter=0.0)


def test_a_transient_error_is_retried_after_the_backoffs_delays(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    flaky = Flaky(3, ConnectionError("refused"))
    with caplog.at_level(logging.WARNING, logger="pipeline.infra.retry"):
        answer = retrying("asking", transient=ConnectionError, backoff=NO_JITTER, sleep=slept.append, host="h")(flaky)
    assert answer == "answer"
    assert flaky.calls == 4
    assert slept == [0.5, 1.0, 2.0]
    attempts = [r for r in caplog.records if r.getMessage() == "asking failed: retrying"]
    assert len(attempts) == 3


def test_attempts_bound_the_retries_and_the_last_error_is_raised_as_it_was() -> None:
    slept: list[float] = []
    error = ConnectionError("still refused")
    flaky = Flaky(10, error)
    with pytest.raises(ConnectionError) as info:
        retrying("asking", transient=ConnectionError, attempts=3, backoff=NO_JITTER, sleep=slept.append)(flaky)
    assert info.value is error
    assert flaky.calls == 3
    assert slept == [0.5, 1.0]


def test_an_error_not_known_to_be_transient_is_raised_at_once() -> None:
    slept: list[float] = []
    flaky = Flaky(1, ValueError("bad setting"))
    with pytest.raises(ValueError, match="bad setting"):
        retrying("asking", transient=ConnectionError, backoff=NO_JITTER, sleep=slept.append)(flaky)
    assert flaky.calls == 1
    assert slept == []


def test_a_sleep_that_raises_ends_an_unbounded_retry() -> None:
    class Stopped(Exception):
        pass

    def stop(_: float) -> None:
        raise Stopped

    flaky = Flaky(100, ConnectionError("down"))
    with pytest.raises(Stopped):
        retrying("asking", transient=ConnectionError, backoff=NO_JITTER, sleep=stop)(flaky)
    assert flaky.calls == 1


def test_the_backoff_doubles_up_to_its_cap_less_its_jitter() -> None:
    b = Backoff(initial=0.5, maximum=4.0, jitter=0.2)
    assert [b.delay(n, rand=lambda: 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(3, rand=lambda: 1.0) == pytest.approx(1.6)
