"""deploy/prometheus/alerts.yml in a real Prometheus server: balance alerts fire and resolve.

The server is the ``prometheus`` binary of Debian's package (``make test`` installs it), scraping
every second and loading the deployed rules with ``for:`` shortened to 1 s (the only change;
see tests/integration/prometheus_server.py). Two tests:

- the rules against a stand-in target: a prometheus_client registry of this test process that
  exports the balance gauges under the names and labels the balance processor uses; fast, and
  it walks an app through active, low, depleted and back;
- the real thing: a stream worker and ``metering balance`` on the session's broker, an app
  drained to below zero by alert deliveries, the depletion alert firing in Prometheus, then a
  top-up resolving it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from devtools.local_kafka import free_port
from devtools.produce import produce
from pipeline.contract.events import format_ms
from pipeline.infra.settings import Settings
from tests.integration.conftest import Workers
from tests.integration.prometheus_server import PrometheusServer

pytestmark = pytest.mark.integration

DEPLETED = "MeteringAppBalanceDepleted"
LOW = "MeteringAppBalanceLow"
STATUSES = ("active", "low", "depleted")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, server: PrometheusServer) -> Any:
    """Poll until ``condition()`` is truthy and return it; on timeout, fail with Prometheus's view."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            alerts = [(a["labels"]["alertname"], a["state"]) for a in server.api("alerts")["alerts"]]
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; targets: {server.target_health()}; "
                f"active alerts: {alerts}; prometheus log:\n{server.logs()}"
            )
        time.sleep(0.5)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, list[str]]], PrometheusServer]]:
    servers: list[PrometheusServer] = []

    def start(jobs: dict[str, list[str]]) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", jobs)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


class StandInBalance:
    """The balance processor's gauges, served from this test process (a stand-in, not the processor)."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        labels = ["account_id", "app_id"]
        self.balance = Gauge("metering_app_balance", "stand-in", [*labels, "currency"], registry=registry)
        self.status = Gauge("metering_app_balance_status", "stand-in", [*labels, "status"], registry=registry)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.target = f"127.0.0.1:{self.server.server_port}"

    def set(self, app_id: str, balance: float, status: str) -> None:
        self.balance.labels("acme", app_id, "USD").set(balance)
        for name in STATUSES:
            self.status.labels("acme", app_id, name).set(1 if name == status else 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stand_in() -> Iterator[StandInBalance]:
    target = StandInBalance()
    try:
        yield target
    finally:
        target.close()


def test_balance_rules_in_a_real_server_follow_an_app_through_low_depleted_and_back(
    start_prometheus: Callable[[dict[str, list[str]]], PrometheusServer], stand_in: StandInBalance
) -> None:
    stand_in.set("bot", 20.0, "active")
    stand_in.set("other", 500.0, "active")
    server = start_prometheus({"metering-balance": [stand_in.target]})

    wait_for(
        lambda: server.query('metering_app_balance_status{app_id="bot",status="active"} == 1'),
        30,
        "the first scrape",
        server,
    )
    rules = wait_for(
        lambda: [r for r in server.rules() if r["health"] != "unknown"] and server.rules(),
        30,
        "the rules' first evaluation",
        server,
    )
    assert {r["name"] for r in rules} >= {DEPLETED, LOW, "MeteringBalanceProcessorDown", "MeteringWorkerDown"}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    wait_for(lambda: not server.alerts("MeteringBalanceProcessorDown"), 30, "the processor seen up", server)
    assert not server.alerts(DEPLETED)
    assert not server.alerts(LOW)

    stand_in.set("bot", 42.0, "low")
    (low,) = wait_for(lambda: server.firing(LOW, app_id="bot"), 30, "the low alert firing", server)
    assert (low["labels"]["account_id"], low["labels"]["severity"]) == ("acme", "warning")
    assert "(42.00 USD)" in low["annotations"]["description"]
    assert not server.alerts(DEPLETED)

    stand_in.set("bot", -0.5, "depleted")
    (depleted,) = wait_for(lambda: server.firing(DEPLETED, app_id="bot"), 30, "the depletion alert firing", server)
    assert depleted["labels"]["severity"] == "critical"
    assert depleted["annotations"]["summary"] == "App bot of account acme has run out of funds"
    assert "(-0.50 USD)" in depleted["annotations"]["description"]
    assert "funds_added" in depleted["annotations"]["runbook"]
    wait_for(lambda: not server.alerts(LOW), 30, "the low alert resolved once depleted", server)
    assert [a["labels"]["app_id"] for a in server.alerts(DEPLETED)] == ["bot"]

    stand_in.set("bot", 100.0, "active")
    wait_for(lambda: not server.alerts(DEPLETED), 30, "the depletion alert resolved after the top-up", server)
    assert not server.alerts(LOW)


# -- the pipeline ----------------------------------------------------------------------------

ACCOUNT = "acme"


def _events(app_id: str, start: datetime, *, top_up: str | None, alerts: int, first: int) -> list[dict[str, Any]]:
    """Billing-plans events and ``alerts`` alert deliveries (one alert session each) for ``app_id``."""

    def at(seconds: float) -> str:
        return format_ms(int((start + timedelta(seconds=seconds)).timestamp() * 1000))

    base = {"account_id": ACCOUNT, "app_id": app_id}
    events: list[dict[str, Any]] = []
    if first == 0:
        events.append(
            {
                **base,
                "type": "plan_changed",
                "event_id": f"{app_id}-plan",
                "occurred_at": at(0),
                "plan": "starter",
                "price_per_usage_session": "1.00",
                "price_per_alert_session": "1.00",
                "price_per_voice_session": "2.00",
                "currency": "USD",
                "low_balance_threshold": "5.00",
            }
        )
    if top_up is not None:
        events.append(
            {
                **base,
                "type": "funds_added",
                "event_id": f"{app_id}-funds-{first}",
                "occurred_at": at(1 + first),
                "amount": top_up,
                "currency": "USD",
            }
        )
    events.extend(
        {
            **base,
            "type": "alert_delivered",
            "event_id": f"{app_id}-alert-{i}",
            "occurred_at": at(2 + i),
            "user_id": f"u-{i}",
            "alert_id": "sub-1",
        }
        for i in range(first, first + alerts)
    )
    return events


def _publish(settings: Settings, path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = produce(settings, path)
    assert (result.failed, result.sent) == (0, len(events)), result


@pytest.fixture
def balance_processor(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m cli balance`` as a child process, as in production; yields its metrics target."""
    port = free_port()
    log = tmp_path / "balance.log"
    env = {**os.environ, **settings.to_env(), "METERING_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "balance", "--metrics-port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"127.0.0.1:{port}", log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_an_app_drained_by_traffic_fires_the_depletion_alert_and_a_top_up_resolves_it(
    settings: Settings,
    tmp_path: Path,
    balance_processor: tuple[str, Path],
    start_prometheus: Callable[[dict[str, list[str]]], PrometheusServer],
) -> None:
    worker_port = free_port()
    workers = Workers(replace(settings, metrics_port=worker_port), tmp_path / "workers")
    (tmp_path / "workers").mkdir()
    balance_target, balance_log = balance_processor
    app_id = f"bot-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(minutes=1)
    try:
        workers.start(1)
        server = start_prometheus(
            {
                "metering-worker": [f"127.0.0.1:{worker_port}"],
                "metering-balance": [balance_target],
            }
        )

        def context() -> str:
            return f"\nworker log:\n{workers.logs()}\nbalance log:\n{balance_log.read_text(errors='replace')[-4000:]}"

        def balance_is(value: float) -> bool:
            series = server.query(f'metering_app_balance{{app_id="{app_id}"}}')
            return bool(series) and float(series[0]["value"][1]) == value

        # Funded: 3.00 in, one alert session at 1.00: 2.00 left, low (threshold 5.00), not depleted.
        _publish(settings, tmp_path / "funded.jsonl", _events(app_id, start, top_up="3.00", alerts=1, first=0))
        try:
            wait_for(lambda: balance_is(2.0), 90, "the balance of 2.00 in Prometheus", server)
            wait_for(lambda: server.firing(LOW, app_id=app_id), 30, "the low alert firing", server)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{context()}") from None
        assert not server.alerts(DEPLETED)

        # Drained: three more alert sessions take it to -1.00.
        _publish(settings, tmp_path / "drain.jsonl", _events(app_id, start, top_up=None, alerts=3, first=1))
        (alert,) = wait_for(lambda: server.firing(DEPLETED, app_id=app_id), 60, "the depletion alert firing", server)
        assert alert["labels"]["account_id"] == ACCOUNT
        assert alert["labels"]["severity"] == "critical"
        assert f"App {app_id} of account {ACCOUNT} has run out of funds" == alert["annotations"]["summary"]
        assert "(-1.00 USD)" in alert["annotations"]["description"]
        assert balance_is(-1.0)
        assert server.target_health() == {
            f"http://127.0.0.1:{worker_port}/metrics": "up",
            f"http://{balance_target}/metrics": "up",
        }

        # Topped up: 10.00 more, 9.00 is above the threshold: the depletion alert resolves.
        _publish(settings, tmp_path / "top-up.jsonl", _events(app_id, start, top_up="10.00", alerts=0, first=4))
        wait_for(lambda: not server.alerts(DEPLETED) and balance_is(9.0), 60, "the depletion alert resolved", server)
        assert not server.alerts(LOW)
        status = server.query(f'metering_app_balance_status{{app_id="{app_id}"}} == 1')
        assert [s["metric"]["status"] for s in status] == ["active"]
    finally:
        workers.close()
