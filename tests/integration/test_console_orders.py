"""Plan & usage and Orders & invoices end to end: the console, the real broker, the order and balance processors.

The store (ClickHouse, sinks, the console on a free port) runs in a thread of the test; the order
and balance processors run as child processes (``python -m cli orders process`` and
``python -m cli balance``), as `metering run` starts them. What each test proves:

- an order goes to payment, funds, balance and invoice: the app's balance in ``GET /api/v1/apps``
  grows by the amount once the payment succeeded, ``GET /api/v1/orders`` shows it paid with its
  invoice number, and the invoice PDF holds the order id, amount, payment method and status;
- an order processor killed (SIGKILL) in the transaction that pays an order, and one killed
  between an order and its payment's confirmation (a bank transfer confirmed twice), lose nothing
  and issue no second invoice;
- concurrent add-funds on one app never lose or double money (one key retried, many orders);
- a scheduled plan takes effect at its instant and prices the sessions after it;
- an expired plan is not entitled until an operator grants its extension request.
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from confluent_kafka import Producer
from pypdf import PdfReader

from cli.plan_actions import decide_extension, record_payment
from cli.service import StoreEndpoints
from console.auth import deployment_secret, issue_token
from pipeline.contract.events import PlanChanged, ms_to_datetime
from pipeline.infra.kafka import producer_config
from pipeline.infra.publish import KafkaPublisher
from pipeline.infra.settings import Settings
from pipeline.orders.events import PaymentUpdated
from pipeline.stream.records import billing_session_record, encode
from tests.balance_support import session
from tests.processes import ChildProcesses
from tests.support import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "acme"
APP = "support-bot"


class Processes(ChildProcesses):
    """The order processor or the balance processor, as `metering run` starts them."""

    subcommand: tuple[str, ...] = ()

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn(*self.subcommand, "--metrics-port", "0", **env)


@pytest.fixture
def orders(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    with closing(Processes(settings, tmp_path, "orders", "order metrics")) as pool:
        pool.subcommand = ("process",)
        yield pool


@pytest.fixture
def balances(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    with closing(Processes(settings, tmp_path, "balance", "balance metrics")) as pool:
        yield pool


class Console:
    """The store's console over HTTP, as an account admin (a token signed with the deployment's secret)."""

    def __init__(self, settings: Settings, api: str) -> None:
        secret = deployment_secret(settings.console, settings.data_dir)
        value = issue_token(
            secret, account_id=ACCOUNT, user="u-admin", role="admin", shared=False, ttl=timedelta(hours=2)
        )
        self.http = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {value}"}, timeout=30, trust_env=False
        )

    def app(self, app_id: str = APP) -> dict[str, Any] | None:
        answer = self.http.get("/api/v1/apps")
        assert answer.status_code == 200, answer.text
        return next((a for a in answer.json()["apps"] if a["app_id"] == app_id), None)

    def orders(self) -> list[dict[str, Any]]:
        answer = self.http.get("/api/v1/orders")
        assert answer.status_code == 200, answer.text
        orders: list[dict[str, Any]] = answer.json()["orders"]
        return orders

    def add_funds(self, amount: str, method: str = "manual", key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"amount": amount, "currency": "USD", "payment_method": method}
        return self.http.post(f"/api/v1/apps/{APP}/funds", json=body, headers=headers)

    def wait_balance(self, balance: str, timeout: float = 90) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def reached() -> bool:
            app = self.app()
            found[:] = [app] if app else []
            return app is not None and Decimal(app["balance"]) == Decimal(balance)

        wait_until(reached, timeout, f"the balance to read {balance} (last: {found[0]['balance'] if found else None})")
        return found[0]


@pytest.fixture
def console(settings: Settings, store: StoreEndpoints) -> Iterator[Console]:
    client = Console(settings, store.api)
    try:
        yield client
    finally:
        client.http.close()


def produce(settings: Settings, topic: str, key: str, records: list[Any]) -> None:
    producer = Producer(producer_config(settings))
    for record in records:
        value = record if isinstance(record, bytes) else msgspec.json.encode(record)
        producer.produce(topic, value, key.encode())
    assert producer.flush(30) == 0


def put_on_plan(settings: Settings, at: datetime, **fields: Any) -> PlanChanged:
    event = PlanChanged(
        event_id=f"plan-{uuid.uuid4().hex[:8]}",
        occurred_at=at,
        account_id=ACCOUNT,
        app_id=APP,
        plan=fields.pop("plan", "growth"),
        price_per_usage_session=fields.pop("usage", "1.00"),
        price_per_alert_session="0.10",
        price_per_voice_session="2.00",
        **fields,
    )
    produce(settings, settings.topics.plans, APP, [event])
    return event


def app_on_plan_in_console(settings: Settings, console: Console, what: str = "the app in the console") -> None:
    """The app on a plan since an hour ago, waited for until the console shows it (its plan applied and stored)."""
    put_on_plan(settings, datetime.now(UTC) - timedelta(hours=1))
    wait_until(lambda: console.app() is not None, 90, what)


def pdf_text(console: Console, invoice_id: str) -> str:
    answer = console.http.get(f"/api/v1/invoices/{invoice_id}.pdf")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    return str(PdfReader(io.BytesIO(answer.content)).pages[0].extract_text())


# -- order -> payment -> funds -> balance -> invoice ----------------------------------------------------------------


def test_an_order_is_paid_funds_the_balance_once_and_is_invoiced(
    settings: Settings, console: Console, orders: Processes, balances: Processes
) -> None:
    balances.start()
    orders.start()
    app_on_plan_in_console(settings, console, "the app in the console (its plan applied and stored)")
    answer = console.add_funds("125.50")
    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    app = console.wait_balance("125.50")
    assert app["status"] == "active"
    wait_until(lambda: any(o["payment_status"] == "paid" for o in console.orders()), 60, "the order paid")
    [order] = console.orders()
    assert (order["order_id"], order["cost"], order["payment_method"], order["invoice_id"]) == (
        order_id,
        "125.50",
        "manual",
        "INV-000001",
    )
    assert order["billing_date"] == datetime.now(UTC).date().isoformat()
    text = pdf_text(console, "INV-000001")
    for expected in (order_id, "125.50 USD", "manual", "paid", ACCOUNT, "INV-000001"):
        assert expected in text, expected
    second = console.add_funds("10.00")
    assert second.status_code == 202
    console.wait_balance("135.50")
    wait_until(lambda: len({o["invoice_id"] for o in console.orders()} - {None}) == 2, 60, "the second invoice")
    assert sorted(o["invoice_id"] for o in console.orders()) == ["INV-000001", "INV-000002"]


def test_a_processor_killed_while_paying_an_order_loses_nothing_and_invoices_once(
    settings: Settings, console: Console, orders: Processes, balances: Processes
) -> None:
    balances.start()
    app_on_plan_in_console(settings, console)
    dying = orders.start(METERING_FAILPOINTS="orders.before_commit=kill")
    assert console.add_funds("40.00").status_code == 202
    dying.wait(timeout=90)
    assert dying.returncode == -9, "the failpoint killed it inside the paying transaction"
    orders.start()
    console.wait_balance("40.00")
    wait_until(lambda: [o["invoice_id"] for o in console.orders()] == ["INV-000001"], 60, "one invoice")
    time.sleep(3)  # anything a second application would produce has had time to arrive
    assert console.app()["balance"] == "40.00"  # type: ignore[index]
    assert [o["invoice_id"] for o in console.orders()] == ["INV-000001"]


def test_a_crash_between_order_and_confirmation_issues_no_second_invoice(
    settings: Settings, console: Console, orders: Processes, balances: Processes
) -> None:
    balances.start()
    processor = orders.start()
    app_on_plan_in_console(settings, console)
    answer = console.add_funds("70.00", method="transfer")
    order_id = answer.json()["order_id"]
    wait_until(lambda: [o["payment_status"] for o in console.orders()] == ["pending"], 60, "the order pending")
    orders.kill(processor)  # SIGKILL between the order and its payment's confirmation
    publisher = KafkaPublisher(settings)
    try:
        for _ in range(2):  # the bank's confirmation, delivered twice
            record_payment(settings, publisher, account_id=ACCOUNT, order_id=order_id, status="paid", reference="TX-9")
    finally:
        publisher.close()
    retry = PaymentUpdated(  # and the provider's retry under an id of its own
        event_id="provider-retry-1",
        occurred_at=datetime.now(UTC),
        account_id=ACCOUNT,
        order_id=order_id,
        status="paid",
        provider="transfer",
        reference="TX-9",
    )
    produce(settings, settings.topics.orders, ACCOUNT, [retry])
    orders.start()
    console.wait_balance("70.00")
    wait_until(lambda: [o["invoice_id"] for o in console.orders()] == ["INV-000001"], 60, "the invoice")
    time.sleep(3)
    assert console.app()["balance"] == "70.00"  # type: ignore[index]
    [order] = console.orders()
    assert (order["payment_status"], order["payment_method"], order["invoice_id"]) == ("paid", "transfer", "INV-000001")


def test_concurrent_add_funds_on_one_app_never_lose_or_double_money(
    settings: Settings, console: Console, orders: Processes, balances: Processes
) -> None:
    balances.start()
    orders.start()
    app_on_plan_in_console(settings, console)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post(amount: str, key: str | None) -> None:
        answer = console.add_funds(amount, key=key)
        with lock:
            answers.append(answer)

    calls = [("1.01", None)] * 12 + [("5.00", "one-key")] * 6
    threads = [threading.Thread(target=post, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["order_id"] for a in answers}) == 13
    console.wait_balance("17.12")  # 12 x 1.01 + 5.00
    wait_until(lambda: sum(o["payment_status"] == "paid" for o in console.orders()) == 13, 60, "13 paid orders")
    numbers = sorted(o["invoice_id"] for o in console.orders())
    assert numbers == [f"INV-{n:06d}" for n in range(1, 14)], "unique, increasing, none skipped"


# -- the plan model on the real balance processor --------------------------------------------------------------------


def test_a_scheduled_plan_takes_effect_at_its_instant_and_prices_sessions_after_it(
    settings: Settings, console: Console, balances: Processes
) -> None:
    balances.start()
    now = datetime.now(UTC).replace(microsecond=0)
    put_on_plan(settings, now - timedelta(hours=2), plan="growth", usage="1.00")
    switch = now + timedelta(seconds=20)
    put_on_plan(settings, now - timedelta(seconds=1), plan="starter", usage="3.00", effective_at=switch)
    wait_until(lambda: (console.app() or {}).get("plan") == "growth", 90, "the app on growth")
    notice = [n for n in console.app()["notices"] if n["type"] in ("scheduled_downgrade", "scheduled_change")]  # type: ignore[index]
    assert notice, "the coming plan is announced"
    assert notice[0]["plan"] == "starter"
    before = session("before", int((switch - timedelta(minutes=20)).timestamp() * 1000))
    produce(settings, settings.topics.billing_sessions, APP, [encode(billing_session_record(before))])
    console.wait_balance("-1.00")
    assert console.app()["plan"] == "growth", "not yet"  # type: ignore[index]
    wait_until(lambda: (console.app() or {}).get("plan") == "starter", 90, "the scheduled plan in force at its instant")
    assert datetime.now(UTC) >= switch
    after = session("after", int((switch + timedelta(seconds=1)).timestamp() * 1000), length=0)
    produce(settings, settings.topics.billing_sessions, APP, [encode(billing_session_record(after))])
    console.wait_balance("-4.00")  # 1.00 before the switch, 3.00 after


def test_an_expired_plan_is_entitled_again_once_an_extension_is_granted(
    settings: Settings, console: Console, balances: Processes
) -> None:
    balances.start()
    put_on_plan(settings, datetime.now(UTC) - timedelta(days=400), plan="business", term_months=12)
    produce(
        settings,
        settings.topics.plans,
        APP,
        [
            {
                "type": "funds_added",
                "event_id": "f1",
                "occurred_at": ms_to_datetime(int(time.time() * 1000)).isoformat(),
                "account_id": ACCOUNT,
                "app_id": APP,
                "amount": "500.00",
            }
        ],
    )
    wait_until(lambda: (console.app() or {}).get("status") == "expired", 90, "the app expired")
    answer = console.http.post(f"/api/v1/apps/{APP}/extension-requests", json={"days": 60, "reason": "renewal signed"})
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    wait_until(
        lambda: any(n["type"] == "extension_pending" for n in (console.app() or {}).get("notices", [])),
        90,
        "the pending request as a notice",
    )
    publisher = KafkaPublisher(replace(settings))
    try:
        wait_until(lambda: _request_stored(settings, request_id), 60, "the request in ClickHouse")
        decide_extension(settings, publisher, request_id, grant=True)
    finally:
        publisher.close()
    wait_until(lambda: (console.app() or {}).get("status") == "active", 90, "the app active again")
    app = console.app()
    assert app is not None
    assert not any(n["type"] == "extension_pending" for n in app["notices"])


def _request_stored(settings: Settings, request_id: str) -> bool:
    from cli.plan_actions import extension_requests  # noqa: PLC0415

    return any(r.request_id == request_id for r in extension_requests(settings, request=request_id))
