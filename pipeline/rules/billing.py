"""R3, R5, R6, R7: turn final conversation sessions and alerts into billing sessions.

Every id is derived from the inputs that define the thing it names, so the same events give
the same ids in the stream, in `metering compute` and in a replay a year later.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Final

from pipeline.contract.events import AlertDelivered
from pipeline.rules.config import SESSION_LENGTH_MS, VOICE_CHANNELS
from pipeline.rules.model import BillingSession, Kind, Segment

#: Copied for each id: cheaper than a constructor call with its keyword argument.
_BLAKE2B_128: Final = blake2b(digest_size=16)


def derived_id(name: str) -> str:
    """BLAKE2b-128 of ``name`` (UTF-8) in UUID form: anyone can recompute it (docs/billing-rules.md)."""
    hasher = _BLAKE2B_128.copy()
    hasher.update(name.encode())
    h = hasher.hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def conversation_session_id(app_id: str, conversation_id: str, start_ms: int, first_event_id: str) -> str:
    return derived_id(f"cs|{app_id}|{conversation_id}|{start_ms}|{first_event_id}")


def billing_session_id(kind: str, parent_id: str, index: int) -> str:
    return derived_id(f"{kind}|{parent_id}|{index}")


def alert_session_id(app_id: str, event_id: str) -> str:
    return derived_id(f"alert|{app_id}|{event_id}")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def is_voice(channel: str | None) -> bool:
    return channel is not None and channel.lower() in VOICE_CHANNELS


def usage_boundaries(seg: Segment, agent_ms: int | None = None) -> list[int]:
    """Start instants of the usage sessions of ``seg`` (R5), then its end.

    Session k starts at the first instant the bot time reaches k x 15 minutes; bot time stands
    still inside human-agent intervals, so the walk skips over them.
    """
    bot_ms = seg.end - seg.start - (seg.agent_ms if agent_ms is None else agent_ms)
    count = max(1, ceil_div(bot_ms, SESSION_LENGTH_MS))
    if count == 1:
        return [seg.start, seg.end]
    bounds = [seg.start]
    intervals = iter(seg.agent_intervals)
    pos = seg.start
    bot_before = 0
    gap_end = next(intervals, None)
    for k in range(1, count):
        target = k * SESSION_LENGTH_MS
        while gap_end is not None and bot_before + (gap_end[0] - pos) < target:
            bot_before += gap_end[0] - pos
            pos = gap_end[1]
            gap_end = next(intervals, None)
        bounds.append(pos + (target - bot_before))
    bounds.append(seg.end)
    return bounds


def voice_boundaries(seg: Segment) -> list[int]:
    """Start instants of the voice sessions of ``seg`` (R6), then its end."""
    count = max(1, ceil_div(seg.end - seg.start, SESSION_LENGTH_MS))
    return [seg.start + k * SESSION_LENGTH_MS for k in range(count)] + [seg.end]


def bill_segment(app_id: str, conversation_id: str, seg: Segment) -> list[BillingSession]:
    """The billing sessions of a final conversation session; none if it is not billable (R3)."""
    if not seg.billable:
        return []
    parent = conversation_session_id(app_id, conversation_id, seg.start, seg.first_event_id)
    agent_ms = seg.agent_ms
    bot_ms = seg.end - seg.start - agent_ms
    voice = is_voice(seg.channel)
    kind: Kind = "voice" if voice else "usage"
    bounds = voice_boundaries(seg) if voice else usage_boundaries(seg, agent_ms)
    return [
        BillingSession(
            billing_session_id=billing_session_id(kind, parent, k),
            kind=kind,
            account_id=seg.account_id,
            app_id=app_id,
            conversation_session_id=parent,
            conversation_id=conversation_id,
            user_id=seg.user_id,
            channel=seg.channel,
            session_index=k,
            started_ms=bounds[k],
            ended_ms=bounds[k + 1],
            conversation_started_ms=seg.start,
            conversation_ended_ms=seg.end,
            bot_ms=bot_ms,
            agent_ms=agent_ms,
        )
        for k in range(len(bounds) - 1)
    ]


def bill_alert(t: int, alert: AlertDelivered) -> BillingSession:
    """R7: one alert session per delivered alert, starting and ending at delivery."""
    return BillingSession(
        billing_session_id=alert_session_id(alert.app_id, alert.event_id),
        kind="alert",
        account_id=alert.account_id,
        app_id=alert.app_id,
        conversation_session_id=None,
        conversation_id=None,
        user_id=alert.user_id,
        channel=alert.channel,
        session_index=0,
        started_ms=t,
        ended_ms=t,
        alert_id=alert.alert_id,
    )
