"""SessionStore on a real embedded chDB: every field kept, a retried or replayed batch counted once.

chDB opens one directory per process, so every ClickHouse test module connects to the same
session-wide path (``<basetemp>/chdb``) and each test gets its own uuid-named database.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from consumers.clickhouse import ClickHouseWriteError, Client, SessionStore, usage
from consumers.clickhouse.fake import FakeSessionWriter
from consumers.clickhouse.store import SessionWriter
from pipeline.contract.events import BillingSessionRecord

# -- fixtures: one chDB per process, one database per test ----------------------------------------


# -- helpers ----------------------------------------------------------------------------------------

T = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def usage_record(
    n: int, start: datetime = T, index: int = 0, *, app: str = "bot", kind: str = "usage"
) -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=f"{kind}-{n}-{index}",
        kind="voice" if kind == "voice" else "usage",
        account_id="acme",
        app_id=app,
        conversation_session_id=f"cs-{n}",
        conversation_id=f"conv-{n}",
        user_id=f"user-{n}",
        channel="voice" if kind == "voice" else "web",
        session_index=index,
        started_at=start,
        ended_at=start + timedelta(minutes=15),
        conversation_started_at=start,
        conversation_ended_at=start + timedelta(minutes=40),
        bot_ms=1_800_000,
        agent_ms=600_000,
    )


def alert_record(n: int, start: datetime = T, *, app: str = "bot") -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=f"alert-{n}",
        kind="alert",
        account_id="acme",
        app_id=app,
        conversation_session_id=None,
        conversation_id=None,
        user_id=f"user-{n}",
        channel=None,
        session_index=0,
        started_at=start,
        ended_at=start,
        alert_id=f"a-{n}",
    )


def batch() -> list[BillingSessionRecord]:
    """Two conversations (one of two usage sessions), a voice call and an alert, all on T's day."""
    return [
        usage_record(1),
        usage_record(1, T + timedelta(minutes=15), 1),
        usage_record(2, T + timedelta(hours=1)),
        usage_record(3, T + timedelta(hours=2), kind="voice"),
        alert_record(4, T + timedelta(hours=3)),
    ]


#: usage of batch() on 2026-03-10: conversations, usage, voice, alert, billing
BATCH_DAY = ("acme", "bot", "2026-03-10", 3, 3, 1, 1, 4)


def day_usage(client: Client, database: str) -> list[tuple[str, str, str, int, int, int, int, int]]:
    return usage(client, database, start=None, end=None, apps=[], account=None, period="day", tz="UTC")


def raw_rows(client: Client, database: str, table: str) -> int:
    """Rows in ``table`` as stored, duplicates and unmerged parts included."""
    result = client.query("SELECT count() FROM {db:Identifier}.{t:Identifier}", parameters={"db": database, "t": table})
    return int(result.result_rows[0][0])


def stop_merges(client: Client, database: str) -> None:
    for table in ("billing_sessions", "usage_15m"):
        client.command("SYSTEM STOP MERGES {db:Identifier}.{t:Identifier}", parameters={"db": database, "t": table})


def optimize_final(client: Client, database: str) -> None:
    for table in ("billing_sessions", "usage_15m"):
        client.command("SYSTEM START MERGES {db:Identifier}.{t:Identifier}", parameters={"db": database, "t": table})
        client.command("OPTIMIZE TABLE {db:Identifier}.{t:Identifier} FINAL", parameters={"db": database, "t": table})


# -- the store ------------------------------------------------------------------------------------------


def test_store_is_a_session_writer(chdb_client: Client) -> None:
    writer: SessionWriter = SessionStore(chdb_client, "metering")
    assert isinstance(writer, SessionStore)


def test_insert_keeps_every_field(chdb_client: Client, database: str) -> None:
    records = [usage_record(1), alert_record(2)]
    SessionStore(chdb_client, database).insert(records, "tok-fields")
    rows = chdb_client.query(
        "SELECT * EXCEPT (inserted_at, reconcile_run_id) FROM {db:Identifier}.billing_sessions FINAL "
        "ORDER BY billing_session_id",
        parameters={"db": database},
    )
    got = [dict(zip(rows.column_names, row, strict=True)) for row in rows.result_rows]
    want = sorted(records, key=lambda r: r.billing_session_id)
    assert len(got) == 2
    for row, record in zip(got, want, strict=True):
        for name in rows.column_names:
            assert row[name] == getattr(record, name), name


def test_reconcile_run_id_is_null_for_the_stream_and_kept_for_a_repair(chdb_client: Client, database: str) -> None:
    store = SessionStore(chdb_client, database)
    store.insert([usage_record(1)], "tok-stream")
    store.insert([usage_record(2)], "tok-repair", reconcile_run_id="run-1")
    rows = chdb_client.query(
        "SELECT billing_session_id, reconcile_run_id FROM {db:Identifier}.billing_sessions ORDER BY 1",
        parameters={"db": database},
    ).result_rows
    assert [run for _, run in rows] == [None, "run-1"]


def test_times_keep_milliseconds_and_the_utc_instant(chdb_client: Client, database: str) -> None:
    start = datetime(2026, 3, 10, 18, 29, 59, 999_000, tzinfo=UTC)
    SessionStore(chdb_client, database).insert([usage_record(1, start)], "tok-ms")
    row = chdb_client.query(
        "SELECT started_at, toUnixTimestamp64Milli(started_at) FROM {db:Identifier}.billing_sessions",
        parameters={"db": database},
    ).result_rows[0]
    assert row[0] == start
    assert row[1] == int(start.timestamp() * 1000)


def test_same_batch_same_token_is_written_once(chdb_client: Client, database: str) -> None:
    store = SessionStore(chdb_client, database)
    store.insert(batch(), "billing-sessions:0:100-104")
    after_first = raw_rows(chdb_client, database, "billing_sessions"), raw_rows(chdb_client, database, "usage_15m")
    store.insert(batch(), "billing-sessions:0:100-104")
    assert raw_rows(chdb_client, database, "billing_sessions") == len(batch())
    # deduplicate_blocks_in_dependent_materialized_views: the view's insert is dropped too
    assert (raw_rows(chdb_client, database, "billing_sessions"), raw_rows(chdb_client, database, "usage_15m")) == (
        after_first
    )
    assert day_usage(chdb_client, database) == [BATCH_DAY]


def test_same_token_dedupes_a_batch_that_spans_partitions(chdb_client: Client, database: str) -> None:
    # The token is tracked per partition (month of started_at): both months must be dropped.
    records = [usage_record(1, datetime(2026, 2, 28, 23, 59, tzinfo=UTC)), *batch()]
    store = SessionStore(chdb_client, database)
    store.insert(records, "tok-two-months")
    store.insert(records, "tok-two-months")
    assert raw_rows(chdb_client, database, "billing_sessions") == len(records)


def test_same_sessions_other_token_count_once_before_and_after_merges(chdb_client: Client, database: str) -> None:
    stop_merges(chdb_client, database)  # prove exactness on unmerged parts, not by luck of timing
    store = SessionStore(chdb_client, database)
    store.insert(batch(), "worker-run-1")
    store.insert(batch(), "worker-run-2")  # a replay re-emits the same sessions
    store.insert([*batch()[:2], usage_record(9, T + timedelta(hours=4))], "worker-run-3")
    assert raw_rows(chdb_client, database, "billing_sessions") == 2 * len(batch()) + 3  # duplicates are there
    expected = [("acme", "bot", "2026-03-10", 4, 4, 1, 1, 5)]
    assert day_usage(chdb_client, database) == expected  # ...and not counted
    optimize_final(chdb_client, database)
    assert raw_rows(chdb_client, database, "billing_sessions") == len(batch()) + 1
    assert day_usage(chdb_client, database) == expected


def test_empty_batch_writes_nothing(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert([], "tok")
    assert raw_rows(chdb_client, database, "billing_sessions") == 0


def test_empty_token_is_refused(chdb_client: Client) -> None:
    with pytest.raises(ValueError, match="token"):
        SessionStore(chdb_client, "metering").insert(batch(), "")


def test_naive_time_is_refused_not_guessed(chdb_client: Client) -> None:
    record = usage_record(1, datetime(2026, 3, 10, 9, 0))
    with pytest.raises(ValueError, match="no time zone"):
        SessionStore(chdb_client, "metering").insert([record], "tok")


def test_insert_without_schema_names_table_code_and_fix(chdb_client: Client) -> None:
    store = SessionStore(chdb_client, f"missing_{uuid.uuid4().hex}")
    with pytest.raises(ClickHouseWriteError, match=r"billing_sessions.*code \d+.*migrations") as info:
        store.insert(batch(), "tok")
    assert info.value.transient is False
    assert info.value.code is not None


def test_bad_database_name_is_refused_without_io() -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        SessionStore(None, "metering; DROP TABLE x")  # type: ignore[arg-type]


# -- the in-memory fake ------------------------------------------------------------------------------


def test_fake_ignores_a_token_seen_before() -> None:
    fake = FakeSessionWriter()
    fake.insert(batch(), "t1")
    fake.insert(batch(), "t1")
    assert len(fake.sessions) == len(batch())
    assert fake.tokens == ["t1"]
    assert fake.duplicate_tokens == ["t1"]


def test_fake_keeps_a_replayed_session_once() -> None:
    fake = FakeSessionWriter()
    fake.insert(batch(), "t1")
    fake.insert(batch(), "t2")
    assert len(fake.sessions) == len(batch())


def test_fake_fails_on_request_and_writes_nothing() -> None:
    fake = FakeSessionWriter()
    fake.fail_next(transient=True)
    with pytest.raises(ClickHouseWriteError) as info:
        fake.insert(batch(), "t1")
    assert info.value.transient
    assert fake.sessions == {}
    fake.insert(batch(), "t1")  # the retry with the same token goes through
    assert len(fake.sessions) == len(batch())


# -- measurements (printed, not asserted; run with METERING_BENCH=1 pytest -s) -------------------------


def bench_records(n: int) -> list[BillingSessionRecord]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        usage_record(i, base + timedelta(seconds=(i * 7919) % (90 * 86400)), app=f"app-{i % 50}")
        if i % 10
        else alert_record(i, base + timedelta(seconds=(i * 7919) % (90 * 86400)), app=f"app-{i % 50}")
        for i in range(n)
    ]


@pytest.mark.skipif(not os.environ.get("METERING_BENCH"), reason="measurement: set METERING_BENCH=1 (and use -s)")
def test_measure_insert_and_usage_query(chdb_client: Client, database: str) -> None:
    records = bench_records(100_000)
    store = SessionStore(chdb_client, database)
    t0 = time.perf_counter()
    store.insert(records, "bench-1")
    insert_s = time.perf_counter() - t0
    small = records[:1000]
    t0 = time.perf_counter()
    for k in range(20):
        store.insert(small, f"bench-small-{k}")
    small_s = (time.perf_counter() - t0) / 20
    # the stream's shape: blocks of 5,000 sessions that started within the hour before, over 200 apps
    now = datetime(2026, 3, 31, 23, tzinfo=UTC)
    stream_s = []
    for k in range(10):
        start = now + timedelta(minutes=6 * k)
        block = [usage_record(100_000 * (k + 1) + i, start - timedelta(seconds=i * 3600 // 5000), app=f"app-{i % 200}")
                 for i in range(5000)]  # fmt: skip
        t0 = time.perf_counter()
        store.insert(block, f"bench-stream-{k}")
        stream_s.append(time.perf_counter() - t0)
    stream_s.sort()
    timings = []
    for tz in ("UTC", "Asia/Kolkata", "UTC", "Asia/Kolkata", "America/New_York"):
        t0 = time.perf_counter()
        rows = usage(chdb_client, database, start=None, end=None, apps=[], account=None, period="day", tz=tz)
        timings.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    usage(
        chdb_client,
        database,
        start=date(2026, 2, 1),
        end=date(2026, 2, 7),
        apps=["app-7"],
        account="acme",
        period="day",
        tz="UTC",
    )
    filtered_s = time.perf_counter() - t0
    print(
        f"\n[bench] insert 100k billing sessions over 90 days: {insert_s:.2f} s ({100_000 / insert_s:,.0f} rows/s); "
        f"1k-row batch of those: {small_s * 1000:.0f} ms; 5k-row blocks of the last hour over 200 apps: median "
        f"{stream_s[5] * 1000:.0f} ms ({5000 / stream_s[5]:,.0f} rows/s); "
        f"usage by day over 100k sessions ({len(rows)} rows): "
        f"{', '.join(f'{t * 1000:.0f}' for t in timings)} ms; one app one week: {filtered_s * 1000:.0f} ms; "
        f"usage_15m rows: {raw_rows(chdb_client, database, 'usage_15m')}"
    )
