"""The one decoder every entry point uses: bytes in, a valid event with its time or a rejection out.

msgspec decodes straight into the ``pipeline.contract.events`` structs, so type checks, string limits and
the tagged ``type`` field are enforced in C; what JSON Schema cannot say (the time window, the
payload size, money rules) is checked here, once. Compiled with the rules engine
(``pipeline.infra.native``): every event of `metering compute` and of the stream passes through it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final, cast

import msgspec

from pipeline.contract.events import (
    EARLIEST_MS,
    EPOCH,
    MAX_FUTURE_MS,
    MAX_PAYLOAD_BYTES,
    AccountChanged,
    Event,
    FundsAdded,
    FundsRefunded,
    InputEvent,
    PlanChanged,
    Rejection,
)

_DECODER: Final = msgspec.json.Decoder(InputEvent)
# Hot-path names as Finals of this module: compiled, a C global rather than a dict lookup (pipeline.infra.native).
_MAX_BYTES: Final[int] = MAX_PAYLOAD_BYTES
_EARLIEST: Final[int] = EARLIEST_MS
_MAX_FUTURE: Final[int] = MAX_FUTURE_MS
_EPOCH: Final = EPOCH
_PLAN_CHANGED: Final = PlanChanged
_FUNDS_ADDED: Final = FundsAdded
_FUNDS_REFUNDED: Final = FundsRefunded


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch, truncated: billing works in whole milliseconds.

    From the parts of the difference: ``timedelta // timedelta`` goes through big-integer microseconds.
    """
    delta = value - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def decode_event(payload: bytes, now_ms: int) -> tuple[int, Event] | Rejection:
    """Decode and validate one message of an app's input topic; ``now_ms`` bounds how far in the future it may be.

    An ``account_changed`` is valid only on its own topic (billing-accounts): here it is on the wrong one.
    """
    decoded = decode_input(payload, now_ms)
    if isinstance(decoded, Rejection):
        return decoded
    if isinstance(decoded[1], AccountChanged):
        return Rejection(
            "wrong_topic",
            "an account_changed event does not belong on this topic: produce it to the topic of its type "
            "(by default 'billing-accounts', see docs/events.md)",
        )
    return cast(tuple[int, Event], decoded)  # the one type Event lacks was ruled out just above


def decode_input(payload: bytes, now_ms: int) -> tuple[int, InputEvent] | Rejection:  # noqa: PLR0911 - one Rejection per validation step, in events.md's order (compiled hot path)
    """Decode and validate one message of any input type, the account's ``account_changed`` included."""
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
    kind = type(event)
    if kind is _PLAN_CHANGED or kind is _FUNDS_ADDED or kind is _FUNDS_REFUNDED:
        problem = _money_problem(event)
        if problem:
            return Rejection("schema", problem)
        if isinstance(event, PlanChanged):
            problem = _schedule_problem(event)
            if problem:
                return Rejection("out_of_range", problem)
    return t, event


def _schema_rejection(message: str) -> Rejection:
    if message.startswith("Expected `object`"):
        return Rejection("not_an_object", message)
    if "$.type" in message or "missing required field `type`" in message:
        return Rejection("unknown_type", message)
    return Rejection("schema", message)


def _schedule_problem(event: PlanChanged) -> str:
    """``effective_at`` is checked against the window of the contract, not against the clock (R10 is on occurred_at)."""
    if event.effective_at is None:
        return ""
    effective = to_ms(event.effective_at)
    if effective < _EARLIEST:
        return "effective_at is before 2000-01-01"
    return ""


def _money_problem(event: InputEvent) -> str:
    if isinstance(event, FundsAdded | FundsRefunded):
        if Decimal(event.amount) <= 0:
            return "amount must be greater than zero"
    elif isinstance(event, PlanChanged):
        for field in ("price_per_usage_session", "price_per_alert_session", "price_per_voice_session"):
            if Decimal(getattr(event, field)) < 0:
                return f"{field} must not be negative"
        if Decimal(event.low_balance_threshold) < 0:
            return "low_balance_threshold must not be negative: zero and below is already `depleted`"
    return ""
