"""The offset guard: faust's dropped messages are read again, real holes in the log accepted."""

from __future__ import annotations

from pipeline.stream.continuity import OffsetGuard, Verdict


def test_consecutive_offsets_are_accepted() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 10)
    assert [guard.admit("t", 0, o, 0.0).verdict for o in (10, 11, 12)] == [Verdict.ACCEPT] * 3
    assert guard.expected("t", 0) == 13


def test_a_jump_asks_for_a_seek_back_then_waits_for_the_re_read() -> None:
    guard = OffsetGuard(patience_seconds=5)
    guard.start("t", 0, 10)
    first = guard.admit("t", 0, 15, 0.0)
    assert (first.verdict, first.expected) == (Verdict.SEEK, 10)
    assert guard.admit("t", 0, 16, 1.0).verdict is Verdict.WAIT
    assert guard.admit("t", 0, 10, 2.0).verdict is Verdict.ACCEPT
    assert guard.admit("t", 0, 11, 2.0).verdict is Verdict.ACCEPT


def test_re_delivered_offsets_are_already_metered() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 0)
    for o in range(5):
        guard.admit("t", 0, o, 0.0)
    assert guard.admit("t", 0, 2, 0.0).verdict is Verdict.ALREADY


def test_an_overdue_re_read_is_checked_against_the_log_then_accepted_as_empty() -> None:
    guard = OffsetGuard(patience_seconds=5)
    guard.start("t", 0, 10)
    guard.admit("t", 0, 12, 0.0)
    check = guard.admit("t", 0, 12, 6.0)
    assert (check.verdict, check.expected) == (Verdict.CHECK, 10)
    guard.gap_is_empty("t", 0, 12)
    assert guard.admit("t", 0, 13, 6.0).verdict is Verdict.ACCEPT


def test_records_in_the_hole_mean_seek_again_never_accept() -> None:
    guard = OffsetGuard(patience_seconds=5)
    guard.start("t", 0, 10)
    guard.admit("t", 0, 12, 0.0)
    assert guard.admit("t", 0, 12, 6.0).verdict is Verdict.CHECK
    guard.seek_again("t", 0, 6.0)
    assert guard.admit("t", 0, 12, 7.0).verdict is Verdict.WAIT
    assert guard.admit("t", 0, 10, 8.0).verdict is Verdict.ACCEPT


def test_partitions_are_independent_and_forgotten_after_a_rebalance() -> None:
    guard = OffsetGuard()
    guard.start("t", 0, 0)
    guard.start("t", 1, 100)
    assert guard.admit("t", 1, 100, 0.0).verdict is Verdict.ACCEPT
    assert guard.admit("t", 0, 0, 0.0).verdict is Verdict.ACCEPT
    assert guard.positions() == {("t", 0): 1, ("t", 1): 101}
    guard.forget_all()
    assert not guard.knows("t", 0)
