"""10,000 hostile messages in valid traffic: each on the DLQ with its reason, memory bounded, valid billed exactly."""

from __future__ import annotations

import base64
import collections
import hashlib
import random
from pathlib import Path

import msgspec
import pytest

from pipeline.contract.events import DEAD_LETTER_PAYLOAD_BYTES, DeadLetter
from pipeline.infra.settings import Settings
from tests.faults.harness import (
    Outgoing,
    RssSampler,
    StoreProcess,
    WorkerPool,
    check_exact,
    keyed,
    produce_all,
    read_topic,
    rss_mib,
    scrape,
    topic_count,
    traffic_lines,
)
from tests.faults.hostile import MIB, hostile_messages
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 71
#: What the worker may grow by while it meters the mix. It holds no hostile payload longer
#: than its batch: the 20 payloads of 600 KiB with their base64 dead letters, kept, would
#: take 30 MiB, the 10,000 messages with their dead letters several times that.
MAX_GROWTH_MIB = 150.0


def mix(settings: Settings, lines: list[bytes], hostile: list[tuple[Outgoing, str]], seed: int) -> list[Outgoing]:
    """The valid events in their order, the hostile messages at random places among them."""
    rng = random.Random(seed)
    slots = [(float(i), message) for i, message in enumerate(keyed(settings, lines))]
    slots += [(rng.uniform(0, len(lines)), message) for message, _ in hostile]
    return [message for _, message in sorted(slots, key=lambda slot: slot[0])]


def original(letter: DeadLetter, expected: dict[bytes, tuple[str, str]]) -> bytes:
    """The hostile message a dead letter stands for: its bytes, or the one its prefix, size and SHA-256 name."""
    kept = base64.b64decode(letter.payload_base64)
    if not letter.payload_truncated:
        assert letter.payload_bytes == len(kept)
        assert letter.payload_sha256 == hashlib.sha256(kept).hexdigest()
        return kept
    assert len(kept) == DEAD_LETTER_PAYLOAD_BYTES < letter.payload_bytes
    (payload,) = [
        p
        for p in expected
        if len(p) == letter.payload_bytes
        and p.startswith(kept)
        and hashlib.sha256(p).hexdigest() == letter.payload_sha256
    ] or [kept]
    return payload


def check_dead_letters(settings: Settings, hostile: list[tuple[Outgoing, str]]) -> None:
    """Each hostile message once on the DLQ, with its original bytes, its source, the expected code and a reason."""
    expected = {payload: (topic, code) for (topic, _, payload), code in hostile}
    wait_until(lambda: topic_count(settings, settings.topics.dlq) >= len(hostile), 60, "every dead letter")
    letters = [msgspec.json.decode(v, type=DeadLetter) for v in read_topic(settings, settings.topics.dlq)]
    got = {original(letter, expected): letter for letter in letters}
    assert len(letters) == len(got) == len(hostile), "each hostile message exactly once on the DLQ"
    assert got.keys() == expected.keys(), "the DLQ holds the original bytes (or their prefix and digest)"
    wrong = [
        (letter.source_topic, letter.code, expected[payload], payload[:80])
        for payload, letter in got.items()
        if (letter.source_topic, letter.code) != expected[payload]
    ]
    assert not wrong, f"{len(wrong)} dead letters with another source or code, e.g. {wrong[:3]}"
    assert all(letter.reason for letter in letters), "every dead letter says why"
    print("dead letters by code:", dict(collections.Counter(letter.code for letter in letters)))


def test_hostile_messages_go_to_the_dlq_with_a_reason_and_valid_events_are_billed_exactly(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    """Random bytes, invalid UTF-8, deep or huge JSON, wrong types, missing fields, bad timestamps, unknown types.

    The worker reads the whole mix from a backlog, in one life (no restart), with its memory
    sampled all along; valid events around the hostile ones are billed exactly as compute does.
    """
    settings = stack_settings
    lines = traffic_lines(3000, seed=SEED)
    hostile = hostile_messages(settings, SEED)
    assert len(hostile) == 10_000
    produce_all(settings, mix(settings, lines, hostile, SEED), **{"message.max.bytes": 4 * MIB})

    store.start()
    (worker,) = pool.start(1)
    url = pool.metrics_url(worker)
    baseline = rss_mib(worker.pid)
    with RssSampler(lambda: [worker.pid]) as rss:
        check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
        check_dead_letters(settings, hostile)
    print(f"worker memory: {baseline:.0f} MiB when serving, peak {rss.peak:.0f} MiB")
    assert scrape(url, "metering_events_invalid_total") == len(hostile)
    assert worker.poll() is None, "the worker never stopped"
    assert pool.processes == [worker], "no restart was needed"
    assert rss.peak - baseline < MAX_GROWTH_MIB, f"worker memory grew by {rss.peak - baseline:.0f} MiB"


def test_one_mib_payloads_go_to_the_dlq_and_do_not_stop_the_worker(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    """Twenty 1 MiB payloads (the broker takes them compressed) in valid traffic: dead letters, not a crash loop.

    Each dead letter keeps the first 256 KiB with the size and SHA-256 of the whole message.
    """
    settings = stack_settings
    lines = traffic_lines(1500, seed=SEED + 1)
    hostile = hostile_messages(settings, SEED + 1, {"one_mib": (20, "too_large")})
    produce_all(settings, mix(settings, lines, hostile, SEED + 1), **{"message.max.bytes": 4 * MIB})
    store.start()
    (worker,) = pool.start(1)

    def dead_letters_or_exit() -> bool:
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{pool.logs()[-1500:]}"
        return topic_count(settings, settings.topics.dlq) >= len(hostile)

    wait_until(dead_letters_or_exit, 90, "the 1 MiB payloads on the DLQ")
    check_dead_letters(settings, hostile)
    check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
