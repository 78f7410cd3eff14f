"""Records the consumer fetched and never delivered, with no later record to reveal the hole.

faust drops fetched records when it suspends its flow (a rebalance, a table recovery) and
fetches on from after them. A later record shows the hole (``continuity``); at the end of
the log nothing does, and the partition would wait forever, its clock held back. The
``worker.delivered`` failpoint drops every record delivered after the N-th, as faust would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.faults.harness import (
    StoreProcess,
    WorkerPool,
    assert_logged_as_sent,
    check_exact,
    keyed,
    produce_all,
    scrape,
    traffic_lines,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SEED = 61
DELIVERED = 1200  # records the worker meters as delivered; faust "drops" every later one


def test_records_dropped_at_the_end_of_the_log_are_read_from_it_and_billed_once(
    stack_settings: Settings, store: StoreProcess, pool: WorkerPool, tmp_path: Path
) -> None:
    settings = stack_settings
    lines = traffic_lines(3000, seed=SEED)
    messages = keyed(settings, lines)
    produce_all(settings, messages)
    assert_logged_as_sent(settings, messages)
    store.start()
    (worker,) = pool.start(1, METERING_FAILPOINTS=f"worker.delivered=fail:3600@{DELIVERED + 1}")
    url = pool.metrics_url(worker)
    check_exact(settings, lines, tmp_path, stop_store=store.stop, diagnostics=lambda: pool.logs() + store.logs())
    refetched = scrape(url, "metering_input_records_refetched_total")
    print(f"{len(lines)} events: {DELIVERED} delivered by faust, {refetched:.0f} read from the log by the worker")
    assert refetched >= len(lines) - DELIVERED
    assert "restarting from the last commit" not in pool.logs(), "read from the log, not cured by a restart"
    assert scrape(url, "metering_events_late_total") == 0
