"""`metering reconcile` against a real pipeline: real broker, real stream worker, the store's chDB.

One story, in the order an operator meets it (one worker start keeps the file quick):

1. a clean pipeline: the worker billed the traffic, reconcile from the topics finds nothing;
2. ClickHouse damaged by hand (a session lost, one stored twice): reconcile finds exactly those,
   ``--repair`` fixes them, a second ``--repair`` writes nothing;
3. late events (produced after their conversations were final, so the worker puts them on the
   late topic and bills nothing): reconcile bills them, with a ``reconcile_runs`` audit row.

After every repair `metering usage` must print what `metering compute` prints for the same events.
Every reconcile goes through the `metering reconcile` command, and so through the running store's
API (it holds the embedded database), as an operator's would. A second, short test has no
service running: reconcile connects to ClickHouse itself and rebuilds an empty database.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, TopicPartition

from cli.main import main
from cli.service import StoreEndpoints
from cli.usage_command import usage_text
from consumers.clickhouse import Client, migrate
from consumers.clickhouse.counts import key_of, recount
from consumers.clickhouse.reconcile import StoredSession, runs, snapshot
from devtools import traffic
from devtools.produce import produce
from pipeline.contract.events import LateRecord
from pipeline.infra.settings import Settings
from pipeline.rules.attribution import USAGE_COLUMNS
from pipeline.rules.config import HOUR
from tests.integration.conftest import Workers
from tests.late_traffic import late_scenarios
from tests.support import T0, in_time_order, meter_run, wait_until

pytestmark = pytest.mark.integration

FIRST, LAST = date(2026, 11, 1), date(2026, 11, 2)


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(traffic.encode(ev) + b"\n" for ev in events))
    return path


def billing_columns(csv: str) -> list[str]:
    """The lines in USAGE_COLUMNS: R11's agent columns after them are not reconcile's business."""
    return [",".join(line.split(",")[: len(USAGE_COLUMNS)]) for line in csv.splitlines()]


def computed(events: Path) -> list[str]:
    """`metering compute` on the file, the period's days only."""
    result = CliRunner().invoke(main, ["compute", "--events", str(events)])
    assert result.exit_code == 0, result.stderr
    header, *rows = billing_columns(result.stdout)
    return [header, *(r for r in rows if FIRST.isoformat() <= r.split(",")[2] <= LAST.isoformat())]


def metered(settings: Settings) -> list[str]:
    """`metering usage --format csv --by day` for the period (asks the running store if one runs)."""
    return billing_columns(
        usage_text(settings, start=FIRST, end=LAST, apps=(), account=None, by="day", tz="UTC", fmt="csv")
    )


def reconcile(settings: Settings, *options: str) -> tuple[int, dict[str, Any]]:
    """`metering reconcile` for the period with the pipeline's settings: (exit status, its json report)."""
    args = ["reconcile", "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--timezone", "UTC", "--format", "json"]
    result = CliRunner().invoke(main, [*args, *options], env=settings.to_env())
    assert result.exit_code in {0, 1}, f"exit {result.exit_code}: {result.stderr}"
    return result.exit_code, json.loads(result.stdout)["summary"]


def differences(summary: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (summary["missing"], summary["extra"], summary["moved"], summary["voided"], summary["days_different"])


def late_event_ids(settings: Settings) -> set[str]:
    """The event ids on the late topic so far (read committed, to each partition's end: the workers write it
    in transactions, so a partition can end with a transaction marker)."""
    topic = settings.topics.late
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "late-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        ids: set[str] = set()
        left = {p for p, end in ends.items() if end > 0}
        while left:
            messages = consumer.consume(500, timeout=5.0)
            assert messages, "the late topic stopped delivering before its end"
            for m in messages:
                error = m.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    if (m.offset() or 0) >= ends[m.partition() or 0]:
                        left.discard(m.partition() or 0)
                    continue
                assert error is None, error
                ids.add(msgspec.json.decode(m.value(), type=LateRecord).event_id)
        return ids
    finally:
        consumer.close()


def lose(client: Client, database: str, s: StoredSession) -> None:
    """As if the sink had never written ``s``: its row, its bucket of usage_15m rebuilt without it, and recounted."""
    where = {"db": database, "acc": s.account_id, "app": s.app_id, "kind": s.kind, "sid": s.billing_session_id,
             "bucket": s.bucket_ms // 1000}  # fmt: skip
    sync = {"mutations_sync": 2}
    client.command(
        "ALTER TABLE {db:Identifier}.billing_sessions DELETE WHERE billing_session_id = {sid:String}",
        parameters=where, settings=sync,
    )  # fmt: skip
    bucket = "account_id = {acc:String} AND app_id = {app:String} AND kind = {kind:String}"
    client.command(
        f"ALTER TABLE {{db:Identifier}}.usage_15m DELETE WHERE {bucket} "
        "AND bucket = toDateTime({bucket:UInt32}, 'UTC')",
        parameters=where, settings=sync,
    )  # fmt: skip
    client.command(
        "INSERT INTO {db:Identifier}.usage_15m SELECT account_id, app_id, toStartOfFifteenMinutes(started_at) AS b, "
        "kind, uniqExactState(billing_session_id), uniqExactStateIf(ifNull(conversation_session_id, ''), "
        "session_index = 0 AND kind IN ('usage', 'voice') AND conversation_session_id IS NOT NULL) "
        f"FROM {{db:Identifier}}.billing_sessions WHERE {bucket} AND b = toDateTime({{bucket:UInt32}}, 'UTC') "
        "GROUP BY account_id, app_id, b, kind",
        parameters=where, settings={"insert_deduplicate": 0},
    )  # fmt: skip
    recount(client, database, [key_of(s.account_id, s.app_id, s.started_ms)])


def store_again(client: Client, database: str, s: StoredSession, *, new_id: str | None, token: str) -> None:
    """Write ``s``'s row once more, as a second writer would: with its own id (``new_id``) or the same."""
    rows = client.query(
        "SELECT * EXCEPT (inserted_at, reconcile_run_id) FROM {db:Identifier}.billing_sessions FINAL "
        "WHERE billing_session_id = {sid:String}",
        parameters={"db": database, "sid": s.billing_session_id},
    )
    (row,) = [list(r) for r in rows.result_rows]
    names = list(rows.column_names)
    if new_id is not None:
        row[names.index("billing_session_id")] = new_id
    client.insert("billing_sessions", [row], column_names=names, database=database,
                  settings={"insert_deduplication_token": token})  # fmt: skip
    recount(client, database, [key_of(s.account_id, s.app_id, s.started_ms)])  # as every writer does


def test_clean_then_damaged_then_late_reconcile_finds_repairs_and_audits(  # noqa: PLR0915 - one scenario read top to bottom
    settings: Settings, store: StoreEndpoints, workers: Workers, chdb_client: Client, tmp_path: Path
) -> None:
    database = settings.clickhouse_database
    on_time, late = late_scenarios()
    background = list(traffic.events(T0 - HOUR, 600, seed=9))
    on_time_file = write(tmp_path / "on_time.jsonl", in_time_order([*on_time, *background]))
    late_file = write(tmp_path / "late.jsonl", late)
    all_file = write(tmp_path / "all.jsonl", [*in_time_order([*on_time, *background]), *late])

    # 1. A clean pipeline: what the worker billed is what the rules bill.
    assert produce(settings, on_time_file).failed == 0
    workers.start(1)
    expected = computed(on_time_file)
    assert len(expected) > 3
    wait_until(lambda: metered(settings) == expected, 90, "usage to equal compute")
    status, clean = reconcile(settings)
    assert clean["source"].startswith("topics ")
    assert clean["clickhouse"].startswith("the running metering service at ")
    assert (status, differences(clean)) == (0, (0, 0, 0, 0, 0))
    assert clean["truth_sessions"] == clean["clickhouse_sessions"] > 100
    assert (clean["invalid"], clean["unfinished"], clean["unverifiable"]) == (0, 0, 0)

    # 2. ClickHouse damaged by hand: one session lost, one stored twice.
    stored = sorted(snapshot(chdb_client, database, start=FIRST, end=LAST, tz="UTC").sessions,
                    key=lambda s: s.billing_session_id)  # fmt: skip
    lost = next(s for s in stored if s.kind == "usage" and s.session_index == 0)
    doubled = next(s for s in stored if s.kind == "alert")
    lose(chdb_client, database, lost)
    store_again(chdb_client, database, doubled, new_id=None, token="same-again")  # a set: counted once anyway
    store_again(chdb_client, database, doubled, new_id=f"{doubled.billing_session_id}-copy", token="another-id")
    assert metered(settings) != expected
    status, damaged = reconcile(settings)
    assert (status, differences(damaged)[:4]) == (1, (1, 1, 0, 0))
    assert damaged["days_different"] >= 1

    status, fixed = reconcile(settings, "--repair")
    assert (status, fixed["repair"]["inserted"], fixed["repair"]["voided"]) == (0, 1, 1)
    assert fixed["repair"]["days_different_after"] == 0
    assert metered(settings) == expected
    status, again = reconcile(settings, "--repair")
    assert (status, differences(again), again["repair"]["inserted"], again["repair"]["voided"]) == (
        0, (0, 0, 0, 0, 0), 0, 0,
    )  # fmt: skip
    assert metered(settings) == expected

    # 3. Late events. Those of conversations already final go to the late topic and are billed by
    # nobody but reconcile. A whole conversation (or alert) that arrives late may instead be the
    # first thing a partition hears after an idle spell, which resets its clock to event time
    # (R9): then the stream bills it, correctly. Either way reconcile must end up at the truth.
    duplicate = on_time[0]["event_id"]  # its late copy is a duplicate (R1), for the stream as for the rules
    certain = {ev["event_id"] for ev in late if ev.get("conversation_id") in {"merge", "extend", "test", "move"}} - {
        duplicate
    }
    uncertain = [
        [ev for ev in late if ev.get("conversation_id") == "new"],
        [ev for ev in late if ev["event_id"] == "alert-late"],
        [ev for ev in late if ev.get("conversation_id") == "call"],
    ]
    assert produce(settings, late_file).failed == 0

    def settled() -> tuple[bool, int]:
        """Whether the worker has dealt with every late event of the period; how many whole ones were late."""
        on_late = late_event_ids(settings)
        stored_ids = {s.billing_session_id for s in snapshot(chdb_client, database, start=FIRST, end=LAST,
                                                              tz="UTC").sessions}  # fmt: skip
        late_ones = billed = 0
        for events in uncertain:
            ids = {ev["event_id"] for ev in events}
            late_ones += ids <= on_late
            billed += {s.billing_session_id for s in meter_run(events)} <= stored_ids
        return certain <= on_late and late_ones + billed == len(uncertain), late_ones

    try:
        wait_until(lambda: settled()[0], 60, "the worker to deal with the late events")
    except AssertionError:
        print("late topic:", sorted(late_event_ids(settings)), "expected at least:", sorted(certain))
        print("worker logs:\n" + workers.logs())
        raise
    whole_late = settled()[1]
    status, found = reconcile(settings)
    assert (status, differences(found)[:4]) == (1, (2 + whole_late, 3, 1, 0))
    status, repaired = reconcile(settings, "--repair")
    assert status == 0
    assert (repaired["repair"]["inserted"], repaired["repair"]["voided"]) == (3 + whole_late, 4)
    assert repaired["repair"]["days_different_after"] == 0
    assert metered(settings) == computed(all_file)
    status, again = reconcile(settings)
    assert (status, differences(again)) == (0, (0, 0, 0, 0, 0))

    trail = runs(chdb_client, database)
    inserted = 3 + whole_late
    assert [(r.status, r.inserted, r.voided) for r in trail] == [
        ("done", inserted, 4), ("done", 0, 0), ("done", 1, 1),
    ]  # fmt: skip
    late_run = trail[0]
    assert late_run.run_id == repaired["repair"]["run_id"]
    assert (late_run.missing, late_run.extra, late_run.period_from, late_run.period_to) == (inserted, 4, FIRST, LAST)
    assert late_run.os_user
    assert late_run.host
    assert late_run.source.startswith("topics ")
    assert (late_run.finished_ms or 0) >= late_run.started_ms > 0
    tagged = chdb_client.query(
        "SELECT (SELECT count() FROM {db:Identifier}.billing_sessions WHERE reconcile_run_id = {run:String}), "
        "(SELECT count() FROM {db:Identifier}.session_voids WHERE reconcile_run_id = {run:String})",
        parameters={"db": database, "run": late_run.run_id},
    ).result_rows
    assert tagged == [(inserted, 4)]


def test_an_empty_database_is_rebuilt_from_the_topics_over_a_direct_connection(
    settings: Settings, chdb_client: Client, tmp_path: Path
) -> None:
    """No running service: reconcile opens ClickHouse itself; everything the topics hold is missing."""
    on_time, late = late_scenarios()
    events = write(tmp_path / "events.jsonl", [*in_time_order(on_time), *late])
    assert produce(settings, events).failed == 0
    migrate(chdb_client, settings.clickhouse_database)
    status, found = reconcile(settings, "--repair")
    assert found["clickhouse"].startswith("ClickHouse at chdb://")
    assert found["missing"] == found["truth_sessions"] > 0
    assert (status, found["extra"], found["repair"]["days_different_after"]) == (0, 0, 0)
    assert metered(settings) == computed(events)
