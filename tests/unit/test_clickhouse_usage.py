"""usage() on a real embedded chDB: R8 days in any zone, weeks, months, filters, and agreement
with the offline ``UsageBook`` (the numbers `metering compute` prints) in awkward zones.

chDB opens one directory per process, so every ClickHouse test module connects to the same
session-wide path (``<basetemp>/chdb``) and each test gets its own uuid-named database.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest

from consumers.clickhouse import Client, SessionStore, usage
from consumers.clickhouse.usage import Period, UnknownZoneError, named_query
from pipeline.contract.decode import to_ms
from pipeline.contract.events import BillingSessionRecord
from pipeline.rules.attribution import USAGE_COLUMNS, UsageBook, UsageRow, zone
from pipeline.rules.model import BillingSession, Kind
from pipeline.stream.records import billing_session_record

# -- building sessions -------------------------------------------------------------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def session(
    sid: str,
    start: str | datetime,
    kind: Kind = "usage",
    index: int = 0,
    *,
    conv: str | None = None,
    app: str = "bot",
    account: str = "acme",
    channel: str | None = "web",
) -> BillingSessionRecord:
    t = utc(start) if isinstance(start, str) else start
    alert = kind == "alert"
    return BillingSessionRecord(
        billing_session_id=sid,
        kind=kind,
        account_id=account,
        app_id=app,
        conversation_session_id=None if alert else (conv or sid.split(".", maxsplit=1)[0]),
        conversation_id=None if alert else f"conversation-{conv or sid}",
        user_id="u-1",
        channel=channel,
        session_index=index,
        started_at=t,
        ended_at=t + timedelta(minutes=15),
        alert_id=f"alert-{sid}" if alert else None,
    )


def records_around_kolkata_midnight() -> list[BillingSessionRecord]:
    """Asia/Kolkata is UTC+05:30: its midnight of 2026-03-11 is 2026-03-10T18:30Z."""
    return [
        session("A", "2026-03-10T18:29:00"),
        session("F", "2026-03-10T18:29:59.999"),
        session("B.0", "2026-03-10T18:30:00"),
        session("B.1", "2026-03-10T18:45:00", index=1),
        session("C.0", "2026-03-10T23:50:00", "voice", channel="voice"),  # ends after midnight: still the 10th
        session("C.1", "2026-03-11T00:05:00", "voice", 1, channel="voice"),
        session("D", "2026-03-10T23:50:00", "alert", channel=None),
        session("E", "2026-03-11T00:10:00"),
    ]


def day_rows(client: Client, database: str, tz: str, **kwargs: object) -> list[UsageRow]:
    args: dict[str, object] = {"start": None, "end": None, "apps": [], "account": None, "period": "day", "tz": tz}
    args.update(kwargs)
    return usage(client, database, **args)  # type: ignore[arg-type]


# -- R8 by hand ----------------------------------------------------------------------------------------


def test_days_in_utc(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(records_around_kolkata_midnight(), "t1")
    assert day_rows(chdb_client, database, "UTC") == [
        ("acme", "bot", "2026-03-10", 4, 4, 1, 1, 5),
        ("acme", "bot", "2026-03-11", 1, 1, 1, 0, 1),
    ]


def test_days_in_kolkata_split_at_1830_utc(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(records_around_kolkata_midnight(), "t1")
    assert day_rows(chdb_client, database, "Asia/Kolkata") == [
        ("acme", "bot", "2026-03-10", 2, 2, 0, 0, 2),  # 18:29 and 18:29:59.999 UTC
        ("acme", "bot", "2026-03-11", 3, 3, 2, 1, 4),  # from 18:30 UTC on
    ]


def test_rows_have_the_compute_columns_and_types(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(records_around_kolkata_midnight(), "t1")
    (row, *_) = day_rows(chdb_client, database, "UTC")
    assert len(row) == len(USAGE_COLUMNS)
    assert [type(v) for v in row] == [str, str, str, int, int, int, int, int]


def test_weeks_start_on_monday_in_the_zone(chdb_client: Client, database: str) -> None:
    # 2026-03-15 is a Sunday; 23:00Z is Monday 04:30 in Kolkata.
    SessionStore(chdb_client, database).insert(
        [session("M", "2026-03-09T00:00:00"), session("S", "2026-03-15T23:00:00"), session("N", "2026-03-16T00:00:00")],
        "t1",
    )
    assert day_rows(chdb_client, database, "UTC", period="week") == [
        ("acme", "bot", "2026-03-09", 2, 2, 0, 0, 2),
        ("acme", "bot", "2026-03-16", 1, 1, 0, 0, 1),
    ]
    assert day_rows(chdb_client, database, "Asia/Kolkata", period="week") == [
        ("acme", "bot", "2026-03-09", 1, 1, 0, 0, 1),
        ("acme", "bot", "2026-03-16", 2, 2, 0, 0, 2),
    ]


def test_months_in_the_zone(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(
        [
            session("P", "2026-03-01T00:00:00"),
            session("Q", "2026-03-31T20:00:00"),  # 2026-04-01 01:30 in Kolkata
            session("R", "2026-03-31T20:00:00", "alert", channel=None),
        ],
        "t1",
    )
    assert day_rows(chdb_client, database, "UTC", period="month") == [("acme", "bot", "2026-03-01", 2, 2, 0, 1, 3)]
    assert day_rows(chdb_client, database, "Asia/Kolkata", period="month") == [
        ("acme", "bot", "2026-03-01", 1, 1, 0, 0, 1),
        ("acme", "bot", "2026-04-01", 1, 1, 0, 1, 2),
    ]


def test_filters_by_app_account_and_local_days(chdb_client: Client, database: str) -> None:
    SessionStore(chdb_client, database).insert(
        [
            *records_around_kolkata_midnight(),
            session("G", "2026-03-10T12:00:00", app="shop", account="globex"),
            session("H", "2026-03-12T12:00:00", app="shop", account="globex"),
            session("I", "2026-03-10T12:00:00", app="faq"),
        ],
        "t1",
    )
    assert [r[:3] for r in day_rows(chdb_client, database, "UTC", apps=["shop", "faq"])] == [
        ("acme", "faq", "2026-03-10"),
        ("globex", "shop", "2026-03-10"),
        ("globex", "shop", "2026-03-12"),
    ]
    assert [r[:3] for r in day_rows(chdb_client, database, "UTC", account="globex")] == [
        ("globex", "shop", "2026-03-10"),
        ("globex", "shop", "2026-03-12"),
    ]
    assert day_rows(chdb_client, database, "Asia/Kolkata", apps=["bot"], start=date(2026, 3, 11)) == [
        ("acme", "bot", "2026-03-11", 3, 3, 2, 1, 4)
    ]
    assert day_rows(chdb_client, database, "Asia/Kolkata", apps=["bot"], end=date(2026, 3, 10)) == [
        ("acme", "bot", "2026-03-10", 2, 2, 0, 0, 2)
    ]
    assert day_rows(chdb_client, database, "UTC", start=date(2026, 3, 11), end=date(2026, 3, 11)) == [
        ("acme", "bot", "2026-03-11", 1, 1, 1, 0, 1)
    ]
    assert day_rows(chdb_client, database, "UTC", apps=["nobody"]) == []


def test_unknown_zone_is_a_clear_error(chdb_client: Client, database: str) -> None:
    for bad in ("Mars/Olympus_Mons", "", "../../etc/passwd", "UTC+5:30"):
        with pytest.raises(UnknownZoneError, match="IANA"):
            day_rows(chdb_client, database, bad)


def test_bad_period_and_reversed_range_are_refused(chdb_client: Client, database: str) -> None:
    with pytest.raises(ValueError, match="period"):
        day_rows(chdb_client, database, "UTC", period="year")
    with pytest.raises(ValueError, match="after the last day"):
        day_rows(chdb_client, database, "UTC", start=date(2026, 3, 2), end=date(2026, 3, 1))


def test_empty_database_has_no_rows(chdb_client: Client, database: str) -> None:
    assert day_rows(chdb_client, database, "UTC") == []


# -- agreement with the offline book in awkward zones ----------------------------------------------------

ZONES = (
    "UTC",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",  # -03:30 / -02:30 with DST
    "Australia/Lord_Howe",  # +10:30 / +11:00: a 30-minute DST shift
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/New_York",  # DST ends 2025-11-02
    "Europe/London",  # DST ends 2025-10-26
    "Pacific/Kiritimati",  # +14
    "Etc/GMT+12",  # -12
)


def random_sessions(seed: int, n: int) -> list[BillingSession]:
    """Conversations and alerts around late-October/early-November 2025 (two DST changes)."""
    rng = random.Random(seed)
    base = to_ms(datetime(2025, 10, 20, tzinfo=UTC))
    out: list[BillingSession] = []
    conv = 0
    while len(out) < n:
        conv += 1
        start = base + rng.randrange(0, 21 * 86_400_000)
        app, account = rng.choice([("bot", "acme"), ("shop", "acme"), ("shop", "globex"), ("help", "initech")])
        if rng.random() < 0.2:
            out.append(
                BillingSession(
                    billing_session_id=f"alert-{conv}", kind="alert", account_id=account, app_id=app,
                    conversation_session_id=None, conversation_id=None, user_id="u", channel=None,
                    session_index=0, started_ms=start, ended_ms=start, alert_id=f"a{conv}",
                )
            )  # fmt: skip
            continue
        kind: Kind = "voice" if rng.random() < 0.3 else "usage"
        for k in range(rng.choice([1, 1, 1, 2, 3, 5])):
            t = start + k * 900_000
            out.append(
                BillingSession(
                    billing_session_id=f"{kind}-{conv}-{k}", kind=kind, account_id=account, app_id=app,
                    conversation_session_id=f"cs-{conv}", conversation_id=f"c-{conv}", user_id="u",
                    channel="voice" if kind == "voice" else "web", session_index=k, started_ms=t,
                    ended_ms=t + 900_000, conversation_started_ms=start, bot_ms=0, agent_ms=0,
                )
            )  # fmt: skip
    return out


def by_period(rows: Sequence[UsageRow], period: Period) -> list[UsageRow]:
    """Roll the book's day rows up into weeks or months (counts are additive over days)."""
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0] * 5)
    for acc, app, day, *counts in rows:
        d = date.fromisoformat(day)
        start = d - timedelta(days=d.weekday()) if period == "week" else d.replace(day=1) if period == "month" else d
        total = sums[(acc, app, start.isoformat())]
        for i, c in enumerate(counts):
            total[i] += c
    return [(acc, app, day, *counts) for (acc, app, day), counts in sorted(sums.items())]  # type: ignore[misc]


def test_agrees_with_the_offline_book_in_every_zone_and_period(chdb_client: Client, database: str) -> None:
    sessions = random_sessions(seed=8, n=3000)
    store = SessionStore(chdb_client, database)
    records = [billing_session_record(s) for s in sessions]
    for i in range(0, len(records), 500):
        store.insert(records[i : i + 500], f"batch-{i}")
    replayed = random.Random(1).sample(records, 400)
    store.insert(replayed, "replay-1")  # same sessions, new token: must not change a figure
    for tz in ZONES:
        book = UsageBook(zone(tz))
        book.add_all(sessions)
        for period in ("day", "week", "month"):
            got = day_rows(chdb_client, database, tz, period=period)
            assert got == by_period(book.rows(), period), (tz, period)


# -- dashboard queries ------------------------------------------------------------------------------------


def test_dashboard_queries_run_and_count_replays_once(chdb_client: Client, database: str) -> None:
    store = SessionStore(chdb_client, database)
    store.insert(records_around_kolkata_midnight(), "t1")
    store.insert(records_around_kolkata_midnight(), "t2")
    by_channel = named_query(
        chdb_client, database, "sessions_by_channel",
        tz="Asia/Kolkata", **{"from": date(2026, 3, 11), "to": date(2026, 3, 11)}, apps=[], account=None,
    )  # fmt: skip
    assert [(str(d), acc, app, ch, kind, n) for d, acc, app, ch, kind, n in by_channel] == [
        ("2026-03-11", "acme", "bot", "", "alert", 1),
        ("2026-03-11", "acme", "bot", "voice", "voice", 2),
        ("2026-03-11", "acme", "bot", "web", "usage", 3),
    ]
    top = named_query(
        chdb_client, database, "top_apps", tz="UTC", **{"from": date(2026, 3, 10), "to": date(2026, 3, 11)}, limit=5
    )
    assert top == [("acme", "bot", 6, 2, 5)]
    sessions = named_query(
        chdb_client, database, "sessions_of_day",
        tz="Asia/Kolkata", day=date(2026, 3, 10), account="acme", app="bot", limit=100,
    )  # fmt: skip
    assert [row[0] for row in sessions] == ["A", "F"]
