"""An in-memory fake of :class:`~consumers.clickhouse.store.SessionWriter`, for unit tests.

It is a FAKE: nothing is persisted and nothing here runs in production. It reproduces the
two behaviours of the real store that the sink relies on, so sink tests can check them
without ClickHouse: a token seen before is a no-op (like ``insert_deduplication_token``), and
a session id seen before under another token is kept once (like the ReplacingMergeTree and
the uniqExact aggregates). Tests can make the next inserts fail to exercise error paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from consumers.clickhouse.errors import ClickHouseWriteError
from pipeline.contract.events import BillingSessionRecord

__all__ = ["FakeSessionWriter"]


class FakeSessionWriter:
    """In-memory fake store: sessions by id, tokens seen, and an optional failure queue."""

    def __init__(self) -> None:
        self.sessions: dict[str, BillingSessionRecord] = {}
        self.tokens: list[str] = []  # accepted tokens, in order
        self.duplicate_tokens: list[str] = []  # tokens that were ignored as already seen
        self.calls = 0
        self._failures: list[ClickHouseWriteError] = []

    def fail_next(self, times: int = 1, *, transient: bool = True) -> None:
        """Make the next ``times`` inserts raise :class:`ClickHouseWriteError` and write nothing."""
        for _ in range(times):
            self._failures.append(
                ClickHouseWriteError("fake insert failure (injected by a test)", code=None, transient=transient)
            )

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
        self.calls += 1
        if not token:
            raise ValueError("an insert token is required: an empty one turns token deduplication off")
        if self._failures:
            raise self._failures.pop(0)
        if not records:
            return
        if token in self.tokens:
            self.duplicate_tokens.append(token)
            return
        self.tokens.append(token)
        for record in records:
            self.sessions[record.billing_session_id] = record
