"""Every event produced two or three times, by producers that retry: each is billed once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import (
    Outgoing,
    StoreProcess,
    WorkerPool,
    assert_logged_as_sent,
    check_exact,
    event_ids,
    keyed,
    produce_all,
    scrape,
    traffic_lines,
)
from tests.support import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 51
RETRY_WITHIN = 200  # a retry goes out at most this many messages after the original


def with_retries(messages: list[Outgoing], seed: int) -> list[Outgoing]:
    """Each message once more or twice more, each copy up to ``RETRY_WITHIN`` messages later, as a retrying producer.

    A platform producer that gets no acknowledgement in time sends the event again, possibly
    twice; the copies interleave with the traffic that follows, on the same partition (same key).
    """
    rng = random.Random(seed)
    slots: list[tuple[float, int, Outgoing]] = []
    for i, message in enumerate(messages):
        slots.append((i, 0, message))
        for copy in range(1, rng.choice((2, 3))):
            slots.append((i + rng.uniform(0.5, RETRY_WITHIN), copy, message))
    return [message for _, _, message in sorted(slots, key=lambda slot: slot[:2])]


def test_every_event_two_or_three_times_is_billed_once(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    """The worker counts every copy as a duplicate (metric == copies sent), nothing is late, usage == compute."""
    settings = stack_settings
    lines = traffic_lines(3000, seed=SEED)
    messages = with_retries(keyed(settings, lines), SEED)
    keys = event_ids(lines)
    copies = len(messages) - len(set(keys))
    assert len(messages) >= 2 * len(lines), "every event at least twice"
    # each copy is a produce call of its own, a new record for the broker even from an idempotent
    # producer (which only drops its own retries, and keeps the order the events were sent in)
    produce_all(settings, messages)
    assert_logged_as_sent(settings, messages)
    store.start()
    (worker,) = pool.start(1)
    url = pool.metrics_url(worker)
    check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
    wait_until(lambda: scrape(url, "metering_events_received_total") == len(messages), 30, "every copy read")
    duplicates = scrape(url, "metering_events_duplicate_total")
    print(f"{len(messages)} messages for {len(set(keys))} events: {duplicates:.0f} duplicates counted, {copies} sent")
    assert duplicates == copies
    assert scrape(url, "metering_events_late_total") == 0
    assert scrape(url, "metering_events_invalid_total") == 0
