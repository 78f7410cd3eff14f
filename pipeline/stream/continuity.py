"""Every input offset is metered, in order, or the gap is proven empty: a guard around faust.

faust drops messages that arrive while it suspends flow for a rebalance, then records the
missing offsets as a "gap" and commits past it: those events would be lost. The workers do not
take that on trust. They track the next offset they expect per input partition; a message past
it sends the consumer back to the expected offset, and only a gap that is still there after
the re-read (compacted offsets, transaction markers) is accepted, and logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

RESEEK_PATIENCE_SECONDS: Final = 10.0


class Verdict(Enum):
    ACCEPT = "accept"  # the next offset: meter it
    ALREADY = "already"  # an offset before the expected one, delivered again: already metered
    SEEK = "seek"  # offsets are missing: go back to ``expected`` and skip the rest of this batch
    WAIT = "wait"  # still waiting for the re-read after a seek: skip
    CHECK = "check"  # the re-read is overdue: ask the log whether records exist in between


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    expected: int


@dataclass(slots=True)
class _Track:
    expected: int
    seek_sent_at: float | None = None


class OffsetGuard:
    """Per topic-partition continuity of delivered offsets (no I/O; the caller seeks)."""

    def __init__(self, patience_seconds: float = RESEEK_PATIENCE_SECONDS) -> None:
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._patience = patience_seconds

    def knows(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._tracks

    def expected(self, topic: str, partition: int) -> int | None:
        track = self._tracks.get((topic, partition))
        return None if track is None else track.expected

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to meter per input partition (the basis of the lag metric)."""
        return {tp: track.expected for tp, track in self._tracks.items()}

    def start(self, topic: str, partition: int, offset: int) -> None:
        """Where metering of this partition resumes: the group's committed offset."""
        self._tracks[(topic, partition)] = _Track(expected=offset)

    def forget_all(self) -> None:
        """After a rebalance positions are re-read from the committed offsets."""
        self._tracks.clear()

    def admit(self, topic: str, partition: int, offset: int, now: float) -> Decision:
        track = self._tracks.get((topic, partition))
        if track is None:
            self._tracks[(topic, partition)] = _Track(expected=offset + 1)
            return Decision(Verdict.ACCEPT, offset)
        if offset == track.expected:
            track.expected += 1
            track.seek_sent_at = None
            return Decision(Verdict.ACCEPT, offset)
        if offset < track.expected:
            return Decision(Verdict.ALREADY, track.expected)
        if track.seek_sent_at is None:
            track.seek_sent_at = now
            return Decision(Verdict.SEEK, track.expected)
        if now - track.seek_sent_at < self._patience:
            return Decision(Verdict.WAIT, track.expected)
        return Decision(Verdict.CHECK, track.expected)

    def gap_is_empty(self, topic: str, partition: int, offset: int) -> None:
        """The log holds no record before ``offset``: continue from it (it is accepted)."""
        self._tracks[(topic, partition)] = _Track(expected=offset + 1)

    def seek_again(self, topic: str, partition: int, now: float) -> None:
        track = self._tracks[(topic, partition)]
        track.seek_sent_at = now
