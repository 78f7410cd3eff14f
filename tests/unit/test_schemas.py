"""The JSON Schema files in ``schemas/v1`` and the decoder in ``pipeline.contract.events`` describe one contract.

Generated valid events pass both, generated broken ones fail both, output records validate
against their schemas, and the field lists and limits of schema and struct are compared
directly, so a change on one side only fails here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import schemas
from pipeline.contract.decode import decode_input, to_ms
from pipeline.contract.events import (
    INPUT_TYPES,
    BalanceAlert,
    BillingSessionRecord,
    DeadLetter,
    InputEvent,
    LateRecord,
    Rejection,
    ms_to_datetime,
)
from tests.support import turn

NOW = to_ms(datetime(2026, 11, 1, 10, 0, tzinfo=UTC))
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = ms_to_datetime(NOW) + timedelta(hours=24)

INPUTS = sorted(INPUT_TYPES)
OUTPUTS: dict[str, type[msgspec.Struct]] = {
    "billing_session": BillingSessionRecord,
    "dead_letter": DeadLetter,
    "late_event": LateRecord,
    "balance_alert": BalanceAlert,
}
VALIDATORS = {name: schemas.validator(name) for name in schemas.names()}
EVENT_SCHEMA = VALIDATORS["event"]
COMMON = schemas.load("common")["$defs"]

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PER_TYPE = settings(PROPERTY, max_examples=35)  # x 6 types: ~200 per property


# -- the contract, written out from events.md (independently of the struct and the schema files) --


@dataclass(frozen=True)
class Field:
    kind: str  # id | channel | price | amount | decimal | currency | timestamp | bool | enum | int | type
    required: bool = True
    nullable: bool = False
    values: tuple[str, ...] = ()
    low: int = 0
    high: int = 0


ENVELOPE = {
    "type": Field("type"),
    "event_id": Field("id"),
    "occurred_at": Field("timestamp"),
    "account_id": Field("id"),
    "app_id": Field("id"),
}
OPTIONAL_ID = Field("id", required=False, nullable=True)
CONTRACT: dict[str, dict[str, Field]] = {
    "conversation_turn": ENVELOPE
    | {
        "conversation_id": Field("id"),
        "user_id": Field("id"),
        "channel": Field("channel"),
        "speaker": Field("enum", values=("user", "bot", "agent")),
        "end_of_conversation": Field("bool", required=False),
        "is_test": Field("bool", required=False),
        "message_id": OPTIONAL_ID,
    },
    "agent_transfer": ENVELOPE
    | {
        "conversation_id": Field("id"),
        "action": Field("enum", values=("started", "ended")),
        "agent_id": OPTIONAL_ID,
        "user_id": OPTIONAL_ID,
    },
    "alert_delivered": ENVELOPE
    | {
        "user_id": Field("id"),
        "alert_id": Field("id"),
        "channel": Field("channel", required=False, nullable=True),
        "is_test": Field("bool", required=False),
    },
    "plan_changed": ENVELOPE
    | {
        "plan": Field("id"),
        "price_per_usage_session": Field("price"),
        "price_per_alert_session": Field("price"),
        "price_per_voice_session": Field("price"),
        "currency": Field("currency", required=False),
        "low_balance_threshold": Field("price", required=False),
        "idle_timeout_minutes": Field("int", required=False, nullable=True, low=5, high=20160),
        "effective_at": Field("timestamp", required=False, nullable=True),
        "term_months": Field("int", required=False, nullable=True, low=1, high=120),
    },
    "funds_added": ENVELOPE | {"amount": Field("amount"), "currency": Field("currency", required=False)},
    "agents_subscribed": ENVELOPE | {"agents": Field("int", low=0, high=10_000_000)},
    "funds_refunded": ENVELOPE | {"amount": Field("amount"), "currency": Field("currency", required=False)},
    "extension_requested": ENVELOPE
    | {
        "request_id": Field("id"),
        "days": Field("int", low=1, high=366),
        "reason": Field("text"),
        "requested_by": OPTIONAL_ID,
    },
    "extension_granted": ENVELOPE | {"request_id": Field("id"), "days": Field("int", low=1, high=366)},
    "extension_declined": ENVELOPE
    | {"request_id": Field("id"), "reason": Field("text", required=False, nullable=True)},
    "owner_changed": ENVELOPE | {"user_id": Field("id"), "changed_by": OPTIONAL_ID},
    "account_changed": {k: v for k, v in ENVELOPE.items() if k != "app_id"}
    | {"billing_type": Field("enum", values=("prepaid", "enterprise"))},
}
STRING_KINDS = {"id", "channel", "price", "amount", "decimal", "currency", "timestamp", "enum", "type", "text"}
MAX_LENGTH = {"id": 128, "channel": 64, "text": 1000}


# -- strategies for valid values ------------------------------------------------------------------

# Any Unicode scalar value (no lone surrogates: they cannot be sent as UTF-8), astral planes included.
TEXT = st.characters(codec="utf-8")


def bounded_text(max_size: int) -> st.SearchStrategy[str]:
    """1..max_size characters, with both boundary lengths drawn often."""
    exact = st.sampled_from([1, max_size]).flatmap(lambda n: st.text(TEXT, min_size=n, max_size=n))
    return st.one_of(exact, st.text(TEXT, min_size=1, max_size=max_size))


def decimal_strings(*, negative: bool) -> st.SearchStrategy[str]:
    sign = r"-?" if negative else ""
    return st.from_regex(rf"\A{sign}[0-9]{{1,15}}(\.[0-9]{{1,6}})?\Z")


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": bounded_text(128),
    "channel": st.one_of(st.sampled_from(["web", "slack", "msteams", "whatsapp", "voice", "ivr"]), bounded_text(64)),
    "price": decimal_strings(negative=False),
    "amount": decimal_strings(negative=False).filter(lambda s: Decimal(s) > 0),
    "decimal": decimal_strings(negative=True),
    "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
    "bool": st.booleans(),
    "text": bounded_text(1000),
}


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, int]:
    """An RFC 3339 string inside the accepted window and the millisecond the decoder must give it."""
    instant = draw(
        st.one_of(
            st.sampled_from([EARLIEST, LATEST]),
            st.datetimes(EARLIEST.replace(tzinfo=None), LATEST.replace(tzinfo=None)).map(
                lambda d: d.replace(tzinfo=UTC)
            ),
        )
    )
    offset = draw(st.one_of(st.sampled_from([0, 330, -180, 345, -570]), st.integers(-(24 * 60 - 1), 24 * 60 - 1)))
    digits = draw(st.integers(0, 6))
    local = instant.astimezone(UTC) + timedelta(minutes=offset)
    fraction = f".{local.microsecond:06d}"[: digits + 1] if digits else ""
    if offset == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "z"]))
    else:
        sign = "-" if offset < 0 or (offset == 0 and draw(st.booleans())) else "+"
        zone = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    separator = draw(st.sampled_from(["T", "T", "t"]))
    text = local.strftime(f"%Y-%m-%d{separator}%H:%M:%S") + fraction + zone
    kept = local.microsecond - local.microsecond % 10 ** (6 - digits)
    return text, to_ms(instant.replace(microsecond=kept))


def value_of(field: Field) -> st.SearchStrategy[Any]:
    if field.kind == "enum":
        return st.sampled_from(field.values)
    if field.kind == "int":
        base = st.one_of(st.sampled_from([field.low, field.high]), st.integers(field.low, field.high))
    elif field.kind == "timestamp":
        base = timestamps().map(lambda stamp: stamp[0])
    else:
        base = VALUES[field.kind]
    return st.one_of(st.none(), base) if field.nullable else base


EXTRA_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(TEXT, max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_events(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], int]:
    """A valid event of type ``kind`` (optional fields present or not) and its expected time."""
    fields = CONTRACT[kind]
    occurred_at, t = draw(timestamps())
    required = {name: value_of(f) for name, f in fields.items() if f.required and f.kind not in ("type", "timestamp")}
    optional = {name: value_of(f) for name, f in fields.items() if not f.required}
    optional["x_forward_compatible"] = EXTRA_JSON  # an unknown field: allowed and ignored
    event = draw(st.fixed_dictionaries(required, optional=optional))
    return {"type": kind, "occurred_at": occurred_at, **event}, t


def encode(document: object, *, ascii_only: bool = False) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8")


# -- (a) the schema files themselves ---------------------------------------------------------------


#: The billing-orders records (their own tests: tests/unit/test_orders.py).
ORDER_RECORDS = {"order_created", "payment_updated", "order_state", "invoice_issued"}


def test_every_expected_schema_file_exists() -> None:
    assert set(schemas.names()) == {"common", "event", *INPUTS, *OUTPUTS, *ORDER_RECORDS}


@pytest.mark.parametrize("name", schemas.names())
def test_schema_file_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://metering.local/schemas/v1/{name}.json"
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("name", [*INPUTS, *OUTPUTS])
def test_every_property_is_described(name: str) -> None:
    properties = schemas.load(name)["properties"]
    undocumented = [key for key, value in properties.items() if not value.get("description")]
    assert not undocumented or undocumented == ["schema_version"]  # described once, in common.json
    assert COMMON["schema_version"]["description"]


def test_every_ref_resolves_offline() -> None:
    for name in schemas.names():
        resolver = schemas.registry().resolver(base_uri=schemas.load(name)["$id"])
        for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(schemas.load(name))):
            assert resolver.lookup(ref).contents, ref


def test_date_time_format_is_checked_even_without_optional_packages() -> None:
    timestamp = {"$ref": "common.json#/$defs/timestamp"}
    checker = Draft202012Validator(
        {"$id": "https://metering.local/schemas/v1/probe.json", **timestamp}, registry=schemas.registry()
    )
    assert checker.is_valid("2026-02-30T10:00:00Z")  # the pattern alone cannot know February
    for name in INPUTS:
        event = {"type": name, "occurred_at": "2026-02-30T10:00:00Z"}
        assert any("date-time" in error.message for error in VALIDATORS[name].iter_errors(event))


# -- (b) valid events are accepted by both ---------------------------------------------------------


@pytest.mark.parametrize("kind", INPUTS)
@PER_TYPE
@given(data=st.data())
def test_valid_events_pass_schema_and_decoder(kind: str, data: st.DataObject) -> None:
    document, t = data.draw(valid_events(kind))
    errors = [error.message for error in VALIDATORS[kind].iter_errors(document)]
    assert not errors
    assert EVENT_SCHEMA.is_valid(document)

    result = decode_input(encode(document, ascii_only=data.draw(st.booleans())), NOW)
    assert not isinstance(result, Rejection), result
    got_t, event = result
    assert got_t == t
    assert type(event) is INPUT_TYPES[kind]
    for name, field in CONTRACT[kind].items():
        if name in document and field.kind not in ("type", "timestamp"):
            assert getattr(event, name) == document[name], name

    # round trip: the struct encodes to a document the schema accepts and decodes to itself
    encoded = msgspec.json.encode(event)
    assert VALIDATORS[kind].is_valid(json.loads(encoded))
    assert msgspec.json.decode(encoded, type=InputEvent) == event
    again = decode_input(encoded, NOW)
    assert not isinstance(again, Rejection)
    assert again == (t, event)


# -- (c) broken events are rejected by both --------------------------------------------------------

NOT_A_DECIMAL = ["1e3", "1,50", "+1", ".5", "1.", " 1", "1 ", "NaN", "Infinity", "0x10", "١٢", "1.1234567"]
NOT_A_CURRENCY = ["usd", "US", "USDD", "U5D", " USD", "€"]
NOT_A_TIMESTAMP = [
    "2026-11-01",
    "2026-11-01T10:00Z",
    "2026-11-01T24:00:00Z",
    "2026-11-01T10:00:60Z",
    "2026-02-30T10:00:00Z",
    "2026-11-01T10:00:00.Z",
    "2026-11-01T10:00:00+24:00",
    "2026-11-01T10:00:00+05",
    "1793527200000",
]


def wrong_types(field: Field) -> list[Any]:
    """JSON values of a type the field does not take (never null where null is allowed)."""
    values: list[Any] = [[], {"a": 1}]
    if field.kind in STRING_KINDS:
        values += [17, 1.5, True]
    elif field.kind == "bool":
        values += ["true", 0, 1]
    elif field.kind == "int":
        values += [str(field.low), field.low + 0.5, True]
    if not field.nullable:
        values.append(None)
    return values


MUTATIONS: dict[str, Callable[[Field], bool]] = {
    "drop": lambda f: f.required,
    "wrong_type": lambda f: True,
    "empty": lambda f: f.kind in STRING_KINDS,
    "too_long": lambda f: f.kind in MAX_LENGTH,
    "bad_value": lambda f: f.kind in ("price", "amount", "decimal", "currency", "timestamp", "int"),
    "bad_enum": lambda f: f.kind in ("enum", "type"),
    "no_zone": lambda f: f.kind == "timestamp",
}


@st.composite
def broken_events(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], str, str]:
    """An event of ``kind`` with one thing wrong: (document, what was done, expected rejection code)."""
    document, _ = draw(valid_events(kind))
    fields = CONTRACT[kind]
    # Pick the mutation first, so rare ones (bad enum, no zone) are drawn as often as common ones.
    targets = {mutation: [n for n, f in fields.items() if applies(f)] for mutation, applies in MUTATIONS.items()}
    mutation = draw(st.sampled_from([mutation for mutation, names in targets.items() if names]))
    name = draw(st.sampled_from(targets[mutation]))
    field = fields[name]

    value: Any
    if mutation == "drop":
        document.pop(name, None)
    else:
        if mutation == "wrong_type":
            value = draw(st.sampled_from(wrong_types(field)))
        elif mutation == "empty":
            value = ""
        elif mutation == "too_long":
            value = draw(st.text(TEXT, min_size=MAX_LENGTH[field.kind] + 1, max_size=MAX_LENGTH[field.kind] + 200))
        elif mutation == "bad_enum":
            known = set(field.values) if field.kind == "enum" else set(INPUTS)
            value = draw(st.text(TEXT, max_size=20).filter(lambda s: s not in known))
        elif mutation == "no_zone":
            value = re.sub(r"([Zz]|[+-][0-9]{2}:[0-9]{2})$", "", document.get(name) or "2026-11-01T10:00:00Z")
        elif field.kind == "int":
            value = draw(st.sampled_from([field.low - 1, field.high + 1, -(2**63), 2**64]))
        elif field.kind == "currency":
            value = draw(st.sampled_from(NOT_A_CURRENCY))
        elif field.kind == "timestamp":
            value = draw(st.sampled_from(NOT_A_TIMESTAMP))
        else:
            value = draw(st.sampled_from([*NOT_A_DECIMAL, "1" * 16, "1." + "0" * 7]))
        document[name] = value
    code = "unknown_type" if name == "type" else "schema"
    return document, f"{mutation} {name}", code


@pytest.mark.parametrize("kind", INPUTS)
@PER_TYPE
@given(data=st.data())
def test_broken_events_fail_schema_and_decoder(kind: str, data: st.DataObject) -> None:
    document, what, code = data.draw(broken_events(kind))
    assert not VALIDATORS[kind].is_valid(document), what
    assert not EVENT_SCHEMA.is_valid(document), what
    result = decode_input(encode(document), NOW)
    assert isinstance(result, Rejection), what
    assert result.code == code, (what, result)


@PROPERTY
@given(st.sampled_from(INPUTS).flatmap(valid_events), st.text(TEXT, max_size=30))
def test_unknown_type_fails_both(event: tuple[dict[str, Any], int], kind: str) -> None:
    document = event[0] | {"type": kind}
    if kind in INPUT_TYPES:
        return
    assert not EVENT_SCHEMA.is_valid(document)
    result = decode_input(encode(document), NOW)
    assert isinstance(result, Rejection)
    assert result.code == "unknown_type"


def test_trailing_newline_fails_the_schema() -> None:
    """Python's ``$`` matches before a final newline; the schema patterns guard against it."""
    funds = {
        "type": "funds_added",
        "event_id": "e",
        "occurred_at": "2026-11-01T10:00:00Z",
        "account_id": "a",
        "app_id": "b",
        "amount": "1",
    }
    assert VALIDATORS["funds_added"].is_valid(funds)
    for name, value in [("amount", "10.00\n"), ("currency", "USD\n"), ("occurred_at", "2026-11-01T10:00:00Z\n")]:
        assert not VALIDATORS["funds_added"].is_valid(funds | {name: value}), name


def test_decoder_is_more_lenient_than_the_schema_on_timestamp_forms() -> None:
    """Known divergence (msgspec's RFC 3339 parser): a space separator and a colon-less offset.

    events.md asks for ``Z`` or ``+hh:mm``; the schema says so, the decoder also takes these forms.
    If the decoder is ever made strict, this test fails: delete it then.
    """
    base = {"type": "agents_subscribed", "event_id": "e", "account_id": "a", "app_id": "b", "agents": 1}
    for stamp in ["2026-11-01 10:00:00Z", "2026-11-01T15:30:00+0530"]:
        document = base | {"occurred_at": stamp}
        assert not VALIDATORS["agents_subscribed"].is_valid(document), stamp
        assert not isinstance(decode_input(encode(document), NOW), Rejection), stamp


# -- (d) output records validate against their schemas --------------------------------------------

T = ms_to_datetime(NOW)
VALID_TURN = encode(turn(x_extra={"nested": [1, 2]}))
BALANCES: list[tuple[Literal["low", "depleted", "recovered"], str]] = [
    ("low", "49.99"),
    ("depleted", "-0.15"),
    ("recovered", "120.00"),
]
OUTPUT_SAMPLES: list[tuple[str, object]] = [
    (
        "billing_session",
        BillingSessionRecord(
            billing_session_id="bs-1",
            kind="usage",
            account_id="acme",
            app_id="support-bot",
            conversation_session_id="cs-1",
            conversation_id="c-881",
            user_id="u-17",
            channel="web",
            session_index=0,
            started_at=T,
            ended_at=T + timedelta(minutes=15, milliseconds=7),
            conversation_started_at=T,
            conversation_ended_at=T + timedelta(minutes=20),
            bot_ms=60_000,
            agent_ms=0,
        ),
    ),
    (
        "billing_session",
        BillingSessionRecord(
            billing_session_id="bs-2",
            kind="alert",
            account_id="acme",
            app_id="support-bot",
            conversation_session_id=None,
            conversation_id=None,
            user_id="u-17",
            channel=None,
            session_index=0,
            started_at=T,
            ended_at=T,
            alert_id="al-1",
        ),
    ),
    (
        "dead_letter",
        DeadLetter(
            reason="not_json: JSON is malformed: invalid character (byte 0)",
            code="not_json",
            payload_base64=base64.b64encode(b"\xff\x00 not json").decode(),
            source_topic="conversation-turns",
            source_partition=3,
            source_offset=1_234_567,
            received_at=T,
            payload_bytes=10,
            payload_sha256=hashlib.sha256(b"\xff\x00 not json").hexdigest(),
        ),
    ),
    (
        "late_event",
        LateRecord(
            reason="session already final",
            event=msgspec.Raw(VALID_TURN),
            app_id="support-bot",
            event_id="7f9c-01",
            occurred_at=T,
            partition_clock=T + timedelta(hours=1, microseconds=123_000),
            source_topic="conversation-turns",
            source_partition=0,
            source_offset=0,
        ),
    ),
    *[
        (
            "balance_alert",
            BalanceAlert(
                alert_event_id=f"ba-{state}",
                account_id="acme",
                app_id="support-bot",
                state=state,
                balance=balance,
                threshold="50.00",
                currency="USD",
                occurred_at=T,
            ),
        )
        for state, balance in BALANCES
    ],
]


@pytest.mark.parametrize(
    ("name", "record"), OUTPUT_SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OUTPUT_SAMPLES)]
)
def test_output_record_validates_against_its_schema(name: str, record: object) -> None:
    document = json.loads(msgspec.json.encode(record))
    errors = [f"{list(error.path)}: {error.message}" for error in VALIDATORS[name].iter_errors(document)]
    assert not errors


def test_every_output_struct_has_a_sample() -> None:
    assert {type(record) for _, record in OUTPUT_SAMPLES} == set(OUTPUTS.values())


def test_output_schema_rejects_what_the_struct_would_never_write() -> None:
    document = json.loads(msgspec.json.encode(OUTPUT_SAMPLES[0][1]))
    for broken in [
        document | {"kind": "chat"},
        document | {"surprise": 1},
        {k: v for k, v in document.items() if k != "bot_ms"},
        document | {"started_at": "2026-11-01T10:00:00"},
        document | {"schema_version": "v2"},
    ]:
        assert not VALIDATORS["billing_session"].is_valid(broken)
    late = json.loads(msgspec.json.encode(OUTPUT_SAMPLES[3][1]))
    assert not VALIDATORS["late_event"].is_valid(late | {"event": {"type": "conversation_turn"}})


# -- (e) the field lists and limits of schema and struct are the same -----------------------------


def constraints_of_struct(info: msgspec.inspect.Type) -> dict[str, Any]:
    """The limits of one struct field type, in JSON Schema words."""
    if isinstance(info, msgspec.inspect.UnionType):
        (inner,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return constraints_of_struct(inner) | {"nullable": True}
    if isinstance(info, msgspec.inspect.StrType):
        out = {"type": "string", "minLength": info.min_length, "maxLength": info.max_length, "pattern": info.pattern}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(info, msgspec.inspect.IntType):
        assert (info.gt, info.lt, info.multiple_of) == (None, None, None)
        out = {"type": "integer", "minimum": info.ge, "maximum": info.le}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(info, msgspec.inspect.BoolType):
        return {"type": "boolean"}
    if isinstance(info, msgspec.inspect.LiteralType):
        return {"enum": sorted(info.values)}
    if isinstance(info, msgspec.inspect.DateTimeType):
        assert info.tz is True  # occurred_at must carry a zone
        return {"type": "string", "format": "date-time"}
    raise AssertionError(f"no JSON Schema mapping for {info!r}")


def constraints_of_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The limits of one schema property ($refs into common.json followed), in the same words."""
    if "anyOf" in prop:
        (inner,) = [p for p in prop["anyOf"] if p != {"type": "null"}]
        assert {"type": "null"} in prop["anyOf"]
        return constraints_of_schema(inner) | {"nullable": True}
    if "$ref" in prop:
        prop = COMMON[prop["$ref"].removeprefix("common.json#/$defs/")] | prop
    keys = ("type", "minLength", "maxLength", "pattern", "minimum", "maximum", "enum", "format")
    out = {k: prop[k] for k in keys if k in prop}
    if "enum" in out:
        out["enum"] = sorted(out["enum"])
    if out.get("format") == "date-time":
        del out["pattern"]  # the zone pattern is the schema's spelling of tz=True
    return out


@pytest.mark.parametrize("kind", INPUTS)
def test_input_schema_has_exactly_the_struct_fields(kind: str) -> None:
    schema = schemas.load(kind)
    struct = INPUT_TYPES[kind]
    fields = msgspec.structs.fields(struct)
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    tag = info.tag_field
    assert tag == "type"
    assert set(schema["properties"]) == {tag} | {f.encode_name for f in fields}
    assert set(schema["required"]) == {tag} | {f.encode_name for f in fields if f.required}
    assert schema["properties"][tag] == {"const": kind, "description": schema["properties"][tag]["description"]}
    assert schema["additionalProperties"] is True
    # ... and the contract written out above from events.md says the same
    assert set(CONTRACT[kind]) == set(schema["properties"])
    assert {n for n, f in CONTRACT[kind].items() if f.required} == set(schema["required"])


@pytest.mark.parametrize("kind", INPUTS)
def test_input_schema_has_the_struct_limits_and_defaults(kind: str) -> None:
    schema = schemas.load(kind)
    info = msgspec.inspect.type_info(INPUT_TYPES[kind])
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        prop = schema["properties"][field.encode_name]
        assert constraints_of_schema(prop) == constraints_of_struct(field.type), field.name
        if not field.required:
            assert prop["default"] == field.default, field.name


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_schema_has_exactly_the_struct_fields(name: str) -> None:
    schema = schemas.load(name)
    fields = {f.encode_name for f in msgspec.structs.fields(OUTPUTS[name])}
    assert set(schema["properties"]) == fields
    assert set(schema["required"]) == fields  # msgspec writes every field, defaults included
    assert schema["additionalProperties"] is False


def test_event_schema_is_the_union_of_the_input_schemas() -> None:
    schema = schemas.load("event")
    assert sorted(branch["$ref"] for branch in schema["oneOf"]) == sorted(f"{k}.json" for k in INPUTS)
    assert sorted(schema["properties"]["type"]["enum"]) == INPUTS


def test_a_billing_session_record_without_the_conversation_span_or_alert_id_still_decodes() -> None:
    """The three fields the sessions export needs are optional on read: a record written before them decodes."""
    old = (
        b'{"billing_session_id":"bs-1","kind":"usage","account_id":"acme","app_id":"support-bot",'
        b'"conversation_session_id":"cs-1","conversation_id":"c-1","user_id":"u-1","channel":"web",'
        b'"session_index":0,"started_at":"2026-11-01T10:00:00Z","ended_at":"2026-11-01T10:15:00Z",'
        b'"bot_ms":900000,"agent_ms":0,"schema_version":"v1"}'
    )
    record = msgspec.json.decode(old, type=BillingSessionRecord)
    assert (record.conversation_started_at, record.conversation_ended_at, record.alert_id) == (None, None, None)
