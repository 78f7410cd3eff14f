"""The offset guard: a jump past the expected offset is never metered without a check."""

from __future__ import annotations

from pipeline.stream.continuity import OffsetGuard, Progress, Verdict


def test_consecutive_offsets_are_accepted() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 10)
    assert [guard.admit("t", 0, o).verdict for o in (10, 11, 12)] == [Verdict.ACCEPT] * 3
    assert guard.expected("t", 0) == 13


def test_a_jump_is_reported_with_the_expected_offset_and_not_admitted() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 10)
    jump = guard.admit("t", 0, 15)
    assert (jump.verdict, jump.expected) == (Verdict.JUMP, 10)
    assert guard.expected("t", 0) == 10
    assert guard.admit("t", 0, 16).verdict is Verdict.JUMP


def test_an_empty_hole_is_accepted_and_metering_goes_on_after_it() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 10)
    guard.admit("t", 0, 12)
    guard.hole_is_empty("t", 0, 12)
    assert guard.admit("t", 0, 13).verdict is Verdict.ACCEPT


def test_re_delivered_offsets_are_already_metered() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 0)
    for o in range(5):
        guard.admit("t", 0, o)
    assert guard.admit("t", 0, 2).verdict is Verdict.ALREADY


def test_partitions_are_independent_and_forgotten_after_a_rebalance() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 0)
    guard.start("t", 1, 100)
    assert guard.admit("t", 1, 100).verdict is Verdict.ACCEPT
    assert guard.admit("t", 0, 0).verdict is Verdict.ACCEPT
    assert guard.positions() == {("t", 0): 1, ("t", 1): 101}
    guard.forget_all()
    assert not guard.knows("t", 0)


def test_a_tail_read_from_the_log_moves_the_position_forward_only() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 10)
    guard.read_up_to("t", 0, 25)
    assert guard.expected("t", 0) == 25
    assert guard.admit("t", 0, 12).verdict is Verdict.ALREADY, "faust delivering the records later meters nothing"
    guard.read_up_to("t", 0, 20)
    assert guard.expected("t", 0) == 25
    assert guard.admit("t", 0, 25).verdict is Verdict.ACCEPT


def test_progress_counts_from_the_first_observation_of_a_position() -> None:
    progress = Progress()
    assert progress.unmoved_for("t", 0, 10, now=100.0) == 0.0
    assert progress.unmoved_for("t", 0, 10, now=104.5) == 4.5
    assert progress.unmoved_for("t", 0, 11, now=105.0) == 0.0, "a new position starts again"
    assert progress.unmoved_for("t", 1, 11, now=106.0) == 0.0, "partitions are independent"
    assert progress.unmoved_for("t", 0, 11, now=107.0) == 2.0
    progress.forget_all()
    assert progress.unmoved_for("t", 0, 11, now=200.0) == 0.0


def test_progress_of_forgotten_topics_counts_again_and_others_keep_theirs() -> None:
    progress = Progress()
    progress.unmoved_for("t", 0, 10, now=100.0)
    progress.unmoved_for("u", 0, 10, now=100.0)
    progress.forget(["t"])
    assert progress.unmoved_for("t", 0, 10, now=150.0) == 0.0
    assert progress.unmoved_for("u", 0, 10, now=150.0) == 50.0
