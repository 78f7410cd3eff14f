"""Values the rules engine works with: compact conversation events, segments, billing sessions.

Conversation events are kept as plain tuples because they sit in per-conversation state that
is serialised on every change; tuples are the cheapest thing to build, compare and encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from msgspec import Struct

# The ``code`` of a buffered event: what it is (low three bits) plus flags.
USER: Final = 1
BOT: Final = 2
AGENT: Final = 3
TRANSFER_STARTED: Final = 4
TRANSFER_ENDED: Final = 5
WHAT: Final = 7
END_OF_CONVERSATION: Final = 8
TEST: Final = 16

#: (t, event_id, code, channel, user_id, agent_id, account_id); sorts by event time, then id.
Buffered = tuple[int, str, int, str, str, str, str]
T: Final = 0
EVENT_ID: Final = 1
CODE: Final = 2
CHANNEL: Final = 3
USER_ID: Final = 4
AGENT_ID: Final = 5
ACCOUNT_ID: Final = 6


Kind = Literal["usage", "voice", "alert"]


class BillingSession(Struct, frozen=True, kw_only=True, gc=False):
    """One billable unit (R5-R7). Times are epoch milliseconds; the wire form is in `events`.

    Only strings and numbers: never in a reference cycle, so not tracked by the cyclic collector.
    """

    billing_session_id: str
    kind: Kind
    account_id: str
    app_id: str
    conversation_session_id: str | None
    conversation_id: str | None
    user_id: str
    channel: str | None
    session_index: int
    started_ms: int
    ended_ms: int
    conversation_started_ms: int | None = None
    conversation_ended_ms: int | None = None
    bot_ms: int | None = None
    agent_ms: int | None = None
    alert_id: str | None = None


class Segment:
    """A conversation session (R2) with what R3-R6 need to bill it.

    A plain class: compiled (``pipeline.infra.native``), one is built per conversation session.
    """

    __slots__ = (
        "account_id",
        "agent_intervals",
        "channel",
        "end",
        "end_of_conversation",
        "ended_without_start",
        "events",
        "first_event_id",
        "interactive",
        "start",
        "started_while_open",
        "test",
        "timeout_ms",
        "transfer_open",
        "user_id",
    )

    def __init__(self, start: int, end: int, first_event_id: str, account_id: str, timeout_ms: int) -> None:
        self.start = start
        self.end = end
        self.first_event_id = first_event_id
        self.account_id = account_id
        self.timeout_ms = timeout_ms
        self.channel: str | None = None
        self.user_id = ""
        self.interactive = False
        self.test = False
        self.end_of_conversation = False
        self.transfer_open = False
        self.agent_intervals: list[tuple[int, int]] = []
        self.events = 0
        self.ended_without_start = 0
        self.started_while_open = 0

    @property
    def agent_ms(self) -> int:
        total = 0
        for a, b in self.agent_intervals:
            total += b - a
        return total

    @property
    def billable(self) -> bool:
        return self.interactive and not self.test


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event that would change a final conversation session (R9), kept for reconciliation."""

    t: int
    event_id: str
    app_id: str
    reason: str
    clock: int
