"""10,000 hostile messages of known kinds, each with the dead-letter code the spec gives it (R10, docs/events.md)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pipeline.infra.settings import Settings
from tests.faults.harness import Outgoing
from tests.support import T0

MIB: Final = 1 << 20
LARGE: Final = 600 << 10  # over the 256 KiB a dead letter keeps: its dead letter holds a prefix and the digest

#: kind: (how many, the dead-letter code the spec gives it)
KINDS: Final = {
    "random_bytes": (2000, "not_json"),
    "invalid_utf8": (1000, "not_json"),
    "deep_json": (500, "not_json"),
    "not_an_object": (500, "not_an_object"),
    "huge_json": (200, "too_large"),
    "large": (20, "too_large"),
    "wrong_types": (1500, "schema"),
    "missing_fields": (1500, "schema"),
    "far_future": (1000, "out_of_range"),
    "before_2000": (1000, "out_of_range"),
    "unknown_type": (780, "unknown_type"),
}


def _turn(i: int, **changes: Any) -> dict[str, Any]:
    doc = {
        "type": "conversation_turn",
        "event_id": f"hostile-{i}",
        "occurred_at": "2026-11-01T10:30:00.000Z",
        "account_id": "acme",
        "app_id": "support-bot",
        "conversation_id": f"hostile-conv-{i % 97}",
        "user_id": f"u-{i}",
        "channel": "web",
        "speaker": "user",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def _payload(kind: str, i: int, rng: random.Random) -> bytes:  # noqa: PLR0911, PLR0912 - one branch per kind of hostile payload
    if kind == "random_bytes":
        return b"\xfe" + rng.randbytes(rng.randint(8, 400)) + i.to_bytes(4, "big")
    if kind == "invalid_utf8":
        return json.dumps(_turn(i)).encode().replace(b'"u-%d"' % i, b'"u-\xff\xfe%d"' % i)
    if kind == "deep_json":
        depth = 2000 + i
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "not_an_object":
        return rng.choice([b"[1, 2, %d]", b"%d", b'"text %d"', b"[null, %d]"]) % i
    if kind == "huge_json":
        return json.dumps(_turn(i, user_id="u" * (70_000 + i))).encode()
    if kind == "large":
        return json.dumps(_turn(i, user_id="x" * LARGE)).encode()
    if kind == "one_mib":
        return json.dumps(_turn(i, user_id="x" * MIB)).encode()
    if kind == "wrong_types":
        field, value = rng.choice([("speaker", 5), ("occurred_at", T0 + i), ("user_id", ["u"]), ("is_test", "yes")])
        return json.dumps(_turn(i, **{field: value})).encode()
    if kind == "missing_fields":
        return json.dumps(_turn(i, **{rng.choice(["event_id", "occurred_at", "app_id", "speaker"]): None})).encode()
    if kind == "far_future":
        if i % 2:
            when = f"{rng.choice([2100, 3000, 9999])}-12-{1 + i % 28:02d}T00:00:00.000Z"
        else:  # just over the 24 h the contract allows, from the real clock: never becomes valid with time
            soon = datetime.now(UTC) + timedelta(days=2, minutes=i)
            when = soon.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return json.dumps(_turn(i, occurred_at=when)).encode()
    if kind == "before_2000":
        return json.dumps(_turn(i, occurred_at=f"19{70 + i % 29}-06-01T00:00:00.000Z")).encode()
    if kind == "unknown_type":
        return json.dumps(_turn(i, type=rng.choice(["conversation_tun", "refund", "", "CONVERSATION_TURN"]))).encode()
    raise ValueError(kind)


def hostile_messages(
    settings: Settings, seed: int, kinds: dict[str, tuple[int, str]] = KINDS
) -> list[tuple[Outgoing, str]]:
    """Every hostile message with its expected code, on the input topics, keyed at random; all payloads distinct."""
    rng = random.Random(seed)
    topics = [settings.topics.turns, settings.topics.transfers, settings.topics.alerts]
    out: list[tuple[Outgoing, str]] = []
    i = 0
    for kind, (count, code) in kinds.items():
        for _ in range(count):
            i += 1
            key = rng.choice([None, f"k-{rng.randint(0, 999)}".encode()])
            out.append(((rng.choice(topics), key, _payload(kind, i, rng)), code))
    assert len({message[2] for message, _ in out}) == len(out) == sum(count for count, _ in kinds.values())
    return out
