"""Realistic synthetic traffic: the demo generator, the benchmarks and the end-to-end tests use it.

Conversations on several channels with idle gaps, human-agent transfers (some left open),
end-of-conversation markers, test and bot-only sessions, alerts, producer duplicates and a
little arrival jitter, all from one seed so that every run is reproducible.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

import msgspec

from pipeline.contract.events import format_ms
from pipeline.rules.config import MINUTE, SECOND

CHANNELS = (("web", 45), ("whatsapp", 20), ("slack", 8), ("msteams", 7), ("voice", 12), ("ivr", 8))


@dataclass(frozen=True)
class TrafficShape:
    accounts: int = 8
    apps_per_account: int = 4
    conversations_per_minute: float = 40.0
    alert_share: float = 0.08
    transfer_share: float = 0.15
    open_transfer_share: float = 0.02
    test_share: float = 0.02
    bot_only_share: float = 0.03
    duplicate_share: float = 0.01
    jitter_ms: int = 5 * SECOND


#: Mean events per conversation of the default shape (alerts, transfers and duplicates
#: included), measured as ``live``'s rate over hours: it turns an event rate into a
#: conversation rate.
EVENTS_PER_CONVERSATION: Final = 10.2
LIVE_WARMUP_MS: Final = 15 * MINUTE

_encode = msgspec.json.Encoder().encode


def events(start_ms: int, count: int, seed: int = 7, shape: TrafficShape | None = None) -> Iterator[dict[str, Any]]:
    """``count`` events from ``start_ms`` on, in arrival order (time order plus jitter)."""
    for _, event in itertools.islice(_arrivals(start_ms, random.Random(seed), shape or TrafficShape(), "conv-"), count):
        yield event


def live(
    start_ms: int,
    rate: float,
    seed: int,
    *,
    shape: TrafficShape | None = None,
    conversation_prefix: str = "conv-",
    warmup_ms: int = LIVE_WARMUP_MS,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless ``(due_ms, event)`` pairs at about ``rate`` events/s, for pacing against the wall clock.

    ``due_ms`` is when the event arrives (its ``occurred_at`` plus up to ``jitter_ms``), from
    ``start_ms`` on and never decreasing. The model runs ``warmup_ms`` before ``start_ms`` and
    what would have arrived earlier is dropped, so the stream starts with conversations in
    progress at about 80% of its steady rate (the long conversations fill in the rest) instead
    of at a seventh of it. ``conversation_prefix`` keeps conversation ids of one run apart from
    another's.
    """
    if rate <= 0:
        raise ValueError(f"rate must be greater than 0 events/s, not {rate}")
    shape = replace(shape or TrafficShape(), conversations_per_minute=rate * 60 / EVENTS_PER_CONVERSATION)
    for due, event in _arrivals(start_ms - warmup_ms, random.Random(seed), shape, conversation_prefix):
        if due >= start_ms:
            yield due, event


def apps(shape: TrafficShape | None = None) -> list[tuple[str, str]]:
    """``(account_id, app_id)`` of every app the traffic can come from."""
    shape = shape or TrafficShape()
    return [(f"acct-{a:02d}", f"app-{a:02d}-{b}") for a in range(shape.accounts) for b in range(shape.apps_per_account)]


def _arrivals(
    start_ms: int, rng: random.Random, shape: TrafficShape, conversation_prefix: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless ``(arrival_ms, event)`` in arrival order: ``events`` and ``live`` are views of it.

    The order of the ``rng`` calls is the seeds' contract: tests pin the traffic of a seed.
    """
    all_apps = apps(shape)
    names, weights = zip(*CHANNELS, strict=True)
    pending: list[tuple[int, int, dict[str, Any]]] = []
    seq = 0
    now = start_ms
    conv_no = 0
    while True:
        now += int(rng.expovariate(shape.conversations_per_minute) * MINUTE)
        for ev in _conversation(rng, shape, all_apps, names, weights, now, f"{conversation_prefix}{conv_no}"):
            arrival = ev["_t"] + rng.randint(0, shape.jitter_ms)
            heapq.heappush(pending, (arrival, seq, ev))
            seq += 1
        conv_no += 1
        while pending and pending[0][0] <= now:
            arrival, _, ev = heapq.heappop(pending)
            yield arrival, _public(ev)
            if rng.random() < shape.duplicate_share:
                yield arrival, _public(ev)


def encode(event: dict[str, Any]) -> bytes:
    return _encode(event)


def with_resent_copies(lines: Iterable[bytes], *, share: float, within: int, seed: int) -> Iterator[bytes]:
    """``lines`` with a copy of ``share`` of them re-sent up to ``within`` lines later.

    What an export from an at-least-once pipeline looks like: a producer that did not see its
    acknowledgement sends a batch again a little later, often after the conversation session of
    those events has become final. Each copy is byte for byte its original.
    """
    rng = random.Random(seed)
    later: dict[int, list[bytes]] = {}
    for i, line in enumerate(lines):
        yield line
        if rng.random() < share:
            later.setdefault(i + rng.randint(1, within), []).append(line)
        yield from later.pop(i, ())
    for i in sorted(later):
        yield from later[i]


def _public(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != "_t"}


def _conversation(  # noqa: PLR0917
    rng: random.Random,
    shape: TrafficShape,
    apps: list[tuple[str, str]],
    channels: tuple[str, ...],
    weights: tuple[int, ...],
    start: int,
    conv: str,
) -> list[dict[str, Any]]:
    account, app = apps[int(rng.paretovariate(1.2)) % len(apps)]
    user = f"u-{rng.randrange(200_000)}"
    if rng.random() < shape.alert_share * 2:
        return [
            _base(rng, "alert_delivered", start, account, app)
            | {
                "user_id": user,
                "alert_id": f"sub-{rng.randrange(50)}",
                "channel": rng.choice(channels),
                **({"is_test": True} if rng.random() < shape.test_share else {}),
            }
        ]
    channel = rng.choices(channels, weights)[0]
    test = rng.random() < shape.test_share
    bot_only = rng.random() < shape.bot_only_share
    turns = 1 + int(rng.expovariate(1 / 11))
    transfer_at = rng.randrange(turns) if rng.random() < shape.transfer_share else -1
    out: list[dict[str, Any]] = []
    t = start
    transfer_open = False
    for i in range(turns):
        speaker = "bot" if bot_only or i % 2 else "user"
        if transfer_open:
            speaker = rng.choice(("user", "agent"))
        turn = _base(rng, "conversation_turn", t, account, app) | {
            "conversation_id": conv,
            "user_id": user,
            "channel": channel,
            "speaker": speaker,
        }
        if test:
            turn["is_test"] = True
        out.append(turn)
        if i == transfer_at:
            t += rng.randint(1, 20) * SECOND
            out.append(_transfer(rng, t, account=account, app=app, conv=conv, action="started"))
            transfer_open = True
        elif transfer_open and rng.random() < 0.25 and rng.random() > shape.open_transfer_share * 10:
            t += rng.randint(1, 30) * SECOND
            out.append(_transfer(rng, t, account=account, app=app, conv=conv, action="ended"))
            transfer_open = False
        gap = rng.random()
        t += int(rng.uniform(20 * MINUTE, 40 * MINUTE)) if gap < 0.02 else int(rng.expovariate(1 / 45) * SECOND) + 500
    if transfer_open and rng.random() > shape.open_transfer_share * 10:
        out.append(_transfer(rng, t, account=account, app=app, conv=conv, action="ended"))
    if rng.random() < 0.6 and out[-1]["type"] == "conversation_turn":
        out[-1]["end_of_conversation"] = True
    return out


def _transfer(rng: random.Random, t: int, *, account: str, app: str, conv: str, action: str) -> dict[str, Any]:
    return _base(rng, "agent_transfer", t, account, app) | {
        "conversation_id": conv,
        "action": action,
        "agent_id": f"agent-{rng.randrange(40)}",
    }


def _base(rng: random.Random, kind: str, t: int, account: str, app: str) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": f"{rng.getrandbits(64):016x}",
        "occurred_at": format_ms(t),
        "account_id": account,
        "app_id": app,
        "_t": t,
    }
