"""Operators' actions without a broker: finding extension requests in ClickHouse, deciding them once,
recording payments (published to a recording publisher)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.plan_actions import (
    ActionError,
    OrderView,
    decide_extension,
    query_extension_requests,
    query_order_state,
    record_payment,
)
from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from pipeline.contract.events import ExtensionDeclined, ExtensionGranted, ExtensionRequested
from pipeline.infra.settings import Settings
from pipeline.orders.events import OrderState
from tests.console_support import OPERATOR_TOKEN, RecordingPublisher, bearer, http, make_app, order_record, token

T = datetime(2026, 11, 17, 10, tzinfo=UTC)


def request(request_id: str, app: str = "bot", account: str = "acme", days: int = 14) -> ExtensionRequested:
    return ExtensionRequested(
        event_id=f"ev-{request_id}",
        occurred_at=T,
        account_id=account,
        app_id=app,
        request_id=request_id,
        days=days,
        reason="contract",
        requested_by="u-1",
    )


def decision(kind: type[Any], request_id: str, **more: Any) -> Any:
    return kind(
        event_id=f"d-{request_id}",
        occurred_at=T + timedelta(hours=1),
        account_id="acme",
        app_id="bot",
        request_id=request_id,
        **more,
    )


def test_requests_with_their_status_per_account(chdb_client: Client, database: str) -> None:
    PlanStore(chdb_client, database).insert(
        [
            request("r1"),
            request("r2"),
            request("r3"),
            request("g1", app="gbot", account="globex"),
            decision(ExtensionGranted, "r1", days=14),
            decision(ExtensionDeclined, "r2", reason="no"),
        ],
        "test:requests",
    )
    found = {r.request_id: r.status for r in query_extension_requests(chdb_client, database, account="acme")}
    assert found == {"r1": "granted", "r2": "declined", "r3": "pending"}
    [one] = query_extension_requests(chdb_client, database, request="g1")
    assert (one.account_id, one.app_id, one.days, one.requested_by) == ("globex", "gbot", 14, "u-1")


def test_a_request_is_decided_once_and_payments_are_keyed_by_account(
    monkeypatch: pytest.MonkeyPatch, chdb_client: Client, database: str
) -> None:
    PlanStore(chdb_client, database).insert([request("r1"), request("r2")], "test:decide")
    settings = Settings()
    monkeypatch.setattr(
        "cli.plan_actions.extension_requests",
        lambda _settings, request=None, account=None: query_extension_requests(chdb_client, database, request=request),
    )
    publisher = RecordingPublisher()
    decide_extension(settings, publisher, "r1", grant=True)
    decide_extension(settings, publisher, "r2", grant=False, reason="not now")
    granted, declined = publisher.events(settings.topics.plans)
    assert (granted["type"], granted["days"], granted["app_id"]) == ("extension_granted", 14, "bot")
    assert (declined["type"], declined["reason"]) == ("extension_declined", "not now")
    PlanStore(chdb_client, database).insert([decision(ExtensionGranted, "r1", days=14)], "test:decided")
    with pytest.raises(ActionError, match="already granted"):
        decide_extension(settings, publisher, "r1", grant=True)
    with pytest.raises(ActionError, match="no extension request"):
        decide_extension(settings, publisher, "nope", grant=True)
    monkeypatch.setattr(
        "cli.plan_actions.order_state",
        lambda _settings, account, order: query_order_state(chdb_client, database, account=account, order=order),
    )
    PlanStore(chdb_client, database).insert([order_state("o-1", "pending")], "test:order")
    record_payment(settings, publisher, account_id="acme", order_id="o-1", status="paid", reference="TX")
    record_payment(settings, publisher, account_id="acme", order_id="o-1", status="paid", reference="TX")
    first, again = (json.loads(v) for t, k, v in publisher.sent if t == settings.topics.orders)
    assert first["event_id"] == again["event_id"], "running the command twice (before it was applied) records one"
    assert [k for t, k, _ in publisher.sent if t == settings.topics.orders] == ["acme", "acme"]


def order_state(order_id: str, status: str, account: str = "acme", version: int = 1) -> OrderState:
    invoice = "INV-000001" if status in ("paid", "refunded") else None
    record: OrderState = order_record(order_id, T, status, version, invoice, account=account)
    return record


@pytest.mark.parametrize(
    ("order_id", "status", "refusal"),
    [
        ("o-unknown", "paid", "no order 'o-unknown' in account 'acme'"),
        ("o-globex", "paid", "no order 'o-globex' in account 'acme'"),
        ("o-paid", "paid", "order o-paid of acme is paid (invoice INV-000001): only a pending order is paid"),
        ("o-paid", "failed", "order o-paid of acme is paid (invoice INV-000001): only a pending order is failed"),
        ("o-pending", "refunded", "order o-pending of acme is pending: a refund applies only to a paid order"),
        ("o-failed", "refunded", "order o-failed of acme is failed: a refund applies only to a paid order"),
    ],
)
def test_a_payment_the_processor_would_not_apply_is_refused_saying_why(  # noqa: PLR0917 - fixtures and cases
    monkeypatch: pytest.MonkeyPatch, chdb_client: Client, database: str, order_id: str, status: str, refusal: str
) -> None:
    """`metering orders paid|failed|refund` used to print "recorded" for an unknown order or a state change the
    processor drops; it checks the order's state first, says what is wrong and publishes nothing."""
    PlanStore(chdb_client, database).insert(
        [
            order_state("o-paid", "pending"),
            order_state("o-paid", "paid", version=2),
            order_state("o-pending", "pending"),
            order_state("o-failed", "failed"),
            order_state("o-globex", "pending", account="globex"),
        ],
        "test:orders",
    )
    monkeypatch.setattr(
        "cli.plan_actions.order_state",
        lambda _settings, account, order: query_order_state(chdb_client, database, account=account, order=order),
    )
    publisher = RecordingPublisher()
    with pytest.raises(ActionError) as refused:
        record_payment(Settings(), publisher, account_id="acme", order_id=order_id, status=status)  # type: ignore[arg-type]
    assert refusal in str(refused.value)
    assert publisher.sent == []
    record_payment(Settings(), publisher, account_id="acme", order_id="o-pending", status="failed")
    record_payment(Settings(), publisher, account_id="acme", order_id="o-paid", status="refunded")
    assert [json.loads(v)["status"] for _, _, v in publisher.sent] == ["failed", "refunded"]


def test_the_store_answers_an_orders_state_to_the_operator_token_only(chdb_client: Client, database: str) -> None:
    """What the command asks when the running store holds the embedded database."""
    PlanStore(chdb_client, database).insert([order_state("o-1", "pending")], "test:route")
    with http(make_app(chdb_client, database)) as c:
        params = {"account": "acme", "order": "o-1"}
        assert c.get("/orders/state", params=params, headers=bearer(token())).status_code == 401
        answer = c.get("/orders/state", params=params, headers=bearer(OPERATOR_TOKEN))
        missing = c.get("/orders/state", params={"account": "acme", "order": "nope"}, headers=bearer(OPERATOR_TOKEN))
    assert answer.status_code == 200
    assert OrderView(**answer.json()["order"]) == query_order_state(chdb_client, database, account="acme", order="o-1")
    assert answer.json()["order"]["payment_status"] == "pending"
    assert missing.json() == {"order": None}
