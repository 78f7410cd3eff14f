"""R2 and R4: cut a conversation's events into conversation sessions and measure agent time.

Pure functions over events already sorted by (event time, event id); the incremental engine
and every test go through them, so there is one definition of a conversation session.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.rules.model import (
    ACCOUNT_ID,
    AGENT,
    CHANNEL,
    CODE,
    END_OF_CONVERSATION,
    EVENT_ID,
    TEST,
    TRANSFER_STARTED,
    USER,
    USER_ID,
    WHAT,
    Buffered,
    Segment,
    T,
)


def gap_limit(timeout_ms: int, transfer_open: bool, open_transfer_timeout_ms: int) -> int:
    """Longest gap that keeps a session going: an open transfer holds it (R2), up to a bound."""
    return max(timeout_ms, open_transfer_timeout_ms) if transfer_open else timeout_ms


def split(  # noqa: PLR0912, PLR0915 - R5-R7 segmentation as one pass over a conversation (compiled)
    events: list[Buffered],
    timeout_at: Callable[[int], int],
    open_transfer_timeout_ms: int,
) -> list[Segment]:
    """Conversation sessions of ``events`` (sorted, deduplicated) in time order.

    Fields beyond time and code are read only where a session needs them (compiled, each read costs).
    """
    out: list[Segment] = []
    if not events:
        return out
    first = events[0]
    timeout = timeout_at(first[T])
    seg = Segment(first[T], first[T], first[EVENT_ID], first[ACCOUNT_ID], timeout)
    hold = max(timeout, open_transfer_timeout_ms)
    last = first[T]
    count = 0
    open_since = -1
    eoc = False
    intervals = seg.agent_intervals
    for e in events:
        t = e[T]
        code = e[CODE]
        if count and (eoc or t - last > (hold if open_since >= 0 else timeout)):
            seg.end = last
            seg.events = count
            out.append(_close(seg, open_since))
            timeout = timeout_at(t)
            seg = Segment(t, t, e[EVENT_ID], e[ACCOUNT_ID], timeout)
            hold = max(timeout, open_transfer_timeout_ms)
            intervals = seg.agent_intervals
            count = 0
            open_since = -1
            eoc = False
        last = t
        count += 1
        what = code & WHAT
        if what <= AGENT:
            if seg.channel is None:
                seg.channel = e[CHANNEL]
                seg.user_id = e[USER_ID]
            if what == USER and not seg.interactive:
                seg.interactive = True
                seg.user_id = e[USER_ID]
            if code & TEST:
                seg.test = True
            if code & END_OF_CONVERSATION:
                eoc = seg.end_of_conversation = True
        elif what == TRANSFER_STARTED:
            if open_since < 0:
                open_since = t
            else:
                seg.started_while_open += 1
        elif open_since < 0:
            seg.ended_without_start += 1
        else:
            intervals.append((open_since, t))
            open_since = -1
    seg.end = last
    seg.events = count
    out.append(_close(seg, open_since))
    return out


def _close(seg: Segment, open_since: int) -> Segment:
    if open_since >= 0:
        seg.agent_intervals.append((open_since, seg.end))
        seg.transfer_open = True
    return seg


def horizon(seg: Segment, open_transfer_timeout_ms: int) -> int:
    """Latest instant at which another event would still belong to ``seg``."""
    if seg.end_of_conversation:
        return seg.end
    return seg.end + gap_limit(seg.timeout_ms, seg.transfer_open, open_transfer_timeout_ms)
