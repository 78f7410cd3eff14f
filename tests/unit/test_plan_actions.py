"""Operators' actions without a broker: finding extension requests in ClickHouse, deciding them once,
recording payments (published to a recording publisher)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from consumers.plan_actions import ActionError, decide_extension, query_extension_requests, record_payment
from pipeline.events import ExtensionDeclined, ExtensionGranted, ExtensionRequested
from pipeline.settings import Settings
from tests.console_support import RecordingPublisher

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
        "consumers.plan_actions.extension_requests",
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
    record_payment(settings, publisher, account_id="acme", order_id="o-1", status="paid", reference="TX")
    record_payment(settings, publisher, account_id="acme", order_id="o-1", status="paid", reference="TX")
    first, again = (json.loads(v) for t, k, v in publisher.sent if t == settings.topics.orders)
    assert first["event_id"] == again["event_id"], "running the command twice records one payment"
    assert [k for t, k, _ in publisher.sent if t == settings.topics.orders] == ["acme", "acme"]
