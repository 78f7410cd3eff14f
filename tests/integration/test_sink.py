"""The sink against the real broker and the session's embedded chDB: exact, replay-proof, outage-proof.

Billing-sessions messages are produced keyed by app (as the workers do) over the six
partitions, some twice at different offsets; the figures must come out exactly as computed
by hand, after a crash between insert and commit and after a ClickHouse outage too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from cli.service import StoreEndpoints, discovery_file, serve_store
from cli.usage_command import usage_text
from consumers.clickhouse import ClickHouseWriteError, Client, SessionStore, migrate, usage
from consumers.sink import ClickHouseSink
from pipeline.contract.events import BillingSessionRecord
from pipeline.infra.kafka import partition_of, producer_config
from pipeline.infra.report import render
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings
from pipeline.rules.agent_book import AGENT_COLUMNS
from pipeline.rules.attribution import USAGE_COLUMNS, UsageRow
from tests.support import SinkThread

pytestmark = pytest.mark.integration

DAY1 = datetime(2026, 11, 1, 10, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
FAST = Backoff(initial=0.05, maximum=0.4)


def apps_covering(partitions: int, per_partition: int = 2) -> list[str]:
    """App ids whose keys land on every partition, ``per_partition`` each."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per_partition for v in chosen.values()):
        app = f"app-{i:03d}"
        bucket = chosen[partition_of(app.encode(), partitions)]
        if len(bucket) < per_partition:
            bucket.append(app)
        i += 1
    return sorted(a for v in chosen.values() for a in v)


def records_of(app: str, tag: str) -> list[BillingSessionRecord]:
    """Per app: a 3-session chat and two alerts on day 1, a voice call on day 2."""

    def session(sid: str, kind: str, start: datetime, index: int = 0, conv: str | None = None) -> BillingSessionRecord:
        return BillingSessionRecord(
            billing_session_id=f"{tag}-{app}-{sid}",
            kind=kind,  # type: ignore[arg-type]
            account_id="acme",
            app_id=app,
            conversation_session_id=None if conv is None else f"{tag}-{app}-{conv}",
            conversation_id=None if conv is None else f"{tag}-{app}-{conv}-c",
            user_id="u-1",
            channel=None if kind == "alert" else ("voice" if kind == "voice" else "web"),
            session_index=index,
            started_at=start,
            ended_at=start + timedelta(minutes=15),
            alert_id=f"{tag}-{app}-{sid}" if kind == "alert" else None,
        )

    return [
        *(session(f"chat.{i}", "usage", DAY1 + timedelta(minutes=15 * i), i, "chat") for i in range(3)),
        session("alert.0", "alert", DAY1 + timedelta(hours=1)),
        session("alert.1", "alert", DAY1 + timedelta(hours=2)),
        session("call.0", "voice", DAY2, 0, "call"),
    ]


def expected_rows(apps: Sequence[str]) -> list[UsageRow]:
    """By hand: day 1 = 1 conversation, 3 usage + 2 alert sessions; day 2 = 1 conversation, 1 voice."""
    return sorted(
        row
        for app in apps
        for row in (("acme", app, "2026-11-01", 1, 3, 0, 2, 5), ("acme", app, "2026-11-02", 1, 0, 1, 0, 0))
    )


def produce(settings: Settings, records: Sequence[BillingSessionRecord], duplicate_every: int = 3) -> int:
    """Produce ``records`` keyed by app, every ``duplicate_every``-th one twice; returns messages sent."""
    producer = Producer(producer_config(settings))
    sent = 0
    for i, record in enumerate(records):
        for _ in range(2 if i % duplicate_every == 0 else 1):
            producer.produce(
                settings.topics.billing_sessions, key=record.app_id.encode(), value=msgspec.json.encode(record)
            )
            sent += 1
    assert producer.flush(30) == 0
    return sent


def produced_over_every_partition(settings: Settings, tag: str) -> tuple[list[str], list[BillingSessionRecord], int]:
    """Apps covering every partition, their ``tag``-named records, produced with copies: (apps, records, sent)."""
    apps = apps_covering(settings.partitions)
    records = [r for app in apps for r in records_of(app, tag)]
    return apps, records, produce(settings, records)


class Running(SinkThread):
    """A sink run in a thread; ``error`` keeps what ``run`` raised."""

    def __init__(self, sink: ClickHouseSink) -> None:
        super().__init__(sink, assigned_within=30, joined_within=30)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def store(chdb_client: Client, settings: Settings) -> Iterator[SessionStore]:
    migrate(chdb_client, settings.clickhouse_database)
    yield SessionStore(chdb_client, settings.clickhouse_database)
    chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": settings.clickhouse_database})


def figures(client: Client, database: str) -> list[UsageRow]:
    return usage(client, database, start=None, end=None, apps=[], account=None, period="day", tz="UTC")


def stored_sessions(client: Client, database: str) -> tuple[int, int]:
    """(rows after replacing duplicates, distinct session ids)."""
    final = client.command("SELECT count() FROM {db:Identifier}.billing_sessions FINAL", parameters={"db": database})
    distinct = client.command(
        "SELECT uniqExact(billing_session_id) FROM {db:Identifier}.billing_sessions", parameters={"db": database}
    )
    return int(final), int(distinct)  # type: ignore[arg-type]


def lag_total(group: str, topic: str, partitions: int) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "metering_consumer_lag_messages", {"group": group, "topic": topic, "partition": str(p)}
        )
        or 0.0
        for p in range(partitions)
    )


class Recording:
    """A SessionWriter wrapper that remembers the tokens it passed on."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self.tokens: list[str] = []

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
        self.inner.insert(records, token)
        self.tokens.append(token)


class SimulatedCrash(RuntimeError):
    pass


class CrashAfterFirstInsert(Recording):
    """Inserts one block into ClickHouse, then dies before the sink can commit anything."""

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
        super().insert(records, token)
        raise SimulatedCrash("the sink process dies between the ClickHouse insert and the Kafka commit")


class Outage:
    """Fails the first ``failures`` inserts as an unreachable server does, then passes through."""

    def __init__(self, inner: SessionStore, failures: int) -> None:
        self.inner = inner
        self.remaining = failures
        self.failed = 0

    def insert(self, records: Sequence[BillingSessionRecord], token: str) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            self.failed += 1
            raise ClickHouseWriteError(
                f"simulated outage: connection refused (token {token})", code=None, transient=True
            )
        self.inner.insert(records, token)


def test_sessions_over_six_partitions_with_duplicates_count_exactly_once(
    settings: Settings, store: SessionStore, chdb_client: Client
) -> None:
    apps, records, sent = produced_over_every_partition(settings, "a")
    assert sent > len(records)
    delays_before = REGISTRY.get_sample_value("metering_session_visible_delay_seconds_count") or 0.0
    sink = ClickHouseSink(settings, Recording(store), backoff=FAST)
    with Running(sink):
        wait_for(lambda: figures(chdb_client, settings.clickhouse_database) == expected_rows(apps), what="usage")
        wait_for(lambda: sum(sink.committed_offsets().values()) == sent, what="commits")
    assert stored_sessions(chdb_client, settings.clickhouse_database) == (len(records), len(records))
    assert sorted(sink.committed_offsets()) == list(range(settings.partitions))
    delays = (REGISTRY.get_sample_value("metering_session_visible_delay_seconds_count") or 0.0) - delays_before
    assert delays >= len(records)
    assert lag_total(sink.group, sink.topic, settings.partitions) == 0


def test_a_crash_between_insert_and_commit_loses_nothing_and_counts_nothing_twice(
    settings: Settings, store: SessionStore, chdb_client: Client
) -> None:
    apps, records, sent = produced_over_every_partition(settings, "b")
    crashing = CrashAfterFirstInsert(store)
    first = ClickHouseSink(settings, crashing, backoff=FAST)
    with Running(first) as run:
        wait_for(lambda: run.error is not None, what="the simulated crash")
    assert isinstance(run.error, SimulatedCrash)
    assert first.committed_offsets() == {}
    (crashed_token,) = crashing.tokens
    assert stored_sessions(chdb_client, settings.clickhouse_database)[1] > 0  # the block is in ClickHouse

    recording = Recording(store)
    second = ClickHouseSink(settings, recording, backoff=FAST)
    with Running(second):
        wait_for(lambda: figures(chdb_client, settings.clickhouse_database) == expected_rows(apps), what="usage")
        wait_for(lambda: sum(second.committed_offsets().values()) == sent, what="commits")
    crashed_partition = crashed_token.rsplit(":", 2)[1]
    assert any(t.startswith(f"{second.topic}:{crashed_partition}:0-") for t in recording.tokens), (
        "the restarted sink re-read the crashed block from offset 0"
    )
    assert stored_sessions(chdb_client, settings.clickhouse_database) == (len(records), len(records))


def test_a_clickhouse_outage_backs_off_shows_lag_and_catches_up(
    settings: Settings, store: SessionStore, chdb_client: Client
) -> None:
    apps, records, sent = produced_over_every_partition(settings, "c")
    failures_before = REGISTRY.get_sample_value("metering_sink_insert_failures_total") or 0.0
    outage = Outage(store, failures=5)
    sink = ClickHouseSink(settings, outage, backoff=FAST)
    with Running(sink):
        wait_for(lambda: outage.failed >= 3, what="the outage")
        assert lag_total(sink.group, sink.topic, settings.partitions) > 0
        assert sink.committed_offsets() == {}
        wait_for(lambda: figures(chdb_client, settings.clickhouse_database) == expected_rows(apps), what="usage")
        wait_for(lambda: sum(sink.committed_offsets().values()) == sent, what="commits")
        wait_for(lambda: lag_total(sink.group, sink.topic, settings.partitions) == 0, what="lag back to 0")
    assert outage.failed == 5
    assert (REGISTRY.get_sample_value("metering_sink_insert_failures_total") or 0.0) - failures_before == 5
    assert stored_sessions(chdb_client, settings.clickhouse_database) == (len(records), len(records))


def test_the_store_process_serves_usage_to_metering_usage_while_it_runs(
    settings: Settings, chdb_client: Client
) -> None:
    apps = apps_covering(settings.partitions, per_partition=1)
    produce(settings, [r for app in apps for r in records_of(app, "d")])
    stop = threading.Event()
    ready: list[StoreEndpoints] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            serve_store(settings, stop, ready.append)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    no_agents = [(*row, 0, 0) for row in expected_rows(apps)]  # sessions only: no seats, no transfers
    expected = render((*USAGE_COLUMNS, *AGENT_COLUMNS), no_agents, "csv")

    def printed() -> str:
        return usage_text(settings, start=None, end=None, apps=[], account=None, by="day", tz="UTC", fmt="csv")

    try:
        wait_for(lambda: bool(ready) or bool(errors), what="the store to be ready")
        assert not errors, errors
        assert discovery_file(settings).exists()
        wait_for(lambda: printed() == expected, what="metering usage via the API")
    finally:
        stop.set()
        thread.join(30)
        chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": settings.clickhouse_database})
    assert not errors, errors
    assert not discovery_file(settings).exists()
    assert ready[0].api.startswith("http://127.0.0.1:")
