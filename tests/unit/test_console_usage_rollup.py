"""The hourly rollup's cached counts (migration 006) equal the 15-minute sets at every moment.

After each change that can make a cached count wrong (a late session in an old hour, a replay
under a new token, a void, a session moved to another bucket of the same hour), the series read
through the cache equals the series read from ``usage_15m``, and the cache was used (its rows
exist) without ever being trusted after the change.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from msgspec.structs import replace

from console.tenancy import AccountScope
from console.usage import assemble
from console.usage_range import UsageRange, resolve_range
from console.usage_rollup import hourly_rows, query_bounds, whole_hour_zone
from consumers.clickhouse import Client, SessionStore, migrate
from consumers.clickhouse.reconcile import ReconcileRun, RepairBatch, SessionVoid, apply_batch
from pipeline import traffic
from pipeline.decode import to_ms
from pipeline.events import BillingSessionRecord
from tests.console_support import fill

SHAPE = traffic.TrafficShape(accounts=1, apps_per_account=3, conversations_per_minute=0.2)
T0 = to_ms(datetime(2026, 5, 1, 10, tzinfo=UTC))
ACCOUNT = "acct-00"


@pytest.fixture
def rollup_db(chdb_client: Client) -> Iterator[str]:
    database = f"t_{uuid.uuid4().hex}"
    migrate(chdb_client, database)
    events = [json.loads(traffic.encode(e)) for e in traffic.events(T0, 3000, seed=21, shape=SHAPE)]
    fill(chdb_client, database, events, "rollup", replay=True)
    yield database
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": database})


def ranges() -> list[UsageRange]:
    now = datetime(2026, 5, 3, 12, tzinfo=UTC)
    custom = {"start": "2026-05-01", "end": "2026-05-03"}
    return [
        resolve_range(now, range_name="custom", by="day", timezone="UTC", **custom),
        resolve_range(now, range_name="custom", by="day", timezone="Europe/Paris", **custom),
        resolve_range(now - timedelta(hours=28), range_name="24h", start=None, end=None, by=None, timezone="Asia/Tokyo"),  # noqa: E501
    ]


def both(scope: AccountScope, rng: UsageRange) -> tuple[list[Any], list[Any]]:
    direct, _ = assemble(rng, scope.query("console_usage", **query_bounds(rng, [])), [], [])
    cached, _ = assemble(rng, hourly_rows(scope, rng, []), [], [])
    return [p.row() for p in direct], [p.row() for p in cached]


def check(scope: AccountScope, what: str) -> None:
    for rng in ranges():
        assert whole_hour_zone(rng, ZoneInfo(rng.timezone))
        for _ in range(2):  # the second read takes the counts the first one cached
            direct, cached = both(scope, rng)
            assert cached == direct, f"{what}, {rng.timezone} by {rng.by}"
        assert any(row[1] for row in direct), "the range has usage"


def cached_rows(client: Client, database: str) -> int:
    return int(client.command("SELECT count() FROM {db:Identifier}.usage_day_counts", parameters={"db": database}))


def a_session(client: Client, database: str) -> tuple[Any, ...]:
    rows = client.query(
        "SELECT billing_session_id, app_id, kind, toUnixTimestamp64Milli(started_at), conversation_session_id, "
        "session_index FROM {db:Identifier}.billing_sessions FINAL WHERE account_id = {acc:String} "
        "AND toMinute(started_at) < 10 ORDER BY started_at LIMIT 1",
        parameters={"db": database, "acc": ACCOUNT},
    ).result_rows
    return tuple(rows[0])


def test_cached_counts_stay_exact_through_late_sessions_replays_voids_and_moves(
    chdb_client: Client, rollup_db: str
) -> None:
    scope = AccountScope(chdb_client, rollup_db, ACCOUNT)
    store = SessionStore(chdb_client, rollup_db)
    check(scope, "as stored")
    assert cached_rows(chdb_client, rollup_db) > 0, "settled hours were cached"

    late = BillingSessionRecord(
        billing_session_id=f"late-{uuid.uuid4().hex}", kind="usage", account_id=ACCOUNT, app_id="app-00-0",
        conversation_session_id="late-conv", conversation_id="late-c", user_id="u", channel="web",
        session_index=0, started_at=datetime(2026, 5, 1, 11, 7, tzinfo=UTC),
        ended_at=datetime(2026, 5, 1, 11, 9, tzinfo=UTC),
    )  # fmt: skip
    store.insert([late], "late-1")
    check(scope, "after a late session in a cached hour")

    store.insert([late], "late-2")  # the same session again, another token: a replay
    check(scope, "after a replay")

    session_id, app, kind, started_ms, conversation, index = a_session(chdb_client, rollup_db)
    run = ReconcileRun(
        run_id="r1", period_from=date(2026, 5, 1), period_to=date(2026, 5, 3), timezone="UTC", source="test",
        status="done", started_ms=T0,
    )  # fmt: skip
    void = SessionVoid(
        billing_session_id=session_id, account_id=ACCOUNT, app_id=app, kind=kind, started_ms=started_ms,
        conversation_session_id=conversation, session_index=index, reason="test",
    )  # fmt: skip
    apply_batch(chdb_client, rollup_db, RepairBatch(run=run, token="void-1", voids=[void]))
    check(scope, "after a void")

    moved = replace(
        late,
        billing_session_id=session_id,
        app_id=app,
        kind=kind,
        started_at=datetime.fromtimestamp(started_ms / 1000, UTC) + timedelta(minutes=20),
        ended_at=datetime.fromtimestamp(started_ms / 1000, UTC) + timedelta(minutes=25),
    )
    store.insert([moved], "moved-1")  # the voided session again, in another bucket of the same hour
    check(scope, "after a session moved within its hour")
    direct, _ = both(scope, ranges()[0])
    assert sum(r[1] for r in direct) > 0


def test_a_first_read_in_many_small_passes_gives_the_same_series(
    chdb_client: Client, rollup_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long first read recomputes a few days per pass (bounded memory): one day per pass here."""
    import console.usage_rollup  # noqa: PLC0415

    monkeypatch.setattr(console.usage_rollup, "_ROWS_PER_PASS", 1)
    scope = AccountScope(chdb_client, rollup_db, ACCOUNT)
    check(scope, "one day per pass")
    assert cached_rows(chdb_client, rollup_db) >= 2, "every settled day cached, pass after pass"
