"""Traffic in which some events come late, and what the stream bills for it: for the reconcile tests.

``late_scenarios`` holds conversations that a late event changes, each in another way, so that
reconciliation meets every kind of difference (missing, extra, moved); ``stream_run`` is what
the stream bills for an arrival order (a ``Meter`` that drops late events, as the workers do)
and ``write_stream`` writes it to ClickHouse as the sink does.
"""

from __future__ import annotations

from typing import Any

from consumers.clickhouse import Client, SessionStore
from pipeline.rules.config import DAY, RulesConfig
from pipeline.rules.meter import Meter, Outcome
from pipeline.rules.model import BillingSession
from pipeline.stream.records import billing_session_record
from tests.support import T0, Conversation, alert, decode


def late_scenarios() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(on time, late): conversations a late event changes, each in another way."""
    on_time: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []

    # A: a late turn at 14 joins 0-5 and 25-30: the stream billed two sessions, the truth one of
    # two usage sessions (the second conversation's session is extra, k=1 is missing).
    merge = Conversation(conversation_id="merge").user(0).bot(5).user(25).bot(30)
    on_time += merge.events
    late += Conversation(conversation_id="merge").user(14).events
    # B: a late turn at 20 extends 0-10 to a second usage session.
    on_time += Conversation(conversation_id="extend").user(0).bot(10).events
    late += Conversation(conversation_id="extend").user(20).events
    # C: a whole conversation arrives late.
    late += Conversation(conversation_id="new", app_id="shop", account_id="globex").user(50).bot(52).events
    # D: a late alert.
    late.append(alert(60, event_id="alert-late"))
    # E: a late test turn makes a billed session non-billable.
    on_time += Conversation(conversation_id="test").user(0).bot(3).events
    late += Conversation(conversation_id="test").user(2, is_test=True).events
    # F: a late agent transfer (5-20) moves usage session 1 from 10:15 to 10:30 and removes 2.
    on_time += Conversation(conversation_id="move").user(0).bot(2).user(12).bot(22).user(30).bot(35).events
    late += Conversation(conversation_id="move").transfer("started", 5).transfer("ended", 20).events
    # G: day two: a late voice call (one voice session, one conversation).
    day2 = T0 + DAY
    on_time += Conversation(conversation_id="day2", start=day2).user(0).bot(4).events
    late += Conversation(conversation_id="call", channel="voice", start=day2).user(10).bot(40).events
    # H: day three, outside the period: a late alert that reconcile of days 1-2 must leave alone.
    on_time.append(alert(3 * 24 * 60 + 120, event_id="alert-day3"))
    late.append(alert(3 * 24 * 60, event_id="alert-day3-late"))
    # a duplicate arriving late is a duplicate for everyone
    late.append(dict(on_time[0]))
    return on_time, late


def stream_run(arrival: list[dict[str, Any]]) -> tuple[list[BillingSession], int]:
    """What the stream bills for this arrival order (late events dropped), and how many were late."""
    meter = Meter(RulesConfig())
    late = 0
    for event in arrival:
        t, e = decode(event)
        late += meter.apply(t, e) is Outcome.LATE  # type: ignore[arg-type]
    meter.finish()
    return meter.drain()[0], late


def write_stream(client: Client, database: str, sessions: list[BillingSession]) -> None:
    """Insert as the sink does: blocks of records with tokens of their own."""
    records = [billing_session_record(s) for s in sessions]
    store = SessionStore(client, database)
    for i in range(0, len(records), 400):
        store.insert(records[i : i + 400], f"stream:0:{i}")
