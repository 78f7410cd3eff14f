"""Output messages built from the engine's results (billing sessions, dead letters, late events), and back."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

import msgspec

from pipeline.contract.decode import to_ms
from pipeline.contract.events import (
    DEAD_LETTER_PAYLOAD_BYTES,
    BillingSessionRecord,
    DeadLetter,
    LateRecord,
    Rejection,
    ms_to_datetime,
)
from pipeline.rules.model import BillingSession, LateEvent

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def billing_session_record(s: BillingSession) -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=s.billing_session_id,
        kind=s.kind,
        account_id=s.account_id,
        app_id=s.app_id,
        conversation_session_id=s.conversation_session_id,
        conversation_id=s.conversation_id,
        user_id=s.user_id,
        channel=s.channel,
        session_index=s.session_index,
        started_at=ms_to_datetime(s.started_ms),
        ended_at=ms_to_datetime(s.ended_ms),
        conversation_started_at=_maybe_datetime(s.conversation_started_ms),
        conversation_ended_at=_maybe_datetime(s.conversation_ended_ms),
        bot_ms=s.bot_ms,
        agent_ms=s.agent_ms,
        alert_id=s.alert_id,
    )


def _maybe_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)


def billing_session_of(record: BillingSessionRecord) -> BillingSession:
    """The rules' view of a `billing-sessions` record (times in epoch milliseconds)."""
    return BillingSession(
        billing_session_id=record.billing_session_id,
        kind=record.kind,
        account_id=record.account_id,
        app_id=record.app_id,
        conversation_session_id=record.conversation_session_id,
        conversation_id=record.conversation_id,
        user_id=record.user_id,
        channel=record.channel,
        session_index=record.session_index,
        started_ms=to_ms(record.started_at),
        ended_ms=to_ms(record.ended_at),
        conversation_started_ms=_maybe_ms(record.conversation_started_at),
        conversation_ended_ms=_maybe_ms(record.conversation_ended_at),
        bot_ms=record.bot_ms,
        agent_ms=record.agent_ms,
        alert_id=record.alert_id,
    )


def _maybe_ms(value: datetime | None) -> int | None:
    return None if value is None else to_ms(value)


def dead_letter(
    payload: bytes, rejection: Rejection, *, topic: str, partition: int, offset: int, received_at: datetime
) -> DeadLetter:
    """Keeps the first 256 KiB of a bigger payload (with its size and digest): a whole one could not be produced."""
    kept = payload[:DEAD_LETTER_PAYLOAD_BYTES]
    return DeadLetter(
        reason=rejection.reason,
        code=rejection.code,
        payload_base64=base64.b64encode(kept).decode("ascii"),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        received_at=received_at,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_truncated=len(kept) < len(payload),
    )


def late_record(payload: bytes, late: LateEvent, *, topic: str, partition: int, offset: int) -> LateRecord:
    return LateRecord(
        reason=late.reason,
        event=msgspec.Raw(payload),
        app_id=late.app_id,
        event_id=late.event_id,
        occurred_at=ms_to_datetime(late.t),
        partition_clock=ms_to_datetime(late.clock),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
    )
