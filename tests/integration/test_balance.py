"""Balances on the real broker: the processor (a child process), the entitlement endpoint, the notifier.

What each test proves:

- the processor's balances from `billing-plans` + `billing-sessions` are what ``Ledger`` computes
  from the same records (plans re-pricing, held sessions, currencies, seats, an invalid plan
  message dead-lettered), in `balance-state` and in its metrics;
- a processor SIGKILLed in the middle of a transaction and restarted, with every billing
  session delivered twice, charges nothing twice and produces exactly one alert per crossing,
  with the ids ``Ledger`` gives (counted with read_committed, as every consumer reads them);
- a second processor joining mid-stream takes partitions over with their state, and a replay of both
  topics from offset 0 changes nothing;
- entitlement flips to false when the money runs out and back when funds are added;
- the notifier delivers every alert to a webhook that fails its first calls, signed, in order,
  and commits only what was delivered.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from consumers.entitlement import BalanceStateFeed, EntitlementModel, EntitlementServer
from consumers.notifier import EVENT_ID_HEADER, SIGNATURE_HEADER, Notifier, Webhook, verify
from pipeline.balance.ledger import BalanceConfig, Ledger
from pipeline.balance.money import format_money
from pipeline.contract.events import (
    AgentsSubscribed,
    BalanceAlert,
    BalanceSnapshot,
    DeadLetter,
    FundsAdded,
    PlanChanged,
    ms_to_datetime,
)
from pipeline.infra.kafka import producer_config
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings
from pipeline.rules.config import MINUTE
from pipeline.rules.model import BillingSession, Kind
from pipeline.stream.balance import group_id
from pipeline.stream.records import billing_session_record, encode
from tests.balance_support import ACCOUNT, funds, plan, session
from tests.processes import ChildProcesses
from tests.support import T0, get_json, wait_until

pytestmark = pytest.mark.integration

#: A transaction per batch: the scenarios that fail or kill the N-th commit count commits in batches.
PER_BATCH = {"METERING_TRANSACTION_SECONDS": "0"}

STATES: tuple[Literal["low", "depleted", "recovered"], ...] = ("low", "depleted", "recovered")
_snapshot = msgspec.json.Decoder(BalanceSnapshot)
_alert = msgspec.json.Decoder(BalanceAlert)


# -- helpers ---------------------------------------------------------------------------------


class BalanceProcess(ChildProcesses):
    """``python -m cli balance``, as `metering run` starts it."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(settings, log_dir, "balance", "balance metrics")

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("--metrics-port", "0", *args, **env)

    def metrics_url(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
        return self.announced_url(process, timeout)


@pytest.fixture
def processors(settings: Settings, tmp_path: Path) -> Iterator[BalanceProcess]:
    with closing(BalanceProcess(settings, tmp_path)) as pool:
        yield pool


def produce(settings: Settings, messages: list[tuple[str, str, bytes]]) -> None:
    """(topic, key, value) messages, keyed by app as docs/events.md says; every one acknowledged."""
    producer = Producer(producer_config(settings))
    for topic, key, value in messages:
        producer.produce(topic, value, key.encode())
    assert producer.flush(60) == 0


def plan_messages(settings: Settings, events: list[Any]) -> list[tuple[str, str, bytes]]:
    return [(settings.topics.plans, e.app_id, msgspec.json.encode(e)) for e in events]


def session_messages(settings: Settings, sessions: list[BillingSession]) -> list[tuple[str, str, bytes]]:
    return [(settings.topics.billing_sessions, s.app_id, encode(billing_session_record(s))) for s in sessions]


def read_committed(settings: Settings, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(partition, offset, key, value) of every committed message of ``topic``, per partition in order."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                error = m.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    pending.discard(m.partition())
                else:
                    out.append((m.partition() or 0, m.offset() or 0, m.key(), m.value()))
        assert not pending, f"could not read {topic} to its end"
        return sorted(out, key=lambda x: (x[0], x[1]))
    finally:
        consumer.close()


def snapshots(settings: Settings) -> dict[str, BalanceSnapshot]:
    """The latest committed snapshot of each app."""
    latest: dict[str, BalanceSnapshot] = {}
    for _, _, _, value in read_committed(settings, settings.topics.balance_state):
        assert value is not None
        snap = _snapshot.decode(value)
        previous = latest.get(snap.app_id)
        assert previous is None or snap.version > previous.version, "versions increase per app"
        latest[snap.app_id] = snap
    return latest


def alerts(settings: Settings) -> list[BalanceAlert]:
    return [_alert.decode(v or b"") for _, _, _, v in read_committed(settings, settings.topics.balance_alerts)]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def group_caught_up(settings: Settings, topic: str) -> bool:
    """The balance group has committed the end of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id(settings)})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


def inputs_caught_up(settings: Settings) -> bool:
    """The balance group has consumed everything on both of its input topics."""
    return group_caught_up(settings, settings.topics.billing_sessions) and group_caught_up(
        settings, settings.topics.plans
    )


def apply(ledger: Ledger, event: PlanChanged | FundsAdded) -> list[BalanceAlert]:
    return ledger.apply_plan(event) if isinstance(event, PlanChanged) else ledger.apply_funds(event)


def expected_view(ledger: Ledger, app_id: str) -> dict[str, Any]:
    state = ledger.apps[app_id]
    tally = state.tallies[state.currency]
    return {
        "funds": format_money(tally.funds),
        "usage_cost": format_money(tally.usage_cost),
        "alert_cost": format_money(tally.alert_cost),
        "voice_cost": format_money(tally.voice_cost),
        "sessions": (tally.usage_sessions, tally.alert_sessions, tally.voice_sessions),
        "unpriced": state.unpriced,
        "balance": format_money(state.balance),
        "threshold": format_money(state.threshold),
        "status": state.status,
        "currency": state.currency,
        "plan": None if state.plan is None else state.plan.plan,
        "entitled": ledger.entitled(app_id, int(time.time() * 1000)),
    }


def funded_apps(apps: list[str]) -> list[PlanChanged | FundsAdded]:
    """A plan and 60.00 of funds a minute before T0 per app: where the stream scenarios start."""
    return [
        e
        for app in apps
        for e in (
            plan(T0 - MINUTE, event_id=f"p-{app}", app_id=app),
            funds("60.00", T0 - MINUTE, event_id=f"f-{app}", app_id=app),
        )
    ]


def ledger_over(
    setup: list[PlanChanged | FundsAdded], sessions: list[BillingSession]
) -> tuple[Ledger, list[BalanceAlert]]:
    """The ledger after the setup events then the sessions, and every alert it raised on the way."""
    ledger = Ledger()
    expected: list[BalanceAlert] = []
    for event in setup:
        expected += apply(ledger, event)
    for s in sessions:
        expected += ledger.charge(s)
    return ledger, expected


def assert_balances_and_alert_ids_match(
    settings: Settings, apps: list[str], ledger: Ledger, expected: list[BalanceAlert]
) -> None:
    """Each app's snapshot is the ledger's view and its alerts carry the ledger's ids, in order."""
    latest = snapshots(settings)
    produced = alerts(settings)
    for app in apps:
        assert view(latest[app]) == expected_view(ledger, app), app
        assert [a.alert_event_id for a in produced if a.app_id == app] == [
            a.alert_event_id for a in expected if a.app_id == app
        ], app


def view(snap: BalanceSnapshot) -> dict[str, Any]:
    return {
        "funds": snap.funds,
        "usage_cost": snap.usage_cost,
        "alert_cost": snap.alert_cost,
        "voice_cost": snap.voice_cost,
        "sessions": (snap.usage_sessions, snap.alert_sessions, snap.voice_sessions),
        "unpriced": snap.unpriced_sessions,
        "balance": snap.balance,
        "threshold": snap.threshold,
        "status": snap.status,
        "currency": snap.currency,
        "plan": snap.plan,
        "entitled": snap.entitled,
    }


# -- (a) the processor computes what the ledger computes --------------------------------------


def test_balances_from_the_topics_equal_the_ledger_over_the_same_records(
    settings: Settings, processors: BalanceProcess
) -> None:
    """Plans (one re-pricing sessions already charged), top-ups in two currencies, sessions of every kind,
    one session before any plan (held), seats and an invalid plan message: `balance-state` and the metrics
    say what ``Ledger`` says, in whatever order the two topics were interleaved."""
    apps = ["bot-a", "bot-b", "bot-c"]
    plans_events: list[PlanChanged | FundsAdded] = []
    sessions: list[BillingSession] = []
    for i, app in enumerate(apps):
        plans_events += [
            plan(
                T0,
                usage="1.25",
                alert="0.005",
                voice="2.00",
                event_id=f"p1-{app}",
                app_id=app,
                name="enterprise" if app == "bot-c" else "starter",
            ),
            funds("100.00", T0, event_id=f"f1-{app}", app_id=app),
            funds("7.50", T0, event_id=f"f2-{app}", app_id=app, currency="EUR"),
            plan(
                T0 + 60 * MINUTE,
                usage="0.75",
                alert="0.01",
                voice="3.10",
                event_id=f"p2-{app}",
                app_id=app,
                threshold="20.00",
                name="enterprise" if app == "bot-c" else "starter",
            ),
        ]
        kinds: tuple[Kind, ...] = ("usage", "alert", "voice")
        sessions += [session(f"{app}-s{k}", T0 + k * 3 * MINUTE, kinds[k % 3], app_id=app) for k in range(40 + 10 * i)]
        sessions.append(session(f"{app}-early", T0 - 5 * MINUTE, app_id=app))  # before any plan: held
    # an app being set up: a plan, no funds and no sessions yet
    plans_events.append(plan(T0, usage="1.00", alert="0.01", voice="1.00", event_id="p1-new", app_id="bot-new"))
    seats = AgentsSubscribed(
        event_id="seats-1", occurred_at=ms_to_datetime(T0), account_id=ACCOUNT, app_id="bot-a", agents=7
    )
    settings = replace(settings, unlimited_plans=frozenset({"enterprise"}))
    processors.settings = settings
    process = processors.start()
    url = processors.metrics_url(process)
    produce(settings, [*session_messages(settings, sessions[: len(sessions) // 2])])
    produce(
        settings,
        [
            *plan_messages(settings, [*plans_events, seats]),
            (settings.topics.plans, "bot-a", b'{"type": "funds_added", "amount": "1.00"}'),
        ],
    )
    produce(settings, session_messages(settings, sessions[len(sessions) // 2 :]))

    ledger = Ledger(BalanceConfig(unlimited_plans=frozenset({"enterprise"})))
    for event in plans_events:
        apply(ledger, event)
    for s in sessions:
        ledger.charge(s)

    def done() -> bool:
        assert process.poll() is None, processors.logs()
        latest = snapshots(settings)
        return all(
            a in latest
            and view(latest[a])["sessions"] == expected_view(ledger, a)["sessions"]
            and latest[a].funds == "100.00"
            for a in apps
        ) and group_caught_up(settings, settings.topics.plans)

    wait_until(done, 60, "every session and top-up in balance-state")
    latest = snapshots(settings)
    for app in apps:
        assert view(latest[app]) == expected_view(ledger, app), app
    assert latest["bot-a"].agents == 7
    assert latest["bot-a"].unpriced_sessions == 1, "the early session started before the first plan: held"
    assert latest["bot-c"].entitled, "an unlimited plan"

    dead = [msgspec.json.decode(v or b"", type=DeadLetter) for *_, v in read_committed(settings, settings.topics.dlq)]
    assert [(d.code, d.source_topic) for d in dead] == [("schema", settings.topics.plans)]

    def caught_up(topic: str) -> bool:
        """The processor's lag gauges on ``topic`` (partitions it has read from) all read 0."""
        group = ("group", group_id(settings))
        lags = [
            v
            for (name, labels), v in scrape(url).items()
            if name == "metering_consumer_lag_messages" and group in labels and ("topic", topic) in labels
        ]
        return bool(lags) and not any(lags)

    wait_until(lambda: caught_up(settings.topics.billing_sessions), 30, "the processor's lag gauge to read 0")
    assert caught_up(settings.topics.plans)
    metrics = scrape(url)
    for app in apps:
        assert metrics[
            ("metering_app_balance", (("account_id", ACCOUNT), ("app_id", app), ("currency", "USD")))
        ] == float(expected_view(ledger, app)["balance"])
        status = expected_view(ledger, app)["status"]
        assert (
            metrics[("metering_app_balance_status", (("account_id", ACCOUNT), ("app_id", app), ("status", status)))]
            == 1.0
        )
    new_app = (("account_id", ACCOUNT), ("app_id", "bot-new"))
    assert metrics[("metering_app_balance", (*new_app, ("currency", "USD")))] == 0.0
    assert not [k for k in metrics if k[0] == "metering_app_balance_status" and k[1][:2] == new_app], (
        "no status, so no depleted page, before the app's first funds or session"
    )
    by_kind = {k: sum(1 for s in sessions if s.kind == k) for k in ("usage", "alert", "voice")}
    for kind, n in by_kind.items():
        assert metrics[("metering_sessions_charged_total", (("kind", kind),))] == n
    assert metrics[("metering_events_invalid_total", (("code", "schema"), ("topic", settings.topics.plans)))] == 1
    net_usage = metrics[("metering_cost_total", (("currency", "USD"), ("kind", "usage")))] - metrics.get(
        ("metering_cost_reversed_total", (("currency", "USD"), ("kind", "usage"))), 0.0
    )
    expected_usage = sum(float(expected_view(ledger, a)["usage_cost"]) for a in apps)
    assert net_usage == pytest.approx(expected_usage)


# -- (b) kill, restart, duplicates: nothing charged twice, one alert per crossing --------------


def test_sigkill_mid_transaction_restart_and_every_session_twice_charge_once_and_alert_once(
    settings: Settings, processors: BalanceProcess
) -> None:
    """The processor is SIGKILLed inside its 4th transaction (outputs produced, offsets sent, not committed),
    restarted, and then every billing session is delivered again: balances equal the ledger's over one copy,
    the restarted processor counts exactly one duplicate per session, and `balance-alerts` holds exactly
    low, depleted, recovered per app with the ledger's ids."""
    apps = ["kill-a", "kill-b", "kill-c"]
    setup = funded_apps(apps)
    sessions = [session(f"{app}-{k}", T0 + k * MINUTE, app_id=app) for k in range(150) for app in apps]
    top_ups = [funds("500.00", T0 + 200 * MINUTE, event_id=f"f2-{app}", app_id=app) for app in apps]

    first = processors.start(METERING_FAILPOINTS="balance.before_commit=kill@4", METERING_BATCH_SIZE="40", **PER_BATCH)
    produce(settings, plan_messages(settings, setup))
    wait_until(lambda: len(snapshots(settings)) == len(apps), 60, "the plans and top-ups to be committed")
    produce(settings, session_messages(settings, sessions))
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, processors.logs()

    second = processors.start(METERING_BATCH_SIZE="40")
    url = processors.metrics_url(second)

    def charged_all() -> bool:
        assert second.poll() is None, processors.logs()
        latest = snapshots(settings)
        return all(latest[a].usage_sessions == 150 for a in apps)

    wait_until(charged_all, 90, "every session charged after the restart")
    produce(settings, session_messages(settings, sessions) + plan_messages(settings, top_ups + setup))
    wait_until(
        lambda: inputs_caught_up(settings),
        60,
        "the copies and the top-ups to be consumed",
    )

    ledger, expected = ledger_over(setup, sessions)
    for event in top_ups:
        expected += ledger.apply_funds(event)

    latest = snapshots(settings)
    for app in apps:
        assert view(latest[app]) == expected_view(ledger, app), app
    produced = alerts(settings)
    for app in apps:
        got = [(a.alert_event_id, a.state, a.balance, a.occurred_at) for a in produced if a.app_id == app]
        want = [(a.alert_event_id, a.state, a.balance, a.occurred_at) for a in expected if a.app_id == app]
        assert got == want, app
        assert [state for _, state, _, _ in got] == ["low", "depleted", "recovered"]
    metrics = scrape(url)
    assert metrics[("metering_balance_duplicates_total", (("input", "session"),))] == len(sessions)
    assert metrics[("metering_balance_duplicates_total", (("input", "funds"),))] == len(apps)
    assert metrics[("metering_balance_duplicates_total", (("input", "plan"),))] == len(apps)


# -- (c) entitlement -------------------------------------------------------------------------


def test_entitlement_turns_false_when_depleted_and_true_again_when_funded(
    settings: Settings, processors: BalanceProcess
) -> None:
    """The endpoint follows `balance-state`: funded -> entitled; sessions use the money up -> not entitled
    (status depleted); a top-up -> entitled again; an app it never heard of -> 404, not entitled."""
    processors.start()
    model = EntitlementModel()
    feed = BalanceStateFeed(settings, model).start()
    server = EntitlementServer(model, "127.0.0.1", 0).start()
    try:
        app = "ent-a"
        url = f"{server.url}/v1/entitlement/{app}"
        wait_until(model.ready.is_set, 30, "the read model to load")
        produce(
            settings,
            plan_messages(settings, [plan(T0, event_id="p", app_id=app), funds("3.00", T0, event_id="f1", app_id=app)]),
        )
        wait_until(lambda: get_json(url)[0] == 200, 60, "the app in the read model")
        status, body = get_json(url)
        assert body == {
            "app_id": app,
            "entitled": True,
            "status": "low",
            "balance": "3.00",
            "currency": "USD",
            "as_of": body["as_of"],
        }
        produce(settings, session_messages(settings, [session(f"s{k}", T0 + k * MINUTE, app_id=app) for k in range(3)]))
        wait_until(lambda: get_json(url)[1]["status"] == "depleted", 60, "depletion")
        assert get_json(url) == (200, {**get_json(url)[1], "entitled": False, "balance": "0.00"})
        produce(settings, plan_messages(settings, [funds("100.00", T0 + 10 * MINUTE, event_id="f2", app_id=app)]))
        wait_until(lambda: get_json(url)[1]["entitled"], 60, "entitlement back after the top-up")
        assert get_json(url)[1]["status"] == "active"
        assert get_json(url)[1]["balance"] == "100.00"
        status, body = get_json(f"{server.url}/v1/entitlement/never-heard-of")
        assert (status, body["entitled"], body["status"]) == (404, False, "unknown")
    finally:
        server.stop()
        feed.stop()


# -- (d) notifier ----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver that fails its first ``failures`` calls with 503, then records every call."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                if receiver.calls <= receiver.failures:
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/metering"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_notifier_delivers_every_alert_signed_through_webhook_failures(settings: Settings) -> None:
    """Six alerts of two apps; the webhook fails its first 4 calls: every alert arrives, in order per app,
    each signature verifies with the secret, and the group's offsets end at the end of the topic."""
    secret = "test-secret"
    items = [
        BalanceAlert(
            alert_event_id=f"{app}-{n}",
            account_id=ACCOUNT,
            app_id=app,
            state=state,
            balance="1.00",
            threshold="50.00",
            currency="USD",
            occurred_at=ms_to_datetime(T0 + n),
        )
        for app in ("n-a", "n-b")
        for n, state in enumerate(STATES)
    ]
    produce(settings, [(settings.topics.balance_alerts, a.app_id, encode(a)) for a in items])
    receiver = Receiver(failures=4)
    notifier = Notifier(settings, Webhook(receiver.url, secret), Backoff(initial=0.05, maximum=0.2))
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(receiver.received) >= len(items), 60, "every alert delivered")
        time.sleep(1.0)  # nothing more may arrive
        assert receiver.calls == len(items) + 4
        got: dict[str, list[str]] = {}
        for headers, body in receiver.received:
            assert verify(secret, body, headers[SIGNATURE_HEADER])
            alert = _alert.decode(body)
            assert headers[EVENT_ID_HEADER] == alert.alert_event_id
            got.setdefault(alert.app_id, []).append(alert.alert_event_id)
        assert got == {app: [f"{app}-{n}" for n in range(3)] for app in ("n-a", "n-b")}
        assert not verify("another-secret", receiver.received[0][1], receiver.received[0][0][SIGNATURE_HEADER])
    finally:
        stop.set()
        thread.join(30)
        receiver.close()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.app_id}-notifier"})
    try:
        topic = settings.topics.balance_alerts
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            assert tp.offset == high or (high == 0 and tp.offset < 0), tp
    finally:
        consumer.close()


# -- (e) two processors share the partitions ---------------------------------------------------


def test_a_second_processor_joining_mid_stream_takes_over_partitions_without_double_charging(
    settings: Settings, processors: BalanceProcess
) -> None:
    """Instance 0 runs alone, instance 1 joins in the middle of the stream (a rebalance moves partitions and
    their changelog state to it), every session is delivered twice: one charge per session, one alert per
    crossing, both instances in service at the end."""
    apps = [f"pair-{i}" for i in range(8)]
    setup = funded_apps(apps)
    sessions = [session(f"{app}-{k}", T0 + k * MINUTE, app_id=app) for k in range(80) for app in apps]
    half = len(sessions) // 2
    first = processors.start(METERING_BATCH_SIZE="50")
    produce(settings, plan_messages(settings, setup))
    wait_until(lambda: len(snapshots(settings)) == len(apps), 60, "the plans and top-ups to be committed")
    produce(settings, session_messages(settings, sessions[:half]))
    wait_until(
        lambda: sum(s.usage_sessions for s in snapshots(settings).values()) >= half // 2,
        60,
        "the first instance to charge part of the stream",
    )
    second = processors.start("--instance", "1", METERING_BATCH_SIZE="50")

    def restored_by_joiner() -> list[dict[str, int]]:
        log_file = processors.log_dir / "balance-1.log"
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        return [json.loads(line) for line in lines if '"balance partition restored"' in line]

    # The rest of the stream goes out once the rebalance has moved partitions to the joiner.
    wait_until(lambda: any(r["apps"] > 0 for r in restored_by_joiner()), 90, "the joiner to take over partitions")
    produce(settings, session_messages(settings, sessions[half:]) + session_messages(settings, sessions))

    def charged_all() -> bool:
        assert first.poll() is None, processors.logs()
        assert second.poll() is None, processors.logs()
        latest = snapshots(settings)
        return all(a in latest and latest[a].usage_sessions == 80 for a in apps) and group_caught_up(
            settings, settings.topics.billing_sessions
        )

    wait_until(charged_all, 90, "every session charged by the pair")
    ledger, expected = ledger_over(setup, sessions)
    assert_balances_and_alert_ids_match(settings, apps, ledger, expected)
    assert any(r["apps"] > 0 for r in restored_by_joiner()), "the joining instance took over partitions with state"


# -- (f) a replay of both topics from the beginning ----------------------------------------------


def rewind_group(settings: Settings) -> bool:
    """Set the balance group's offsets of both input topics to 0; False while the group still has a member."""
    client = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    partitions = [
        TopicPartition(topic, p, 0)
        for topic in (settings.topics.billing_sessions, settings.topics.plans)
        for p in range(settings.partitions)
    ]
    futures = client.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id(settings), partitions)])
    try:
        results = [future.result(timeout=30) for future in futures.values()]
    except KafkaException:
        return False
    return all(tp.error is None for r in results for tp in r.topic_partitions)


def test_a_replay_of_both_topics_from_the_beginning_changes_nothing(
    settings: Settings, processors: BalanceProcess
) -> None:
    """The processor stopped (SIGTERM: it exits 0), the group rewound to offset 0 and started again: every
    input is a copy of one the restored state has applied, so no alert, no new snapshot, no charge."""
    apps = ["replay-a", "replay-b"]
    setup = funded_apps(apps)
    sessions = [session(f"{app}-{k}", T0 + k * MINUTE, app_id=app) for k in range(70) for app in apps]
    first = processors.start()
    produce(settings, plan_messages(settings, setup))
    wait_until(lambda: len(snapshots(settings)) == len(apps), 60, "the plans and top-ups to be committed")
    produce(settings, session_messages(settings, sessions))
    wait_until(lambda: group_caught_up(settings, settings.topics.billing_sessions), 60, "every session consumed")
    before = (snapshots(settings), alerts(settings))
    assert [a.state for a in before[1]].count("depleted") == len(apps)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, processors.logs()

    wait_until(lambda: rewind_group(settings), 60, "the stopped member to leave the group (session timeout)", every=1)
    second = processors.start()
    url = processors.metrics_url(second)
    wait_until(
        lambda: inputs_caught_up(settings),
        60,
        "the replay to be consumed",
    )
    assert (snapshots(settings), alerts(settings)) == before
    metrics = scrape(url)
    assert metrics[("metering_balance_duplicates_total", (("input", "session"),))] == len(sessions)
    assert metrics[("metering_balance_duplicates_total", (("input", "funds"),))] == len(apps)
    assert ("metering_sessions_charged_total", (("kind", "usage"),)) not in metrics


# -- (g) aborted transactions ------------------------------------------------------------------


def test_transactions_that_fail_before_commit_are_aborted_and_processed_again_exactly(
    settings: Settings, processors: BalanceProcess
) -> None:
    """Every commit fails for 3 s from the 3rd one (the failpoint raises an abortable Kafka error): each batch
    is aborted, the state restored from the changelog and the input re-read from the committed offsets, until
    commits succeed again; the result is exactly the ledger's, alerts included."""
    apps = ["abort-a", "abort-b"]
    setup = funded_apps(apps)
    sessions = [session(f"{app}-{k}", T0 + k * MINUTE, app_id=app) for k in range(70) for app in apps]
    process = processors.start(
        METERING_FAILPOINTS="balance.before_commit=fail:3@3", METERING_BATCH_SIZE="20", **PER_BATCH
    )
    url = processors.metrics_url(process)
    produce(settings, plan_messages(settings, setup))
    wait_until(lambda: len(snapshots(settings)) == len(apps), 60, "the plans and top-ups to be committed")
    produce(settings, session_messages(settings, sessions))
    wait_until(lambda: group_caught_up(settings, settings.topics.billing_sessions), 60, "every session consumed")
    assert process.poll() is None, processors.logs()

    ledger, expected = ledger_over(setup, sessions)
    assert_balances_and_alert_ids_match(settings, apps, ledger, expected)
    metrics = scrape(url)
    assert metrics[("metering_balance_transactions_aborted_total", ())] > 0
    assert metrics[("metering_sessions_charged_total", (("kind", "usage"),))] == len(sessions)
