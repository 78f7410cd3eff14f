"""R10: anything that is not a valid event is rejected with a code and a detail that names the problem.

Each case is its own test so a failure names the rule it breaks. Valid edge cases (extra fields,
offsets, sub-millisecond precision, exact limits) are accepted. Where the decoder is known to
disagree with events.md the test says what is right and is marked ``xfail(strict=True)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline.contract.decode import decode_event, to_ms
from pipeline.contract.events import (
    DEAD_LETTER_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    ConversationTurn,
    Event,
    FundsAdded,
    PlanChanged,
    Rejection,
    format_ms,
)
from pipeline.stream.records import dead_letter, encode
from tests.support import turn

NOW = to_ms(datetime(2026, 11, 1, 10, 0, tzinfo=UTC))
HOUR = 3_600_000
RECEIVED = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
EVENT_SCHEMA = schemas.validator("event")


def plan(**changes: Any) -> dict[str, Any]:
    event = {
        "type": "plan_changed",
        "event_id": "p-1",
        "occurred_at": "2026-11-01T09:00:00Z",
        "account_id": "acme",
        "app_id": "support-bot",
        "plan": "growth",
        "price_per_usage_session": "0.15",
        "price_per_alert_session": "0.05",
        "price_per_voice_session": "0.40",
    }
    return event | changes


def funds(amount: str) -> dict[str, Any]:
    return {
        "type": "funds_added",
        "event_id": "f-1",
        "occurred_at": "2026-11-01T09:00:00Z",
        "account_id": "acme",
        "app_id": "support-bot",
        "amount": amount,
        "currency": "USD",
    }


def payload(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def rejected(data: bytes, code: str, *words: str) -> Rejection:
    """Decode ``data``, expecting a Rejection with ``code`` whose detail mentions each of ``words``."""
    result = decode_event(data, NOW)
    assert isinstance(result, Rejection), f"accepted: {result!r}"
    assert result.code == code, result
    for word in words:
        assert word in result.detail, (word, result.detail)
    assert result.reason.startswith(f"{code}: ")
    return result


def accepted(data: bytes) -> tuple[int, Event]:
    result = decode_event(data, NOW)
    assert not isinstance(result, Rejection), result
    return result


def schema_rejects(document: object) -> None:
    """Where JSON Schema can say it, the schema files reject the same document."""
    assert not EVENT_SCHEMA.is_valid(document)


def schema_accepts(document: object) -> None:
    errors = [error.message for error in EVENT_SCHEMA.iter_errors(document)]
    assert not errors


# -- not JSON ---------------------------------------------------------------------------------------


def test_not_json_is_rejected() -> None:
    rejected(b'{"type": "conversation_turn", event_id: 1}', "not_json", "malformed")


def test_empty_payload_is_rejected() -> None:
    rejected(b"", "not_json", "truncated")


def test_truncated_json_is_rejected() -> None:
    rejected(payload(turn())[:-1], "not_json", "truncated")


def test_trailing_garbage_after_the_object_is_rejected() -> None:
    rejected(payload(turn()) + b" {}", "not_json", "trailing characters")


def test_random_bytes_are_rejected() -> None:
    noise = random.Random(10).randbytes(4096)
    result = rejected(noise, "not_json")
    assert result.detail


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode_event(data, NOW), Rejection)


def test_invalid_utf8_in_a_field_is_rejected() -> None:
    data = payload(turn(user_id="USER")).replace(b"USER", b"u-\xff\xfe")
    rejected(data, "not_json", "utf-8", "can't decode")


def test_overlong_utf8_encoding_is_rejected() -> None:
    data = payload(turn(user_id="USER")).replace(b"USER", b"\xc0\xaf")  # "/" encoded in two bytes
    rejected(data, "not_json", "utf-8")


def test_utf8_encoded_surrogate_is_rejected() -> None:
    data = payload(turn(user_id="USER")).replace(b"USER", b"\xed\xa0\x80")
    rejected(data, "not_json", "utf-8")


def test_escaped_lone_surrogate_is_rejected() -> None:
    data = payload(turn(user_id="USER")).replace(b"USER", rb"\ud800")
    rejected(data, "not_json", "surrogate")


def test_invalid_utf8_in_an_unknown_field_is_rejected() -> None:
    data = payload(turn(x_note="NOTE")).replace(b"NOTE", b"\xff\xfe")
    rejected(data, "not_json", "utf-8")


def test_byte_order_mark_is_rejected() -> None:
    rejected(b"\xef\xbb\xbf" + payload(turn()), "not_json", "malformed")


# -- not an object -------------------------------------------------------------------------------


def test_json_array_is_rejected() -> None:
    rejected(payload([turn()]), "not_an_object", "Expected `object`, got `array`")
    schema_rejects([turn()])


def test_json_number_is_rejected() -> None:
    rejected(b"42", "not_an_object", "Expected `object`, got `int`")
    schema_rejects(42)


def test_json_string_is_rejected() -> None:
    rejected(b'"conversation_turn"', "not_an_object", "Expected `object`, got `str`")
    schema_rejects("conversation_turn")


def test_json_null_is_rejected() -> None:
    rejected(b"null", "not_an_object", "Expected `object`, got `null`")
    schema_rejects(None)


# -- unknown or missing type -------------------------------------------------------------------------


def test_unknown_type_is_rejected() -> None:
    rejected(payload(turn(type="conversation_turned")), "unknown_type", "'conversation_turned'", "$.type")
    schema_rejects(turn(type="conversation_turned"))


def test_type_with_wrong_case_is_rejected() -> None:
    rejected(payload(turn(type="Conversation_Turn")), "unknown_type", "$.type")
    schema_rejects(turn(type="Conversation_Turn"))


def test_missing_type_is_rejected() -> None:
    rejected(payload(turn(type=...)), "unknown_type", "missing required field `type`")
    schema_rejects(turn(type=...))


def test_type_that_is_not_a_string_is_rejected() -> None:
    rejected(payload(turn(type=1)), "unknown_type", "Expected `str`", "$.type")
    schema_rejects(turn(type=1))


# -- missing and mistyped fields ---------------------------------------------------------------------

REQUIRED_TURN_FIELDS = [
    "event_id",
    "occurred_at",
    "account_id",
    "app_id",
    "conversation_id",
    "user_id",
    "channel",
    "speaker",
]


def test_required_turn_fields_are_those_of_the_schema() -> None:
    assert set(schemas.load("conversation_turn")["required"]) == {"type", *REQUIRED_TURN_FIELDS}


@pytest.mark.parametrize("field", REQUIRED_TURN_FIELDS)
def test_missing_required_field_of_a_turn_is_rejected(field: str) -> None:
    rejected(payload(turn(**{field: ...})), "schema", f"missing required field `{field}`")
    schema_rejects(turn(**{field: ...}))


def test_string_for_a_bool_is_rejected() -> None:
    rejected(payload(turn(is_test="true")), "schema", "Expected `bool`, got `str`", "$.is_test")
    schema_rejects(turn(is_test="true"))


def test_number_for_a_bool_is_rejected() -> None:
    rejected(payload(turn(end_of_conversation=1)), "schema", "Expected `bool`, got `int`", "$.end_of_conversation")
    schema_rejects(turn(end_of_conversation=1))


def test_number_for_a_string_is_rejected() -> None:
    rejected(payload(turn(user_id=17)), "schema", "Expected `str`, got `int`", "$.user_id")
    schema_rejects(turn(user_id=17))


def test_null_for_a_required_string_is_rejected() -> None:
    rejected(payload(turn(conversation_id=None)), "schema", "Expected `str`, got `null`", "$.conversation_id")
    schema_rejects(turn(conversation_id=None))


def test_null_for_an_optional_id_is_the_same_as_absent() -> None:
    _, event = accepted(payload(turn(message_id=None)))
    assert isinstance(event, ConversationTurn)
    assert event.message_id is None
    schema_accepts(turn(message_id=None))


def test_object_for_a_string_is_rejected() -> None:
    rejected(payload(turn(channel={"name": "web"})), "schema", "Expected `str`, got `object`", "$.channel")
    schema_rejects(turn(channel={"name": "web"}))


def test_bad_speaker_is_rejected() -> None:
    rejected(payload(turn(speaker="system")), "schema", "Invalid enum value 'system'", "$.speaker")
    schema_rejects(turn(speaker="system"))


def test_float_for_an_integer_is_rejected_by_the_decoder() -> None:
    """30.0 is the integer 30 to JSON Schema, so only the decoder can insist on an integer literal."""
    rejected(payload(plan(idle_timeout_minutes=30.0)), "schema", "got `float`", "$.idle_timeout_minutes")
    schema_accepts(plan(idle_timeout_minutes=30.0))


def test_price_as_a_json_number_is_rejected() -> None:
    rejected(payload(plan(price_per_usage_session=0.15)), "schema", "Expected `str`", "$.price_per_usage_session")
    schema_rejects(plan(price_per_usage_session=0.15))


# -- string limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "account_id", "app_id", "conversation_id", "user_id", "message_id"])
def test_id_over_128_chars_is_rejected(field: str) -> None:
    rejected(payload(turn(**{field: "x" * 129})), "schema", "length <= 128", f"$.{field}")
    schema_rejects(turn(**{field: "x" * 129}))


@pytest.mark.parametrize("field", ["event_id", "account_id", "app_id", "conversation_id", "user_id", "message_id"])
def test_id_of_exactly_128_chars_is_accepted(field: str) -> None:
    _, event = accepted(payload(turn(**{field: "x" * 128})))
    assert getattr(event, field) == "x" * 128
    schema_accepts(turn(**{field: "x" * 128}))


def test_id_limit_counts_characters_not_bytes() -> None:
    accepted(payload(turn(user_id="😀" * 128)))  # 512 bytes of UTF-8
    schema_accepts(turn(user_id="😀" * 128))
    rejected(payload(turn(user_id="😀" * 129)), "schema", "length <= 128", "$.user_id")
    schema_rejects(turn(user_id="😀" * 129))


def test_very_long_string_is_rejected() -> None:
    rejected(payload(turn(event_id="e" * 60_000)), "schema", "length <= 128", "$.event_id")


def test_channel_over_64_chars_is_rejected() -> None:
    rejected(payload(turn(channel="w" * 65)), "schema", "length <= 64", "$.channel")
    schema_rejects(turn(channel="w" * 65))
    accepted(payload(turn(channel="w" * 64)))


@pytest.mark.parametrize("field", ["event_id", "account_id", "app_id", "conversation_id", "user_id", "channel"])
def test_empty_id_is_rejected(field: str) -> None:
    rejected(payload(turn(**{field: ""})), "schema", "length >= 1", f"$.{field}")
    schema_rejects(turn(**{field: ""}))


def test_bad_currency_is_rejected() -> None:
    rejected(payload(funds("10.00") | {"currency": "usd"}), "schema", "$.currency")
    schema_rejects(funds("10.00") | {"currency": "usd"})


def test_amount_with_too_many_decimals_is_rejected() -> None:
    rejected(payload(funds("10.1234567")), "schema", "$.amount")
    schema_rejects(funds("10.1234567"))


@pytest.mark.parametrize(("field", "value"), [("currency", "USD\n"), ("amount", "10.00\n")])
def test_trailing_newline_in_a_patterned_field_is_rejected(field: str, value: str) -> None:
    schema_rejects(funds("10.00") | {field: value})
    rejected(payload(funds("10.00") | {field: value}), "schema", f"$.{field}")


# -- nesting and size ------------------------------------------------------------------------------


def nested_extra(depth: int) -> bytes:
    """A valid turn with an unknown field holding ``depth`` nested arrays."""
    return payload(turn())[:-1] + b', "x_extra": ' + b"[" * depth + b"]" * depth + b"}"


def test_moderate_nesting_in_an_unknown_field_is_accepted() -> None:
    accepted(nested_extra(100))


def test_deep_nesting_inside_64_kib_is_rejected() -> None:
    data = nested_extra(30_000)
    assert len(data) <= MAX_PAYLOAD_BYTES
    rejected(data, "not_json", "recursion")


def test_deep_nesting_is_too_large_before_it_is_parsed() -> None:
    rejected(nested_extra(100_000), "too_large", "over 65536")


def test_deep_nesting_does_not_crash_the_process() -> None:
    """A C-level stack overflow would kill the worker, not raise: run it where a crash is visible."""
    script = textwrap.dedent(
        """
        import sys
        from pipeline.contract.decode import decode_event
        head = b'{"type":"conversation_turn","event_id":"e","occurred_at":"2026-11-01T10:00:00Z",'
        for depth in (30_000, 100_000):
            for open_, close in ((b"[", b"]"), (b'{"a":', b"}")):
                for where in (b'"x":', b'"user_id":'):
                    data = head + where + open_ * depth + b"1" + close * depth + b"}"
                    for limit in (len(data), 65_536):
                        result = decode_event(data[:limit], 0)
                        assert result.code in ("not_json", "schema", "too_large"), result
        print("alive")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "alive"


def test_deep_nesting_at_top_level_is_not_an_object() -> None:
    rejected(b"[" * 30_000 + b"]" * 30_000, "not_an_object", "Expected `object`")


def test_one_mib_payload_is_too_large() -> None:
    data = payload(turn(x_padding="p" * (1 << 20)))
    rejected(data, "too_large", f"payload is {len(data)} bytes", "over 65536")


def padded_to(size: int) -> bytes:
    """A valid turn padded with an unknown field to exactly ``size`` bytes."""
    base = payload(turn(x_padding=""))
    data = base.replace(b'"x_padding": ""', b'"x_padding": "' + b"p" * (size - len(base)) + b'"')
    assert len(data) == size
    return data


def test_payload_of_exactly_64_kib_is_accepted() -> None:
    t, _ = accepted(padded_to(MAX_PAYLOAD_BYTES))
    assert MAX_PAYLOAD_BYTES == 65_536
    assert t == NOW


def test_payload_one_byte_over_64_kib_is_too_large() -> None:
    rejected(padded_to(MAX_PAYLOAD_BYTES + 1), "too_large", "payload is 65537 bytes", "over 65536")


def test_size_limit_counts_bytes_not_characters() -> None:
    base = payload(turn(x_padding=""))
    room = MAX_PAYLOAD_BYTES - len(base)
    fits = base.replace(b'""', ('"' + "é" * (room // 2) + '"').encode(), 1)
    assert len(fits) <= MAX_PAYLOAD_BYTES
    accepted(fits)
    over = base.replace(b'""', ('"' + "é" * (room // 2 + 1) + '"').encode(), 1)
    rejected(over, "too_large")


# -- occurred_at ------------------------------------------------------------------------------------


def test_occurred_at_without_zone_is_rejected() -> None:
    rejected(payload(turn(occurred_at="2026-11-01T10:00:00.000")), "schema", "timezone", "$.occurred_at")
    schema_rejects(turn(occurred_at="2026-11-01T10:00:00.000"))


def test_occurred_at_as_epoch_number_is_rejected() -> None:
    rejected(payload(turn(occurred_at=NOW)), "schema", "$.occurred_at")
    schema_rejects(turn(occurred_at=NOW))


def test_occurred_at_that_is_not_a_date_is_rejected() -> None:
    rejected(payload(turn(occurred_at="2026-02-30T10:00:00Z")), "schema", "$.occurred_at")
    schema_rejects(turn(occurred_at="2026-02-30T10:00:00Z"))


def test_occurred_at_before_2000_is_rejected() -> None:
    rejected(payload(turn(occurred_at="1999-12-31T23:59:59.999Z")), "out_of_range", "before 2000-01-01")


def test_occurred_at_before_2000_by_its_offset_is_rejected() -> None:
    rejected(payload(turn(occurred_at="2000-01-01T00:30:00+01:00")), "out_of_range", "before 2000-01-01")


def test_occurred_at_of_exactly_2000_is_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at="2000-01-01T00:00:00Z")))
    assert t == 946_684_800_000


def test_occurred_at_more_than_24_h_ahead_is_rejected() -> None:
    rejected(payload(turn(occurred_at=format_ms(NOW + 24 * HOUR + 1))), "out_of_range", "more than 24 h")


def test_occurred_at_exactly_24_h_ahead_is_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at=format_ms(NOW + 24 * HOUR))))
    assert t == NOW + 24 * HOUR


def test_occurred_at_in_the_far_future_is_rejected() -> None:
    rejected(payload(turn(occurred_at="9999-12-31T23:59:59Z")), "out_of_range", "more than 24 h")


def test_sub_microsecond_fraction_is_rounded_to_the_microsecond_then_truncated() -> None:
    """Documented in docs/events.md: digits beyond microseconds are rounded (msgspec), then the
    instant is truncated to the millisecond."""
    t, _ = accepted(payload(turn(occurred_at="2026-11-01T09:59:59.9999999Z")))
    assert t == NOW
    t, _ = accepted(payload(turn(occurred_at="2026-11-01T09:59:59.9994999Z")))
    assert t == NOW - 1


# -- money and plan limits --------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["0", "0.00", "-0.01", "-5.00"])
def test_funds_added_amount_not_above_zero_is_rejected(amount: str) -> None:
    rejected(payload(funds(amount)), "schema", "amount must be greater than zero")


def test_smallest_positive_amount_is_accepted() -> None:
    _, event = accepted(payload(funds("0.000001")))
    assert isinstance(event, FundsAdded)
    assert event.amount == "0.000001"


@pytest.mark.parametrize("field", ["price_per_usage_session", "price_per_alert_session", "price_per_voice_session"])
def test_negative_plan_price_is_rejected(field: str) -> None:
    rejected(payload(plan(**{field: "-0.01"})), "schema", f"{field} must not be negative")


def test_negative_low_balance_threshold_is_rejected() -> None:
    rejected(payload(plan(low_balance_threshold="-1.00")), "schema", "low_balance_threshold must not be negative")


def test_zero_plan_prices_are_accepted() -> None:
    zero = "0.00"
    accepted(payload(plan(price_per_usage_session=zero, price_per_alert_session=zero, price_per_voice_session=zero)))


@pytest.mark.parametrize(("minutes", "words"), [(4, "`int` >= 5"), (20161, "`int` <= 20160"), (-1, "`int` >= 5")])
def test_idle_timeout_out_of_range_is_rejected(minutes: int, words: str) -> None:
    rejected(payload(plan(idle_timeout_minutes=minutes)), "schema", words, "$.idle_timeout_minutes")
    schema_rejects(plan(idle_timeout_minutes=minutes))


@pytest.mark.parametrize("minutes", [5, 20160])
def test_idle_timeout_at_its_limits_is_accepted(minutes: int) -> None:
    _, event = accepted(payload(plan(idle_timeout_minutes=minutes)))
    assert isinstance(event, PlanChanged)
    assert event.idle_timeout_minutes == minutes
    schema_accepts(plan(idle_timeout_minutes=minutes))


@pytest.mark.parametrize("agents", [-1, 10_000_001])
def test_agents_out_of_range_is_rejected(agents: int) -> None:
    document = {key: value for key, value in funds("1").items() if key not in ("amount", "currency")}
    document |= {"type": "agents_subscribed", "agents": agents}
    rejected(payload(document), "schema", "$.agents")
    schema_rejects(document)


# -- valid edge cases ---------------------------------------------------------------------------------


def test_unknown_extra_fields_are_accepted() -> None:
    document = turn(x_new_field="v2", nested={"a": [1, 2.5, None, {"b": True}]}, priority=3)
    t, event = accepted(payload(document))
    assert t == NOW
    assert event == accepted(payload(turn()))[1]
    schema_accepts(document)


def test_offset_plus_05_30_is_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at="2026-11-01T15:30:00.250+05:30")))
    assert t == NOW + 250
    schema_accepts(turn(occurred_at="2026-11-01T15:30:00.250+05:30"))


def test_negative_offset_is_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at="2026-11-01T07:00:00-03:00")))
    assert t == NOW
    schema_accepts(turn(occurred_at="2026-11-01T07:00:00-03:00"))


def test_microseconds_are_truncated_to_milliseconds() -> None:
    t, event = accepted(payload(turn(occurred_at="2026-11-01T10:00:00.123999Z")))
    assert t == NOW + 123
    assert event.occurred_at == datetime(2026, 11, 1, 10, 0, 0, 123_999, tzinfo=UTC)
    schema_accepts(turn(occurred_at="2026-11-01T10:00:00.123999Z"))


def test_whole_seconds_are_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at="2026-11-01T10:00:01Z")))
    assert t == NOW + 1000


def test_lower_case_separator_and_zone_are_accepted() -> None:
    t, _ = accepted(payload(turn(occurred_at="2026-11-01t10:00:00.5z")))
    assert t == NOW + 500
    schema_accepts(turn(occurred_at="2026-11-01t10:00:00.5z"))


def test_ascii_escaped_unicode_is_accepted() -> None:
    data = json.dumps(turn(user_id="Zoë 😀")).encode("ascii")
    _, event = accepted(data)
    assert isinstance(event, ConversationTurn)
    assert event.user_id == "Zoë 😀"


def test_future_window_is_measured_from_now_ms() -> None:
    data = payload(turn())
    assert decode_event(data, NOW) == decode_event(data, NOW)
    future = payload(turn(occurred_at=format_ms(NOW + 2 * 24 * HOUR)))
    assert isinstance(decode_event(future, NOW), Rejection)
    assert not isinstance(decode_event(future, NOW + 24 * HOUR), Rejection)


def test_a_rejection_does_not_affect_the_next_event() -> None:
    for data in [b"\xff", b"[]", nested_extra(30_000), payload(turn(type="x"))]:
        assert isinstance(decode_event(data, NOW), Rejection)
        assert accepted(payload(turn()))[0] == NOW


# -- dead letters -----------------------------------------------------------------------------------


def test_dead_letter_keeps_a_small_payload_whole_with_its_size_and_digest() -> None:
    data = b"\xff\x00 not json"
    letter = dead_letter(data, Rejection("not_json", "x"), topic="t", partition=1, offset=7, received_at=RECEIVED)
    assert base64.b64decode(letter.payload_base64) == data
    assert (letter.payload_bytes, letter.payload_truncated) == (len(data), False)
    assert letter.payload_sha256 == hashlib.sha256(data).hexdigest()


def test_dead_letter_of_a_1_mib_payload_keeps_its_first_256_kib_and_fits_a_1_mb_message() -> None:
    """A whole 1 MiB payload would be 1.4 MB of base64, over the broker's default message limit."""
    data = random.Random(5).randbytes(1024 * 1024)
    letter = dead_letter(data, Rejection("too_large", "x"), topic="t", partition=0, offset=0, received_at=RECEIVED)
    assert base64.b64decode(letter.payload_base64) == data[:DEAD_LETTER_PAYLOAD_BYTES]
    assert (letter.payload_bytes, letter.payload_truncated) == (1024 * 1024, True)
    assert letter.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert len(encode(letter)) < 1_000_000
    assert schemas.validator("dead_letter").is_valid(json.loads(encode(letter)))
