"""A 1,000,000-session export from the real store process: flat memory, and the sink keeps inserting.

The store (``python -m cli sink``: chDB, sink, console) holds an embedded database that a
child process filled with a million billing sessions beforehand. While a client downloads them
all through ``/api/v1/sessions.csv``, slowly, billing sessions of another account are produced to
the broker: the sink must go on inserting them (they show in that account's usage during the
export), and the store's resident memory must grow by less than 50 MiB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from confluent_kafka import Producer

from console.auth import issue_token
from pipeline.contract.events import BillingSessionRecord
from pipeline.infra.kafka import producer_config
from pipeline.infra.settings import ConsoleSettings, Settings, Topics
from tests.faults.harness import StoreProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration

SESSIONS = 1_000_000
SECRET = "e" * 40
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def store(
    kafka_bootstrap: str, tmp_path: Path, create_topics: Callable[[dict[str, int]], None]
) -> Iterator[tuple[StoreProcess, Settings]]:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"{value}-{suffix}" for name, value in vars(Topics()).items()})
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",
        clickhouse_database="metering",
        topics=topics,
        partitions=2,
        app_id=f"metering-{suffix}",
        api_port=0,
        metrics_port=0,
        sink_batch_seconds=0.2,
        console=ConsoleSettings(secret=SECRET),
    )
    create_topics(dict.fromkeys(topics.all, settings.partitions))
    fill = textwrap.dedent(
        f"""
        from consumers.clickhouse import connect, migrate
        c = connect("{settings.clickhouse_url}", "metering")
        migrate(c, "metering")
        c.command('''
            INSERT INTO metering.billing_sessions
                (account_id, app_id, billing_session_id, kind, channel, user_id, conversation_id,
                 conversation_session_id, session_index, started_at, ended_at, bot_ms, agent_ms, alert_id,
                 schema_version)
            SELECT 'acct-big', concat('app-', toString(number % 50)), toString(generateUUIDv4(number)),
                   if(number % 10 = 0, 'alert', 'usage'), 'web', concat('u-', toString(number % 997)),
                   concat('c-', toString(number)), toString(generateUUIDv4(number + 1)), 0,
                   toDateTime64('2026-05-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 2000),
                   toDateTime64('2026-05-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 2000 + 60000),
                   60000, 0, if(number % 10 = 0, 'sub-1', NULL), '1'
            FROM numbers({SESSIONS})''')
        c.close()
        """
    )
    subprocess.run([sys.executable, "-c", fill], check=True, timeout=600)
    process = StoreProcess(settings, tmp_path)
    try:
        process.start()
        yield process, settings
    finally:
        if process.process is not None and process.process.poll() is None:
            process.stop()


def live_records(n: int) -> list[BillingSessionRecord]:
    start = datetime(2026, 5, 10, 12, tzinfo=UTC)
    return [
        BillingSessionRecord(
            billing_session_id=f"live-{i}-{uuid.uuid4().hex}",
            kind="usage",
            account_id="acct-live",
            app_id="live-app",
            conversation_session_id=f"live-conv-{i}",
            conversation_id=f"live-c-{i}",
            user_id="u-1",
            channel="web",
            session_index=0,
            started_at=start + timedelta(seconds=i),
            ended_at=start + timedelta(seconds=i + 60),
        )
        for i in range(n)
    ]


def test_a_million_session_export_keeps_memory_flat_while_the_sink_inserts(  # noqa: PLR0915 - one scenario read top to bottom
    store: tuple[StoreProcess, Settings],
) -> None:
    process, settings = store
    pid = process.process.pid  # type: ignore[union-attr]
    api = process.endpoints.api
    big = issue_token(SECRET, account_id="acct-big", user="u", role="admin", shared=False, ttl=timedelta(hours=1))
    live = issue_token(SECRET, account_id="acct-live", user="u", role="admin", shared=False, ttl=timedelta(hours=1))
    usage = {"from": "2026-05-10", "to": "2026-05-10"}
    everything = {"from": "2026-05-01", "to": "2026-05-31"}
    # A first export warms the process up: ClickHouse's caches and the allocator's arenas take
    # a one-off 30-60 MiB on the first large read (measured: the second and later exports of the
    # same process grow by 10-25 MiB). Constant memory is about every export after that.
    first_before = rss_bytes(pid)
    with (
        httpx.Client(base_url=api, trust_env=False, timeout=600) as http,
        http.stream("GET", "/api/v1/sessions.csv", params=everything, headers=_b(big)) as warm,
    ):
        assert warm.status_code == 200
        warm_rows = sum(chunk.count(b"\n") for chunk in warm.iter_bytes(65536))
    assert warm_rows - 1 == SESSIONS
    print(f"first export: store RSS {first_before / MIB:.0f} -> {rss_bytes(pid) / MIB:.0f} MiB")

    stop = threading.Event()
    measuring = threading.Event()
    peak = [0]
    seen: list[tuple[float, int]] = []

    def sample() -> None:
        while not stop.is_set():
            if measuring.is_set():
                peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(0.05)

    def feed() -> None:
        producer = Producer(producer_config(settings))
        for record in live_records(100_000):
            if stop.is_set():
                break
            value = msgspec.json.encode(record)
            producer.produce(settings.topics.billing_sessions, key=record.app_id.encode(), value=value)
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)

    def watch() -> None:
        with httpx.Client(base_url=api, trust_env=False, timeout=30) as http:
            while not stop.is_set():
                answer = http.get("/api/v1/usage", params=usage, headers=_b(live))
                if answer.status_code == 200:
                    seen.append((time.monotonic(), int(answer.json()["totals"]["billing_sessions"])))
                time.sleep(1.0)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, feed, watch)]
    for thread in threads:
        thread.start()
    # the sink and the usage reads at work before the baseline: what grows then is the export's
    wait_until(lambda: bool(seen) and seen[-1][1] > 0, 120, "the sink to insert the live sessions")
    time.sleep(10)
    control = rss_bytes(pid)
    time.sleep(10)
    baseline = rss_bytes(pid)
    print(f"10 s of sink inserts and usage reads, no export: store RSS {(baseline - control) / MIB:+.1f} MiB")
    peak[0] = baseline
    measuring.set()
    rows = 0
    try:
        with (
            httpx.Client(base_url=api, trust_env=False, timeout=600) as http,
            http.stream("GET", "/api/v1/sessions.csv", params=everything, headers=_b(big)) as answer,
        ):
            assert answer.status_code == 200
            started = time.monotonic()
            for chunk in answer.iter_bytes(65536):
                rows += chunk.count(b"\n")
                time.sleep(0.002)  # a slow client: the export lasts while the sink works
            ended = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert rows - 1 == SESSIONS, "every session, once, plus the header"
    growth = (peak[0] - baseline) / MIB
    assert growth < 50, f"the store grew by {growth:.1f} MiB during the export"
    during = [n for t, n in seen if started <= t <= ended]
    assert len(set(during)) >= 3, f"the sink kept inserting during the {ended - started:.1f} s export: {during}"
    print(f"export of {SESSIONS:,} rows in {ended - started:.1f} s; store RSS growth {growth:.1f} MiB")


def _b(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
