"""Every input offset is metered, in order, or the hole is proven empty: a guard around faust.

faust can drop messages that arrive while it suspends flow for a rebalance; it then records
the missing offsets as a "gap" and would commit past it, and its seek does not bring them back.
So the workers track the next offset they expect per input partition. When a message jumps
past it, the worker reads the records in between from the log itself (none, for compacted
offsets or transaction markers) and meters them before that message; only if the log cannot
be read then does it restart from its last commit, which never passed the hole.

A hole at the end of the log shows no later message: an input partition whose position has
not moved for a while although the log holds more is read from the log as well (``Progress``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    ACCEPT = "accept"  # the next offset: meter it
    ALREADY = "already"  # an offset before the expected one, delivered again: already metered
    JUMP = "jump"  # offsets are missing before this one: check the log before going on


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    expected: int


class OffsetGuard:
    """Per topic-partition continuity of delivered offsets (no I/O; the caller checks the log)."""

    def __init__(self) -> None:
        self._expected: dict[tuple[str, int], int] = {}

    def knows(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._expected

    def expected(self, topic: str, partition: int) -> int | None:
        return self._expected.get((topic, partition))

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to meter per input partition (the basis of the lag metric)."""
        return dict(self._expected)

    def start(self, topic: str, partition: int, offset: int) -> None:
        """Where metering of this partition resumes: the group's committed offset."""
        self._expected[(topic, partition)] = offset

    def forget_all(self) -> None:
        """After a rebalance positions are re-read from the committed offsets."""
        self._expected.clear()

    def admit(self, topic: str, partition: int, offset: int) -> Decision:
        key = (topic, partition)
        expected = self._expected.get(key)
        if expected is None or offset == expected:
            self._expected[key] = offset + 1
            return Decision(Verdict.ACCEPT, offset)
        if offset < expected:
            return Decision(Verdict.ALREADY, expected)
        return Decision(Verdict.JUMP, expected)

    def hole_is_empty(self, topic: str, partition: int, offset: int) -> None:
        """The log holds no record before ``offset``: continue from it (it is accepted)."""
        self._expected[(topic, partition)] = offset + 1

    def read_up_to(self, topic: str, partition: int, end: int) -> None:
        """Every record before ``end`` was read from the log and metered: expect ``end`` next."""
        key = (topic, partition)
        if self._expected.get(key, end) <= end:
            self._expected[key] = end


class Progress:
    """How long each input partition's next offset to meter has stayed where it is.

    The caller observes positions (from its ticks); the first observation of a new position
    starts its clock. Time is passed in: monotonic seconds.
    """

    def __init__(self) -> None:
        self._since: dict[tuple[str, int], tuple[int, float]] = {}

    def unmoved_for(self, topic: str, partition: int, position: int, now: float) -> float:
        key = (topic, partition)
        seen = self._since.get(key)
        if seen is None or seen[0] != position:
            self._since[key] = (position, now)
            return 0.0
        return now - seen[1]

    def forget(self, topics: Iterable[str]) -> None:
        """Positions of these topics count from their next observation."""
        names = set(topics)
        for key in [k for k in self._since if k[0] in names]:
            del self._since[key]

    def forget_all(self) -> None:
        self._since.clear()
