"""Events out of order within the allowed lateness (billed as in time order) and beyond it (metering-late)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import msgspec
import pytest

from pipeline.contract.events import LateRecord
from pipeline.infra.settings import Settings
from tests.faults.harness import (
    StoreProcess,
    WorkerPool,
    check_exact,
    computed,
    event_ids,
    keyed,
    occurred_ms,
    produce_all,
    read_topic,
    scrape,
    topic_count,
    traffic_lines,
    write_lines,
)
from tests.support import T0, Conversation, alert, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 61
DISPLACEMENT_MS = 30_000  # half the default allowed lateness (60 s)


def displaced(lines: list[bytes], seed: int) -> list[bytes]:
    """Arrival order = event time plus up to 30 s: an event may come after any event up to 30 s younger.

    The partition clock at an event's arrival is then under its time plus the allowed
    lateness, so none is late and the stream must bill as compute does in time order.
    """
    rng = random.Random(seed)
    return [line for _, line in sorted((occurred_ms(x) + rng.uniform(0, DISPLACEMENT_MS), x) for x in lines)]


def too_late(lines: list[bytes]) -> list[bytes]:
    """New conversations and alerts from the first minutes of the traffic, sent after all of it.

    Each partition's clock is then more than an hour past them: beyond the allowed lateness,
    they would change (create) sessions of a period already final.
    """
    docs = [(json.loads(x), occurred_ms(x)) for x in lines]
    accounts = {d["app_id"]: d["account_id"] for d, _ in docs}
    alerting = sorted({d["app_id"] for d, t in docs if d["type"] == "alert_delivered" and t > T0 + 30 * 60_000})
    apps = sorted(accounts)
    out = []
    for i in range(12):
        app = apps[i % len(apps)]
        conv = Conversation(conversation_id=f"late-conv-{i}", app_id=app, account_id=accounts[app], start=T0)
        out += conv.user(2 + i / 2).bot(3 + i / 2).events
    for i in range(8):
        app = alerting[i % len(alerting)]
        out.append(alert(5 + i, app_id=app, account_id=accounts[app], event_id=f"late-alert-{i}"))
    return [json.dumps(d).encode() for d in out]


def test_out_of_order_within_lateness_is_billed_and_beyond_it_goes_to_the_late_topic(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    """Within lateness: exact. Beyond: every such event on metering-late, counted, and not billed (nor dropped)."""
    settings = stack_settings
    in_bound = displaced(traffic_lines(3000, seed=SEED), SEED)
    late = too_late(in_bound)
    reordered = sum(occurred_ms(a) - occurred_ms(b) > 10_000 for a, b in itertools.pairwise(in_bound))
    assert reordered > 50, "the replay is out of order by more than the traffic's own jitter"
    billed_if_added = computed(write_lines(tmp_path / "all.jsonl", in_bound + late))
    assert billed_if_added != computed(write_lines(tmp_path / "in-bound.jsonl", in_bound)), "late events matter"

    produce_all(settings, keyed(settings, in_bound + late))
    store.start()
    (worker,) = pool.start(1)
    url = pool.metrics_url(worker)
    check_exact(settings, in_bound, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())

    wait_until(lambda: topic_count(settings, settings.topics.late) >= len(late), 30, "the late events on the topic")
    records = [msgspec.json.decode(v, type=LateRecord) for v in read_topic(settings, settings.topics.late)]
    print(f"{reordered} arrivals over 10 s out of order (within lateness); {len(records)} late: {records[0].reason}")
    assert sorted((r.app_id, r.event_id) for r in records) == sorted(event_ids(late))
    assert all(r.reason and r.partition_clock > r.occurred_at for r in records)
    assert scrape(url, "metering_events_late_total") == len(late)
    assert topic_count(settings, settings.topics.dlq) == 0
