"""``usage_counts`` (migration 012) stays exact: the console and `metering usage` equal an independent count.

The oracle here counts the stored rows themselves: distinct (app, kind, 15-minute bucket, session id)
over every physical row of ``billing_sessions`` (copies and all), minus the (app, kind, bucket, id)
that ``session_voids`` names, placed into periods in Python from the range's UTC bounds. It shares
nothing with ``usage_15m``, the recount or the console's SQL. After each change that can make a
count wrong (a late session in an old bucket, a replay under a new token, a void, a session moved
to another bucket of the same hour), every reader equals it, in zones of every kind of offset:
whole hours (and DST), +5:30, +5:45, -3:30 with DST, and Lord Howe's half-hour DST.

A write whose recount did not happen (a crash between the two, by the ``counts.recount``
failpoint) leaves the counts behind, visibly; the same write again (the sink's redelivered batch)
or the end of a repair run makes them exact.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from msgspec.structs import replace

from console.tenancy import AccountScope
from console.usage import assemble, query_bounds, session_counts
from console.usage_range import UsageRange, resolve_range
from consumers.clickhouse import Client, SessionStore
from consumers.clickhouse.errors import ClickHouseWriteError
from consumers.clickhouse.reconcile import ReconcileRun, RepairBatch, SessionVoid, apply_batch
from consumers.clickhouse.usage import usage
from devtools import traffic
from pipeline.contract.decode import to_ms
from pipeline.contract.events import BillingSessionRecord
from pipeline.infra import failpoints
from pipeline.rules.attribution import period_label
from pipeline.rules.attribution import zone as zone_of
from tests.console_support import fill
from tests.support import migrated_database

SHAPE = traffic.TrafficShape(accounts=1, apps_per_account=3, conversations_per_minute=0.2)
T0 = to_ms(datetime(2026, 5, 1, 10, tzinfo=UTC))
ACCOUNT = "acct-00"
ZONES = ["UTC", "Europe/Paris", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe"]
KINDS = ("usage", "voice", "alert")


@pytest.fixture
def counts_db(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        events = [json.loads(traffic.encode(e)) for e in traffic.events(T0, 3000, seed=21, shape=SHAPE)]
        fill(chdb_client, database, events, "counts", replay=True)
        yield database


@pytest.fixture
def recounts_fail(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Arm ``counts.recount`` (``fail:S@N``), as a crash right after a write leaves things; disarmed after."""

    def arm(action: str, point: str = "counts.recount") -> None:
        monkeypatch.setenv(failpoints.ENV, f"{point}={action}")
        monkeypatch.setattr(failpoints, "_points", None)  # read the variable again

    yield arm
    monkeypatch.setattr(failpoints, "_points", None)
    monkeypatch.delenv(failpoints.ENV, raising=False)


def disarm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The restarted process: no failpoint."""
    monkeypatch.setattr(failpoints, "_points", {})


def ranges(tz: str) -> list[UsageRange]:
    now = datetime(2026, 5, 3, 12, tzinfo=UTC)
    custom = {"start": "2026-05-01", "end": "2026-05-03"}
    return [
        resolve_range(now, range_name="custom", by="day", timezone=tz, **custom),
        resolve_range(now, range_name="custom", by="week", timezone=tz, **custom),
        resolve_range(now - timedelta(hours=28), range_name="24h", start=None, end=None, by=None, timezone=tz),
    ]


def stored_sets(client: Client, database: str) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The oracle's sets: (app, kind, bucket ms, session id) and (app, kind, bucket ms, conversation session)."""
    params = {"db": database}
    bucket = "intDiv(toUnixTimestamp64Milli(started_at), 900000) * 900000"
    conversation = "if(session_index = 0 AND kind IN ('usage', 'voice'), conversation_session_id, NULL)"
    sessions = client.query(
        f"SELECT DISTINCT app_id, kind, {bucket}, billing_session_id, {conversation} "
        "FROM {db:Identifier}.billing_sessions",
        parameters=params,
    ).result_rows
    voids = client.query(
        f"SELECT DISTINCT app_id, kind, {bucket}, billing_session_id, {conversation} "
        "FROM {db:Identifier}.session_voids",
        parameters=params,
    ).result_rows
    voided = {tuple(row[:4]) for row in voids}
    counted = {tuple(row[:4]) for row in sessions if tuple(row[:4]) not in voided}
    voided_conversations = {(*row[:3], row[4]) for row in voids if row[4] is not None}
    conversations = {(*row[:3], row[4]) for row in sessions if row[4] is not None} - voided_conversations
    return counted, conversations


def oracle_series(counted: set[tuple[Any, ...]], rng: UsageRange) -> list[tuple[Any, ...]]:
    """Sessions per period and kind of the range, from the oracle's set (all apps of the account)."""
    rows = []
    for period in rng.periods:
        start, end = to_ms(period.start), to_ms(period.end)
        n = Counter(kind for _, kind, bucket, _ in counted if start <= bucket < end)
        usage_n, voice_n, alert_n = (n[k] for k in KINDS)
        rows.append((period.label, usage_n + alert_n, usage_n, voice_n, alert_n, 0, 0))
    return rows


def console_series(client: Client, database: str, rng: UsageRange, apps: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    scope = AccountScope(client, database, ACCOUNT)
    points, _ = assemble(rng, session_counts(scope, query_bounds(rng, list(apps))), [], [])
    return [p.row() for p in points]


def oracle_days(counted: set[tuple[Any, ...]], conversations: set[tuple[Any, ...]], tz: str) -> list[tuple[Any, ...]]:
    """`metering usage --by day` rows (account, app, day, conversations, usage, voice, alert, billing)."""
    days: dict[tuple[str, str], Counter[str]] = {}
    for app, kind, bucket, _ in counted:
        days.setdefault((app, period_label(bucket, zone_of(tz), "day")), Counter())[kind] += 1
    for app, _, bucket, _ in conversations:
        days.setdefault((app, period_label(bucket, zone_of(tz), "day")), Counter())["conversations"] += 1
    return sorted(
        (ACCOUNT, app, day, n["conversations"], n["usage"], n["voice"], n["alert"], n["usage"] + n["alert"])
        for (app, day), n in days.items()
    )


def check(client: Client, database: str, what: str) -> None:
    counted, conversations = stored_sets(client, database)
    assert counted, "the account has usage"
    apps = sorted({row[0] for row in counted})
    assert len(apps) > 1, "the account has several apps"
    for tz in ZONES:
        for rng in ranges(tz):
            assert console_series(client, database, rng) == oracle_series(counted, rng), f"{what}: {tz} by {rng.by}"
            for app in apps:  # the apps' own counts (usage_counts), one app listed
                mine = {row for row in counted if row[0] == app}
                assert console_series(client, database, rng, (app,)) == oracle_series(mine, rng), f"{what}: {app}"
        rows = usage(client, database, start=None, end=None, apps=[], account=None, period="day", tz=tz)
        assert rows == oracle_days(counted, conversations, tz), f"{what}: metering usage in {tz}"


def late_session(minute: int = 7) -> BillingSessionRecord:
    return BillingSessionRecord(
        billing_session_id=f"late-{uuid.uuid4().hex}", kind="usage", account_id=ACCOUNT, app_id="app-00-0",
        conversation_session_id=f"late-conv-{uuid.uuid4().hex}", conversation_id="late-c", user_id="u",
        channel="web", session_index=0, started_at=datetime(2026, 5, 1, 11, minute, tzinfo=UTC),
        ended_at=datetime(2026, 5, 1, 11, minute + 2, tzinfo=UTC),
    )  # fmt: skip


def a_session(client: Client, database: str) -> tuple[Any, ...]:
    rows = client.query(
        "SELECT billing_session_id, app_id, kind, toUnixTimestamp64Milli(started_at), conversation_session_id, "
        "session_index FROM {db:Identifier}.billing_sessions FINAL WHERE account_id = {acc:String} "
        "AND toMinute(started_at) < 10 AND kind = 'usage' AND session_index = 0 ORDER BY started_at LIMIT 1",
        parameters={"db": database, "acc": ACCOUNT},
    ).result_rows
    return tuple(rows[0])


def run_row(status: str = "done") -> ReconcileRun:
    return ReconcileRun(
        run_id="r1", period_from=date(2026, 5, 1), period_to=date(2026, 5, 3), timezone="UTC", source="test",
        status=status, started_ms=T0,  # type: ignore[arg-type]
    )  # fmt: skip


def void_of(session: tuple[Any, ...]) -> SessionVoid:
    session_id, app, kind, started_ms, conversation, index = session
    return SessionVoid(
        billing_session_id=session_id, account_id=ACCOUNT, app_id=app, kind=kind, started_ms=started_ms,
        conversation_session_id=conversation, session_index=index, reason="test",
    )  # fmt: skip


def test_counts_stay_exact_through_late_sessions_replays_voids_and_moves(chdb_client: Client, counts_db: str) -> None:
    store = SessionStore(chdb_client, counts_db)
    check(chdb_client, counts_db, "as stored (half of it twice, under two tokens)")

    late = late_session()
    store.insert([late], "late-1")
    check(chdb_client, counts_db, "after a late session in an old bucket")

    store.insert([late], "late-2")  # the same session again, another token: a replay
    check(chdb_client, counts_db, "after a replay")

    session = a_session(chdb_client, counts_db)
    apply_batch(chdb_client, counts_db, RepairBatch(run=run_row("running"), token="void-1", voids=[void_of(session)]))
    check(chdb_client, counts_db, "after a void")

    _, _, _, started_ms, _, _ = session
    moved_at = datetime.fromtimestamp(started_ms / 1000, UTC) + timedelta(minutes=20)
    moved = replace(
        late, billing_session_id=session[0], app_id=session[1], kind=session[2], started_at=moved_at,
        ended_at=moved_at + timedelta(minutes=5), conversation_session_id=session[4], session_index=session[5],
    )  # fmt: skip
    store.insert([moved], "moved-1")  # the voided session again, in another bucket of the same hour: a move
    check(chdb_client, counts_db, "after a session moved within its hour")


def test_an_insert_not_yet_counted_is_counted_by_its_retry(
    chdb_client: Client, counts_db: str, recounts_fail: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink's crash between insert and recount: its redelivered batch (same token) makes the counts exact."""
    store = SessionStore(chdb_client, counts_db)
    late = late_session()
    recounts_fail("fail:3600")
    with pytest.raises(ClickHouseWriteError, match=r"counts\.recount"):
        store.insert([late], "sink:0:41-41")
    counted, _ = stored_sets(chdb_client, counts_db)
    rng = ranges("UTC")[0]
    assert console_series(chdb_client, counts_db, rng) != oracle_series(counted, rng), "stored, not yet counted"

    disarm(monkeypatch)
    store.insert([late], "sink:0:41-41")  # redelivered: ClickHouse drops the block, the recount runs
    assert int(
        chdb_client.command(
            "SELECT count() FROM {db:Identifier}.billing_sessions WHERE billing_session_id = {id:String}",
            parameters={"db": counts_db, "id": late.billing_session_id},
        )
    ) == 1, "the retried block was dropped as already seen"  # fmt: skip
    check(chdb_client, counts_db, "after the redelivered batch")


def test_a_write_whose_account_sums_did_not_happen_is_made_good_by_its_retry(
    chdb_client: Client, counts_db: str, recounts_fail: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the apps' counts, before their sums per account: the app's series is exact, the account's
    (usage_counts_account) behind, until the redelivered batch sums again."""
    store = SessionStore(chdb_client, counts_db)
    late = late_session()
    recounts_fail("fail:3600", "counts.account_sum")
    with pytest.raises(ClickHouseWriteError, match=r"counts\.account_sum"):
        store.insert([late], "sink:0:42-42")
    counted, _ = stored_sets(chdb_client, counts_db)
    rng = ranges("UTC")[0]
    mine = {row for row in counted if row[0] == late.app_id}
    assert console_series(chdb_client, counts_db, rng, (late.app_id,)) == oracle_series(mine, rng), "app counted"
    assert console_series(chdb_client, counts_db, rng) != oracle_series(counted, rng), "account not yet summed"

    disarm(monkeypatch)
    store.insert([late], "sink:0:42-42")  # redelivered: the block is dropped, both recounts run
    check(chdb_client, counts_db, "after the redelivered batch")


def test_a_repair_that_died_before_its_recount_is_made_good_by_the_next_run(
    chdb_client: Client, counts_db: str, recounts_fail: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies after writing its voids, before recounting them; the next run over those days ends exact."""
    late, session = late_session(), a_session(chdb_client, counts_db)
    batch = RepairBatch(run=run_row("running"), token="run-1", inserts=[late], voids=[void_of(session)])
    recounts_fail("fail:3600@2")  # the inserts' recount passes, the voids' does not
    with pytest.raises(ClickHouseWriteError, match=r"counts\.recount"):
        apply_batch(chdb_client, counts_db, batch)
    counted, _ = stored_sets(chdb_client, counts_db)
    rng = ranges("UTC")[0]
    assert console_series(chdb_client, counts_db, rng) != oracle_series(counted, rng), "written, not yet counted"

    disarm(monkeypatch)
    apply_batch(chdb_client, counts_db, RepairBatch(run=run_row("running")))  # the next run finds nothing to write
    apply_batch(chdb_client, counts_db, RepairBatch(run=run_row("done")))  # and ends: its period is recounted
    check(chdb_client, counts_db, "after the next run over the same days")


def test_concurrent_writers_leave_the_count_that_saw_every_write(chdb_client: Client, counts_db: str) -> None:
    """Writers of one bucket at once (a sink per partition, a repair): the newest count has seen all of them."""
    store = SessionStore(chdb_client, counts_db)
    sessions = [late_session(minute=1 + i % 10) for i in range(24)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            store.insert([sessions[i]], f"writer-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    check(chdb_client, counts_db, "after 24 writers of the same buckets at once")


def test_an_older_recount_that_lands_last_changes_nothing(chdb_client: Client, counts_db: str) -> None:
    """Of two recounts of a key, the one with the older version read an older snapshot: it never wins.

    Written last here, as a slow writer's would be: FINAL (and merges) keep the greatest version.
    """
    params = {"db": counts_db, "acc": ACCOUNT}
    key = chdb_client.query(
        "SELECT app_id, bucket, usage_sessions, version FROM {db:Identifier}.usage_counts FINAL "
        "WHERE account_id = {acc:String} AND usage_sessions > 0 ORDER BY bucket LIMIT 1",
        parameters=params,
    ).result_rows[0]
    app, bucket, sessions, version = key
    chdb_client.insert(
        "usage_counts",
        [[ACCOUNT, app, bucket, sessions + 100, 7, 7, 7, version - 1]],
        column_names=["account_id", "app_id", "bucket", "usage_sessions", "voice_sessions", "alert_sessions",
                      "conversations", "version"],
        database=counts_db,
    )  # fmt: skip
    check(chdb_client, counts_db, "after an older recount landed last")
