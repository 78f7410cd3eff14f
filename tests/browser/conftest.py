"""The console's pages in a real Chromium, over the real store, broker and balance processor.

One browser per test session (Debian's chromium through Playwright, tests/browser/browser.py);
one console stack per test module (:class:`Stack`): uuid-named topics and database on the
session's broker and chDB, the store process's work (``serve_store``: migrations, sinks, the
console app) in a thread, the balance processor as a child process, and about 100 days of
traffic metered by the rules engine and published to the real topics, so every figure reaches
ClickHouse through the sinks as in production. Each test gets a fresh browser context (its own
cookies) and a page; screenshots go to build/test-artifacts/browser (``METERING_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from cli.service import StoreEndpoints, serve_store
from console.auth import issue_token
from pipeline.contract.decode import to_ms
from pipeline.infra.kafka import producer_config
from pipeline.infra.settings import ConsoleSettings, Settings
from pipeline.stream.records import billing_session_record, encode
from tests.browser.browser import LAPTOP, artifacts_dir, launch
from tests.browser.traffic import Traffic, make_traffic, plan_events, seats
from tests.processes import ChildProcesses
from tests.support import pipeline_settings, wait_until

pytestmark = pytest.mark.integration

SECRET = "browser-tests-" + "0123456789abcdef" * 3
ADMIN_ACCOUNT = "acct-00"
ENTERPRISE_ACCOUNT = "acct-01"
DAYS = 100


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch(playwright)
    try:
        yield chromium
    finally:
        chromium.close()


@dataclass
class Stack:
    """A running console over real data, and the handles the tests need."""

    settings: Settings
    endpoints: StoreEndpoints
    traffic: Traffic
    now: datetime
    children: list[ChildProcesses] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.endpoints.api

    def token(
        self, account: str = ADMIN_ACCOUNT, *, role: str = "admin", shared: bool = False, user: str = "ada",
        ttl: timedelta = timedelta(hours=2),
    ) -> str:
        return issue_token(SECRET, account_id=account, user=user, role=role, shared=shared, ttl=ttl)

    def api(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """A GET of the console API with a bearer token (the admin's by default)."""
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return httpx.get(self.url + path, headers=headers, timeout=30, trust_env=False, **kwargs)

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token()}", "Idempotency-Key": uuid.uuid4().hex}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30, trust_env=False)

    def produce(self, topic: str, messages: list[tuple[str, bytes]]) -> None:
        producer = Producer(producer_config(self.settings))
        for key, value in messages:
            producer.produce(topic, value, key.encode())
        assert producer.flush(60) == 0

    def sign_in(self, context: BrowserContext, token: str | None = None) -> None:
        """The session cookie, set by ``POST /login`` as a browser's form post would."""
        answer = context.request.post(self.url + "/login", form={"token": token or self.token()}, max_redirects=0)
        assert answer.status == 303, answer.text()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    data_dir = tmp_path_factory.mktemp("console")
    settings = pipeline_settings(
        kafka_bootstrap, chdb_path, data_dir, "bt", partitions=3, console=ConsoleSettings(secret=SECRET, now=now)
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(t, settings.partitions, 1) for t in settings.topics.all])
    for future in futures.values():
        future.result(timeout=30)
    traffic = make_traffic(to_ms(now), DAYS)

    stop = threading.Event()
    ready: list[StoreEndpoints] = []
    thread = threading.Thread(target=serve_store, args=(settings, stop, ready.append), daemon=True)
    thread.start()
    wait_until(lambda: bool(ready) or not thread.is_alive(), 90, "the store to serve", every=0.1)
    assert ready, "the store did not start"
    stack = Stack(settings, ready[0], traffic, now)
    balance = ChildProcesses(settings, data_dir, "balance", "balance metrics")
    orders = ChildProcesses(settings, data_dir, "orders", "order metrics")
    stack.children += [balance, orders]
    try:
        balance.spawn("--metrics-port", "0")
        orders.spawn("process", "--metrics-port", "0")
        publish(stack, plan_at=now - timedelta(days=DAYS + 1))
        wait_for_ingest(stack)
        yield stack
    finally:
        for child in stack.children:
            child.close()
        stop.set()
        thread.join(timeout=60)


def publish(stack: Stack, plan_at: datetime) -> None:
    """Plans, funds and seats, then the transfers and the engine's billing sessions, to their topics."""
    topics = stack.settings.topics
    plans = plan_events(to_ms(plan_at))
    stack.produce(topics.plans, [(e["app_id"], json.dumps(e).encode()) for e in plans])
    enterprise = {
        "type": "account_changed",
        "event_id": "bt-enterprise",
        "occurred_at": plan_at.isoformat().replace("+00:00", "Z"),
        "account_id": ENTERPRISE_ACCOUNT,
        "billing_type": "enterprise",
    }
    stack.produce(topics.accounts, [(ENTERPRISE_ACCOUNT, json.dumps(enterprise).encode())])
    stack.produce(topics.transfers, [(e["conversation_id"], json.dumps(e).encode()) for e in stack.traffic.transfers()])
    stack.produce(
        topics.billing_sessions,
        [(s.app_id, encode(billing_session_record(s))) for s in stack.traffic.sessions],
    )


def expected_sessions(stack: Stack, account: str) -> int:
    """The account's billing sessions as R8 counts them: usage + alert (voice sessions are reported beside)."""
    return sum(1 for s in stack.traffic.sessions if s.account_id == account and s.kind != "voice")


def _started_by(transfer: dict[str, Any], account: str) -> bool:
    return transfer["account_id"] == account and transfer["action"] == "started" and "agent_id" in transfer


def wait_for_ingest(stack: Stack) -> None:
    """Until the API's totals over the whole traffic hold every session, transfer and seat of the admin's
    account (each reaches ClickHouse through its own sink), and its apps have balances."""
    first = (stack.now - timedelta(days=DAYS - 1)).date().isoformat()
    last = stack.now.date().isoformat()
    wanted = {
        "billing_sessions": expected_sessions(stack, ADMIN_ACCOUNT),
        "active_agents": len({t["agent_id"] for t in stack.traffic.transfers() if _started_by(t, ADMIN_ACCOUNT)}),
        "agents": seats(ADMIN_ACCOUNT),
    }
    seen: list[Any] = []

    def counted() -> bool:
        answer = stack.api(f"/api/v1/usage?from={first}&to={last}&by=month")
        seen[:] = [answer.status_code, answer.json().get("totals") if answer.status_code == 200 else answer.text]
        return answer.status_code == 200 and all(answer.json()["totals"][k] == v for k, v in wanted.items())

    try:
        wait_until(counted, 120, f"the traffic of {ADMIN_ACCOUNT} to reach ClickHouse ({wanted})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the API's last answer: {seen}") from None

    def balances() -> bool:
        answer = stack.api("/api/v1/apps")
        apps = answer.json()["apps"] if answer.status_code == 200 else []
        return bool(apps) and all(a.get("balance") not in (None, "") for a in apps)

    wait_until(balances, 120, "every app of the account to have a balance")
    enterprise = stack.token(ENTERPRISE_ACCOUNT)
    wait_until(
        lambda: stack.api("/api/v1/orders", enterprise).status_code == 403, 60, f"{ENTERPRISE_ACCOUNT} to be enterprise"
    )


@pytest.fixture
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    """A fresh browser context; the test fails if a page of it broke the Content-Security-Policy (console.headers):
    a refused inline script, style attribute or foreign source means the page does not work as served."""
    ctx = browser.new_context(viewport=LAPTOP, locale="en-US", timezone_id="UTC", accept_downloads=True)
    ctx.set_default_timeout(20_000)
    refused: list[str] = []
    ctx.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        yield ctx
    finally:
        ctx.close()
    assert not refused, f"the pages broke their Content-Security-Policy: {refused}"


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def admin_page(context: BrowserContext, stack: Stack) -> Page:
    """A page signed in as the admin of the prepaid account."""
    stack.sign_in(context)
    return context.new_page()


@pytest.fixture(scope="session")
def shoot() -> Callable[[Page, str], Path]:
    """``shoot(page, name)``: a full-page screenshot in the artifacts directory."""
    folder = artifacts_dir()

    def take(page: Page, name: str, *, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take


