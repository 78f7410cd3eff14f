"""The one decoder every entry point uses: bytes in, a valid event with its time or a rejection out.

msgspec decodes straight into the ``pipeline.events`` structs, so type checks, string limits and
the tagged ``type`` field are enforced in C; what JSON Schema cannot say (the time window, the
payload size, money rules) is checked here, once. Compiled with the rules engine
(``pipeline.native``): every event of `metering compute` and of the stream passes through it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final

import msgspec

from pipeline.events import (
    EARLIEST_MS,
    EPOCH,
    MAX_FUTURE_MS,
    MAX_PAYLOAD_BYTES,
    Event,
    FundsAdded,
    PlanChanged,
    Rejection,
)

_DECODER: Final = msgspec.json.Decoder(Event)
# Hot-path names as Finals of this module: compiled, a C global rather than a dict lookup (pipeline.native).
_MAX_BYTES: Final[int] = MAX_PAYLOAD_BYTES
_EARLIEST: Final[int] = EARLIEST_MS
_MAX_FUTURE: Final[int] = MAX_FUTURE_MS
_EPOCH: Final = EPOCH
_PLAN_CHANGED: Final = PlanChanged
_FUNDS_ADDED: Final = FundsAdded


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch, truncated: billing works in whole milliseconds.

    From the parts of the difference: ``timedelta // timedelta`` goes through big-integer microseconds.
    """
    delta = value - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def decode_event(payload: bytes, now_ms: int) -> tuple[int, Event] | Rejection:
    """Decode and validate one message; ``now_ms`` bounds how far in the future it may be."""
    if len(payload) > _MAX_BYTES:
        return Rejection("too_large", f"payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection("not_json", f"not utf-8: 'utf-8' codec can't decode byte {exc.start}: {exc.reason}")
    try:
        event = _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        return _schema_rejection(str(exc))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return Rejection("not_json", str(exc) or type(exc).__name__)
    t = to_ms(event.occurred_at)
    if t < _EARLIEST:
        return Rejection("out_of_range", "occurred_at is before 2000-01-01")
    if t > now_ms + _MAX_FUTURE:
        return Rejection("out_of_range", "occurred_at is more than 24 h in the future")
    if type(event) is _PLAN_CHANGED or type(event) is _FUNDS_ADDED:
        problem = _money_problem(event)
        if problem:
            return Rejection("schema", problem)
    return t, event


def _schema_rejection(message: str) -> Rejection:
    if message.startswith("Expected `object`"):
        return Rejection("not_an_object", message)
    if "$.type" in message or "missing required field `type`" in message:
        return Rejection("unknown_type", message)
    return Rejection("schema", message)


def _money_problem(event: Event) -> str:
    if isinstance(event, FundsAdded):
        if Decimal(event.amount) <= 0:
            return "amount must be greater than zero"
    elif isinstance(event, PlanChanged):
        for field in ("price_per_usage_session", "price_per_alert_session", "price_per_voice_session"):
            if Decimal(getattr(event, field)) < 0:
                return f"{field} must not be negative"
        if Decimal(event.low_balance_threshold) < 0:
            return "low_balance_threshold must not be negative: zero and below is already `depleted`"
    return ""
