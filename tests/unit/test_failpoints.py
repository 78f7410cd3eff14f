"""pipeline/infra/failpoints.py: the spec parser and the ``fail`` window (tests/faults exercise ``kill``)."""

from __future__ import annotations

import pytest

from pipeline.infra import failpoints


def test_parse_reads_every_action() -> None:
    points = failpoints.parse(" sink.after_insert=kill@4 ; sink.insert=fail:2.5@3;x=kill")
    assert {name: (p.action, p.at_hit, p.seconds) for name, p in points.items()} == {
        "sink.after_insert": ("kill", 4, 0.0),
        "sink.insert": ("fail", 3, 2.5),
        "x": ("kill", 1, 0.0),
    }
    assert failpoints.parse("") == {}


@pytest.mark.parametrize(
    "spec", ["sink.insert", "=kill", "a=explode", "a=kill@0", "a=fail:0", "a=fail:x", "a=kill@two"]
)
def test_a_malformed_spec_is_refused_naming_the_variable(spec: str) -> None:
    with pytest.raises(ValueError, match="METERING_FAILPOINTS"):
        failpoints.parse(spec)


def test_fail_raises_the_callers_error_from_the_nth_hit_for_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_points", failpoints.parse("p=fail:60@2"))
    failpoints.hit("p")
    for _ in range(3):
        with pytest.raises(ConnectionError, match="failing on purpose"):
            failpoints.hit("p", ConnectionError)
    failpoints.hit("another point")


def test_fail_window_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_points", failpoints.parse("p=fail:0.001"))
    with pytest.raises(failpoints.FailpointError):
        failpoints.hit("p")
    points = failpoints._points
    assert points is not None
    points["p"].failing_until = 0.0  # the window is over
    failpoints.hit("p")
