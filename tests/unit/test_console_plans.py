"""The console's Plan & usage and Orders & invoices routes over a real (embedded) ClickHouse.

The read model is filled through the sinks' own ``PlanStore`` and ``SessionStore``; what the
routes publish goes to a recording publisher (no broker in unit tests: the end-to-end path with
the real broker and processors is ``tests/integration/test_console_orders.py``).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pypdf import PdfReader

from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from pipeline.balance.catalog import parse_catalog
from pipeline.contract.events import AccountChanged, format_ms
from pipeline.orders.events import OrderState
from tests.console_support import (
    ACCOUNT,
    OTHER_ACCOUNT,
    RecordingPublisher,
    bearer,
    console_settings,
    fill,
    http,
    issued_invoice,
    make_app,
    order_record,
    plan_snapshot,
    token,
)
from tests.support import Conversation, alert, in_time_order

NOW = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
ADMIN = bearer(token())


def plan_event(
    app: str, name: str, usage: str, at: datetime, *, effective: datetime | None = None, **more: Any
) -> dict[str, Any]:
    event = {
        "type": "plan_changed",
        "event_id": f"{app}-{name}-{at.isoformat()}",
        "occurred_at": format_ms(int(at.timestamp() * 1000)),
        "account_id": ACCOUNT,
        "app_id": app,
        "plan": name,
        "price_per_usage_session": usage,
        "price_per_alert_session": "0.01",
        "price_per_voice_session": "0.05",
        **more,
    }
    if effective is not None:
        event["effective_at"] = format_ms(int(effective.timestamp() * 1000))
    return event


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(chdb_client: Client, database: str, publisher: RecordingPublisher) -> FastAPI:
    return make_app(chdb_client, database, console_settings(now=NOW), extras={"publisher": publisher})


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with http(app) as c:
        yield c


def store(chdb_client: Client, database: str, records: list[Any]) -> None:
    PlanStore(chdb_client, database).insert(records, f"test:{uuid.uuid4().hex}")


@pytest.fixture
def account(chdb_client: Client, database: str) -> None:
    """Four apps of ACCOUNT in November 2026, one of another account."""
    november = datetime(2026, 11, 1, tzinfo=UTC)
    events = [
        plan_event("acme-bot", "growth", "0.03", november),
        plan_event("acme-bot", "starter", "0.05", NOW - timedelta(days=1), effective=datetime(2026, 12, 1, tzinfo=UTC)),
        *Conversation("c1", app_id="acme-bot", account_id=ACCOUNT).user(0).bot(1).user(3).events,
        alert(5, app_id="acme-bot", account_id=ACCOUNT),
        *Conversation("c2", app_id="acme-new", account_id=ACCOUNT).user(0).bot(2).events,
        *Conversation("g1", app_id="globex-bot", account_id=OTHER_ACCOUNT).user(0).bot(2).events,
    ]
    fill(chdb_client, database, in_time_order(events))
    store(
        chdb_client,
        database,
        [
            plan_snapshot(
                "acme-bot",
                plan="growth",
                status="low",
                balance="30.00",
                term=False,
                scheduled_plan="starter",
                scheduled_at=datetime(2026, 12, 1, tzinfo=UTC),
                owner="ann",
            ),
            plan_snapshot(
                "acme-annual",
                expires_at=NOW + timedelta(days=20),
                extension_request_id="req-1",
                extension_days=14,
                extension_reason="contract in review",
                extension_requested_at=NOW - timedelta(hours=2),
            ),
            plan_snapshot("acme-old", expires_at=NOW - timedelta(days=3)),
            plan_snapshot("globex-bot", OTHER_ACCOUNT),
        ],
    )


def apps_by_id(client: TestClient) -> dict[str, dict[str, Any]]:
    answer = client.get("/api/v1/apps", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return {a["app_id"]: a for a in answer.json()["apps"]}


# -- GET /api/v1/apps ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("account")
def test_every_app_of_the_account_with_status_usage_cost_and_notices(client: TestClient) -> None:
    apps = apps_by_id(client)
    assert set(apps) == {"acme-bot", "acme-annual", "acme-old", "acme-new"}, "another account's app never shows"
    bot = apps["acme-bot"]
    assert (bot["plan"], bot["status"], bot["balance"], bot["currency"], bot["owner"]) == (
        "growth",
        "low",
        "30.00",
        "USD",
        "ann",
    )
    assert (bot["month"], bot["sessions"], bot["usage_sessions"], bot["alert_sessions"]) == ("2026-11", 2, 1, 1)
    assert bot["cost"] == "0.04", "one usage session at 0.03 and one alert at 0.01"
    kinds = {n["type"]: n for n in bot["notices"]}
    assert kinds["scheduled_downgrade"]["date"] == "2026-12-01"
    assert kinds["scheduled_downgrade"]["plan"] == "starter"
    assert "balance_low" in kinds
    annual = apps["acme-annual"]
    assert annual["status"] == "active"
    assert annual["expires_at"] == "2026-12-07T10:00:00.000Z"
    assert {n["type"] for n in annual["notices"]} == {"plan_expiring", "extension_pending"}
    assert apps["acme-old"]["status"] == "expired"
    assert apps["acme-new"]["status"] == "setup"
    assert apps["acme-new"]["plan"] is None


def test_the_month_prices_sessions_after_a_scheduled_downgrade_at_the_new_plan(
    chdb_client: Client, database: str, publisher: RecordingPublisher
) -> None:
    december = datetime(2026, 12, 1, tzinfo=UTC)
    events = [
        plan_event("bot", "growth", "0.03", datetime(2026, 11, 1, tzinfo=UTC)),
        plan_event("bot", "starter", "0.05", datetime(2026, 11, 10, tzinfo=UTC), effective=december),
        # replaced before it took effect: never prices anything
        plan_event("bot2", "growth", "0.03", datetime(2026, 11, 1, tzinfo=UTC)),
        plan_event("bot2", "starter", "0.05", datetime(2026, 11, 10, tzinfo=UTC), effective=december),
        plan_event("bot2", "business", "0.02", datetime(2026, 11, 20, tzinfo=UTC)),
        *Conversation("n1", app_id="bot", account_id=ACCOUNT, start=_ms(december) - 3_600_000).user(0).bot(1).events,
        *Conversation("d1", app_id="bot", account_id=ACCOUNT, start=_ms(december) + 3_600_000).user(0).bot(1).events,
        *Conversation("d2", app_id="bot2", account_id=ACCOUNT, start=_ms(december) + 3_600_000).user(0).bot(1).events,
    ]
    fill(chdb_client, database, in_time_order(events))
    app = make_app(
        chdb_client, database, console_settings(now=december + timedelta(days=2)), extras={"publisher": publisher}
    )
    with http(app) as c:
        apps = apps_by_id(c)
    assert (apps["bot"]["month"], apps["bot"]["sessions"], apps["bot"]["cost"]) == ("2026-12", 1, "0.05")
    assert apps["bot2"]["cost"] == "0.02"


# -- Manage -----------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("account")
def test_an_upgrade_takes_effect_now_and_a_downgrade_at_the_next_period(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    up = client.post("/api/v1/apps/acme-bot/plan", json={"plan": "business"}, headers=ADMIN)
    assert up.status_code == 202, up.text
    assert (up.json()["change"], up.json()["effective_at"]) == ("upgrade", "2026-11-17T10:00:00.000Z")
    down = client.post("/api/v1/apps/acme-bot/plan", json={"plan": "starter"}, headers=ADMIN)
    assert (down.json()["change"], down.json()["effective_at"]) == ("downgrade", "2026-12-01T00:00:00.000Z")
    first, second = publisher.events("billing-plans")
    assert (first["plan"], first.get("effective_at"), first["term_months"]) == ("business", None, 12)
    assert first["price_per_usage_session"] == "0.02", "prices from the catalogue"
    assert (second["plan"], second["effective_at"]) == ("starter", "2026-12-01T00:00:00Z")
    assert {key for topic, key, _ in publisher.sent} == {"acme-bot"}, "keyed by app"


@pytest.mark.usefixtures("account")
def test_add_funds_creates_an_order_and_credits_nothing_itself(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    answer = client.post(
        "/api/v1/apps/acme-bot/funds",
        json={"amount": "250.5", "currency": "USD", "payment_method": "manual"},
        headers=ADMIN,
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["amount"], body["payment_status"]) == ("250.50", "pending")
    [created] = publisher.events("billing-orders")
    assert (created["type"], created["order_id"], created["amount"], created["app_id"]) == (
        "order_created",
        body["order_id"],
        "250.50",
        "acme-bot",
    )
    assert publisher.events("billing-plans") == [], "funds reach the balance only once the order is paid"
    assert publisher.sent[0][1] == ACCOUNT, "orders are keyed by account"


# -- currencies: funds only in one the balance counts, a currency switch of a funded app only when confirmed ----------

EURO_CATALOG = parse_catalog(
    {
        "plans": {
            "starter": {"rank": 1, **{f"price_per_{k}_session": "0.05" for k in ("usage", "alert", "voice")}},
            "growth": {"rank": 2, **{f"price_per_{k}_session": "0.03" for k in ("usage", "alert", "voice")}},
            "basic-eur": {
                "rank": 0,
                "currency": "EUR",
                **{f"price_per_{k}_session": "0.04" for k in ("usage", "alert", "voice")},
            },
            "pro-jpy": {
                "rank": 9,
                "currency": "JPY",
                **{f"price_per_{k}_session": "5" for k in ("usage", "alert", "voice")},
            },
        }
    },
    "test",
)


@pytest.fixture
def euro_client(chdb_client: Client, database: str, publisher: RecordingPublisher) -> Iterator[TestClient]:
    """The console over a catalogue with a plan in EUR and one in JPY; acme-bot on growth (USD) with 30.00."""
    store(chdb_client, database, [plan_snapshot("acme-bot", plan="growth", balance="30.00", term=False)])
    extras = {"publisher": publisher, "catalog": EURO_CATALOG}
    with http(make_app(chdb_client, database, console_settings(now=NOW), extras=extras)) as c:
        yield c


@pytest.mark.parametrize("currency", ["EUR", "ZZZ", "XAU", "usd", "US"])
def test_add_funds_only_in_the_currency_the_balance_counts(
    euro_client: TestClient, publisher: RecordingPublisher, currency: str
) -> None:
    """The app is priced in USD: an order in EUR would be paid and invoiced, and the funds land in a tally the
    balance, status and entitlement never look at (currencies are never converted); a made-up code (ZZZ), a
    metal (XAU) or a malformed one is no currency at all."""
    answer = euro_client.post(
        "/api/v1/apps/acme-bot/funds",
        json={"amount": "100.00", "currency": currency, "payment_method": "manual"},
        headers=ADMIN,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == "currency"
    assert publisher.sent == []


def test_add_funds_defaults_to_the_plans_currency(euro_client: TestClient, publisher: RecordingPublisher) -> None:
    answer = euro_client.post("/api/v1/apps/acme-bot/funds", json={"amount": "100"}, headers=ADMIN)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["currency"], answer.json()["amount"]) == ("USD", "100.00")
    assert "counts_from" not in answer.json()
    [order] = publisher.events("billing-orders")
    assert order["currency"] == "USD"


def test_funds_in_a_scheduled_plans_currency_count_from_its_date(
    chdb_client: Client, database: str, euro_client: TestClient, publisher: RecordingPublisher
) -> None:
    """A downgrade to a EUR plan is scheduled for 1 December: funds in EUR are taken (they count from then, so
    the app is not left depleted at the switch), and the answer says from when."""
    december = datetime(2026, 12, 1, tzinfo=UTC)
    store(
        chdb_client,
        database,
        [plan_snapshot("acme-bot", plan="growth", balance="30.00", term=False, version=2,
                       scheduled_plan="basic-eur", scheduled_at=december)],
    )  # fmt: skip
    answer = euro_client.post("/api/v1/apps/acme-bot/funds", json={"amount": "80", "currency": "EUR"}, headers=ADMIN)
    assert answer.status_code == 202, answer.text
    assert (answer.json()["currency"], answer.json()["counts_from"]) == ("EUR", "2026-12-01T00:00:00.000Z")
    still = euro_client.post("/api/v1/apps/acme-bot/funds", json={"amount": "5", "currency": "JPY"}, headers=ADMIN)
    assert (still.status_code, still.json()["parameter"]) == (400, "currency")
    assert [o["currency"] for o in publisher.events("billing-orders")] == ["EUR"]


def test_moving_a_funded_app_to_another_currency_needs_a_confirmation(
    chdb_client: Client, database: str, euro_client: TestClient, publisher: RecordingPublisher
) -> None:
    """acme-bot holds 30.00 USD: a plan in JPY would leave them in a tally that no longer counts. A 400 naming plan
    says so; confirm_currency_change: true does it anyway. An app without money moves freely."""
    refused = euro_client.post("/api/v1/apps/acme-bot/plan", json={"plan": "pro-jpy"}, headers=ADMIN)
    assert refused.status_code == 400, refused.text
    assert refused.json()["parameter"] == "plan"
    assert "30.00 USD" in refused.json()["error"]
    assert "confirm_currency_change" in refused.json()["error"]
    assert publisher.sent == []
    same = euro_client.post("/api/v1/apps/acme-bot/plan", json={"plan": "starter"}, headers=ADMIN)
    assert same.status_code == 202, "a plan in the same currency needs nothing"
    confirmed = euro_client.post(
        "/api/v1/apps/acme-bot/plan", json={"plan": "pro-jpy", "confirm_currency_change": True}, headers=ADMIN
    )
    assert confirmed.status_code == 202, confirmed.text
    assert [e["currency"] for e in publisher.events("billing-plans")] == ["USD", "JPY"]
    store(chdb_client, database, [plan_snapshot("acme-empty", plan="growth", balance="0.00", term=False)])
    empty = euro_client.post("/api/v1/apps/acme-empty/plan", json={"plan": "basic-eur"}, headers=ADMIN)
    assert empty.status_code == 202, empty.text


def test_the_openapi_document_describes_the_confirmation_and_the_currency(euro_client: TestClient) -> None:
    schemas = euro_client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "confirm_currency_change" in schemas["PlanChangeIn"]["properties"]
    assert "never count" in schemas["FundsIn"]["properties"]["currency"]["description"]


@pytest.mark.usefixtures("account")
def test_extension_requests_and_owner_changes_are_events(client: TestClient, publisher: RecordingPublisher) -> None:
    asked = client.post(
        "/api/v1/apps/acme-old/extension-requests", json={"days": 30, "reason": "renewing"}, headers=ADMIN
    )
    assert asked.status_code == 202, asked.text
    pending = client.post("/api/v1/apps/acme-annual/extension-requests", json={"days": 5, "reason": "x"}, headers=ADMIN)
    assert pending.status_code == 409, "one request at a time"
    no_term = client.post("/api/v1/apps/acme-bot/extension-requests", json={"days": 5, "reason": "x"}, headers=ADMIN)
    assert no_term.status_code == 409
    owner = client.post("/api/v1/apps/acme-bot/owner", json={"user_id": "bob"}, headers=ADMIN)
    assert owner.status_code == 202
    request, change = publisher.events("billing-plans")
    assert (request["type"], request["days"], request["request_id"]) == (
        "extension_requested",
        30,
        asked.json()["request_id"],
    )
    assert (change["type"], change["user_id"], change["changed_by"]) == ("owner_changed", "bob", "u-admin")


@pytest.mark.usefixtures("account")
@pytest.mark.parametrize(
    ("path", "body", "parameter"),
    [
        ("plan", {"plan": "platinum"}, "plan"),
        ("plan", {}, "plan"),
        ("plan", {"plan": "growth", "colour": "red"}, "colour"),
        ("funds", {"amount": "0", "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "-5", "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "10.001", "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "10.5", "currency": "JPY", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "ten", "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "NaN", "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "10", "currency": "usd", "payment_method": "manual"}, "currency"),
        ("funds", {"amount": "10", "currency": "USD", "payment_method": "cheque"}, "payment_method"),
        ("funds", {"amount": "1" * 100_000, "currency": "USD", "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "1" * 100_000, "payment_method": "manual"}, "amount"),
        ("funds", {"amount": "10", "currency": "U" * 100_000, "payment_method": "manual"}, "currency"),
        ("funds", {"amount": "10", "currency": "USD", "payment_method": "m" * 100_000}, "payment_method"),
        ("extension-requests", {"days": 0, "reason": "x"}, "days"),
        ("extension-requests", {"days": 3, "reason": ""}, "reason"),
        ("owner", {"user_id": ""}, "user_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    client: TestClient, publisher: RecordingPublisher, path: str, body: dict[str, Any], parameter: str
) -> None:
    answer = client.post(f"/api/v1/apps/acme-bot/{path}", json=body, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == parameter
    assert publisher.sent == []


@pytest.mark.usefixtures("account")
def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    bad = client.post(
        "/api/v1/apps/acme-bot/plan", content=b"{plan:", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert (bad.status_code, bad.json()["parameter"]) == (400, "body")
    huge = client.post(
        "/api/v1/apps/acme-bot/owner",
        content=json.dumps({"user_id": "x" * (2 * 1024 * 1024)}).encode(),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    unknown = client.post("/api/v1/apps/no-such-app/plan", json={"plan": "growth"}, headers=ADMIN)
    theirs = client.post("/api/v1/apps/globex-bot/plan", json={"plan": "growth"}, headers=ADMIN)
    assert unknown.status_code == theirs.status_code == 404


# -- Idempotency-Key ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("account")
def test_a_replayed_key_returns_the_first_answer_and_changes_nothing(
    chdb_client: Client, database: str, client: TestClient, publisher: RecordingPublisher
) -> None:
    key = {**ADMIN, "Idempotency-Key": "9b2f3c1e-key"}
    body = {"amount": "10.00", "currency": "USD", "payment_method": "manual"}
    first = client.post("/api/v1/apps/acme-bot/funds", json=body, headers=key)
    again = client.post("/api/v1/apps/acme-bot/funds", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(publisher.sent) == 1
    other = client.post("/api/v1/apps/acme-bot/funds", json={**body, "amount": "11.00"}, headers=key)
    assert other.status_code == 409
    elsewhere = client.post("/api/v1/apps/acme-annual/funds", json=body, headers=key)
    assert elsewhere.status_code == 202, "scoped to the route: another app's route is another scope"
    assert elsewhere.json()["order_id"] != first.json()["order_id"]
    # a restart: a new app over the same database remembers the key
    restarted = make_app(chdb_client, database, console_settings(now=NOW), extras={"publisher": publisher})
    with http(restarted) as c:
        after = c.post("/api/v1/apps/acme-bot/funds", json=body, headers=key)
    assert after.json() == first.json()
    assert len(publisher.sent) == 2
    stranger = client.post(
        "/api/v1/apps/globex-bot/funds",
        json=body,
        headers={**bearer(token(OTHER_ACCOUNT)), "Idempotency-Key": "9b2f3c1e-key"},
    )
    assert stranger.status_code == 202, "scoped to the account"


@pytest.mark.usefixtures("account")
def test_a_key_is_remembered_for_good_so_a_late_reuse_never_names_an_old_order(
    chdb_client: Client, database: str, client: TestClient, publisher: RecordingPublisher
) -> None:
    """The order processor remembers order ids for good, and they are derived from the key: a key forgotten after
    two days (as it used to be) and used again got 202 "pending" for a new request under the old order's id, which
    the processor dropped as a copy. Keys are kept (migration 014): a month later the key still replays or 409s."""
    headers = {**ADMIN, "Idempotency-Key": "monthly-top-up"}
    first = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "100.00"}, headers=headers)
    assert first.status_code == 202, first.text
    db = {"db": database}
    table = chdb_client.query("SELECT * FROM {db:Identifier}.idempotency_keys", parameters=db)
    [row] = [list(r) for r in table.result_rows]
    row[table.column_names.index("created_at")] = NOW - timedelta(days=30)  # a month later
    chdb_client.command("TRUNCATE TABLE {db:Identifier}.idempotency_keys", parameters=db)
    chdb_client.insert("idempotency_keys", [row], column_names=list(table.column_names), database=database)
    chdb_client.command("OPTIMIZE TABLE {db:Identifier}.idempotency_keys FINAL", parameters=db)  # a TTL drops rows
    ddl = chdb_client.command("SHOW CREATE TABLE {db:Identifier}.idempotency_keys", parameters=db)
    assert "TTL" not in str(ddl)
    assert chdb_client.command("SELECT count() FROM {db:Identifier}.idempotency_keys", parameters=db) == 1
    other = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "500.00"}, headers=headers)
    assert other.status_code == 409, other.text
    same = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "100.00"}, headers=headers)
    assert same.headers["idempotent-replayed"] == "true"
    assert same.json() == first.json()
    assert len(publisher.events("billing-orders")) == 1


@pytest.mark.usefixtures("account")
def test_ids_derive_from_the_key_and_the_body_so_a_lost_answer_never_maps_a_new_request_to_an_old_id(
    chdb_client: Client, database: str, client: TestClient, publisher: RecordingPublisher
) -> None:
    """Should the answer not be remembered (ClickHouse failed after the event was published), the same key with
    another body is a new order with an id of its own, and the same body derives the same id (a true retry,
    which the processor applies once)."""
    headers = {**ADMIN, "Idempotency-Key": "k-lost"}
    first = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "100.00"}, headers=headers)
    chdb_client.command("TRUNCATE TABLE {db:Identifier}.idempotency_keys", parameters={"db": database})
    second = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "500.00"}, headers=headers)
    assert second.status_code == 202, second.text
    assert second.headers.get("Idempotent-Replayed") is None, "a new request, not a replay"
    chdb_client.command("TRUNCATE TABLE {db:Identifier}.idempotency_keys", parameters={"db": database})
    retry = client.post("/api/v1/apps/acme-bot/funds", json={"amount": "100.00"}, headers=headers)
    orders = publisher.events("billing-orders")
    assert [o["amount"] for o in orders] == ["100.00", "500.00", "100.00"]
    assert orders[0]["order_id"] != orders[1]["order_id"], "another body: another order"
    assert orders[0]["order_id"] == orders[2]["order_id"] == first.json()["order_id"] == retry.json()["order_id"]
    assert orders[0]["event_id"] == orders[2]["event_id"]


@pytest.mark.usefixtures("account")
def test_concurrent_retries_with_one_key_publish_once(client: TestClient, publisher: RecordingPublisher) -> None:
    key = {**ADMIN, "Idempotency-Key": "concurrent"}
    body = {"amount": "5.00", "currency": "USD", "payment_method": "manual"}
    answers: list[Any] = []

    def post() -> None:
        answers.append(client.post("/api/v1/apps/acme-bot/funds", json=body, headers=key))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["order_id"] for a in answers}) == 1
    assert len(publisher.sent) == 1


@pytest.mark.usefixtures("account")
def test_a_bad_key_is_a_400(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/apps/acme-bot/owner", json={"user_id": "x"}, headers={**ADMIN, "Idempotency-Key": "a b"}
    )
    assert (answer.status_code, answer.json()["parameter"]) == (400, "Idempotency-Key")


# -- enterprise accounts --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("account")
def test_enterprise_accounts_cannot_change_plans_add_funds_or_see_orders(
    chdb_client: Client, database: str, client: TestClient, publisher: RecordingPublisher
) -> None:
    store(
        chdb_client,
        database,
        [
            AccountChanged(
                event_id="e1", occurred_at=NOW - timedelta(days=1), account_id=ACCOUNT, billing_type="enterprise"
            )
        ],
    )
    for method, path, body in [
        ("POST", "/api/v1/apps/acme-bot/plan", {"plan": "growth"}),
        ("POST", "/api/v1/apps/acme-bot/funds", {"amount": "1", "currency": "USD", "payment_method": "manual"}),
        ("GET", "/api/v1/orders", None),
        ("GET", "/api/v1/invoices/INV-000001.pdf", None),
    ]:
        answer = client.request(method, path, json=body, headers=ADMIN)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["reason"] == "enterprise"
        assert "contact support" in answer.json()["error"]
    assert client.get("/api/v1/apps", headers=ADMIN).json()["billing_type"] == "enterprise"
    assert client.post("/api/v1/apps/acme-bot/owner", json={"user_id": "x"}, headers=ADMIN).status_code == 202
    assert [e["type"] for e in publisher.events()] == ["owner_changed"]
    store(
        chdb_client,
        database,
        [AccountChanged(event_id="e2", occurred_at=NOW, account_id=ACCOUNT, billing_type="prepaid")],
    )
    assert client.get("/api/v1/orders", headers=ADMIN).status_code == 200, "the latest change is in force"


# -- orders & invoices ----------------------------------------------------------------------------------------------


def order_state(order_id: str, created: datetime, status: str, version: int, invoice: str | None = None) -> OrderState:
    return order_record(order_id, created, status, version, invoice, app="acme-bot")


def test_orders_newest_first_in_their_latest_state_and_the_invoice_as_pdf(
    chdb_client: Client, database: str, client: TestClient
) -> None:
    older, newer = NOW - timedelta(days=2), NOW - timedelta(days=1)
    store(
        chdb_client,
        database,
        [
            order_state("o-old", older, "pending", 1),
            order_state("o-old", older, "paid", 2, "INV-000001"),
            order_state("o-new", newer, "pending", 1),
            issued_invoice("INV-000001", order_id="o-old", app="acme-bot"),
            issued_invoice("INV-000001", OTHER_ACCOUNT, order_id="g-1"),
        ],
    )
    store(chdb_client, database, [order_state("o-old", older, "paid", 2, "INV-000001")])  # a replay: same version
    orders = client.get("/api/v1/orders", headers=ADMIN).json()["orders"]
    assert [o["order_id"] for o in orders] == ["o-new", "o-old"]
    assert orders[1] | {"created_at": None} == {
        "order_id": "o-old",
        "billing_date": older.date().isoformat(),
        "description": "Funds for app acme-bot",
        "cost": "100.00",
        "currency": "USD",
        "payment_method": "manual",
        "payment_status": "paid",
        "invoice_id": "INV-000001",
        "credit_note_id": None,
        "app_id": "acme-bot",
        "created_at": None,
    }
    assert orders[0]["invoice_id"] is None
    pdf = client.get("/api/v1/invoices/INV-000001.pdf", headers=ADMIN)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    for expected in ("INV-000001", "o-old", "100.00 USD", "manual", "paid", ACCOUNT):
        assert expected in text
    theirs = client.get("/api/v1/invoices/INV-000001.pdf", headers=bearer(token(OTHER_ACCOUNT)))
    assert "g-1" in PdfReader(io.BytesIO(theirs.content)).pages[0].extract_text(), "each account its own numbers"
    assert client.get("/api/v1/invoices/INV-000404.pdf", headers=ADMIN).status_code == 404
    assert client.get("/api/v1/orders?limit=1", headers=ADMIN).json()["orders"][0]["order_id"] == "o-new"
    assert client.get("/api/v1/orders?limit=0", headers=ADMIN).status_code == 400


def test_orders_come_a_page_at_a_time_past_a_thousand(chdb_client: Client, database: str, client: TestClient) -> None:
    """`limit` is at most 1,000: the answer's `next` link (a cursor, before=<order_id>) reads the rest, newest
    first, each order once, even where orders share a created_at."""
    start = NOW - timedelta(days=30)
    states = [order_state(f"o-{n:04d}", start + timedelta(minutes=n // 2), "pending", 1) for n in range(1203)]
    store(chdb_client, database, states)
    expected = [s.order_id for s in sorted(states, key=lambda s: (s.created_at, s.order_id), reverse=True)]
    seen: list[str] = []
    path: str | None = "/api/v1/orders?limit=1000"
    pages = 0
    while path is not None:
        answer = client.get(path, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        seen += [o["order_id"] for o in answer.json()["orders"]]
        path = answer.json()["next"]
        pages += 1
    assert seen == expected
    assert pages == 2
    small = client.get("/api/v1/orders?limit=2", headers=ADMIN).json()
    assert small["next"] == f"/api/v1/orders?limit=2&before={expected[1]}"
    following = client.get(small["next"], headers=ADMIN).json()["orders"]
    assert [o["order_id"] for o in following] == expected[2:4]
    unknown = client.get("/api/v1/orders?before=o-nope", headers=ADMIN)
    assert (unknown.status_code, unknown.json()["parameter"]) == (400, "before")
    theirs = client.get(f"/api/v1/orders?before={expected[0]}", headers=bearer(token(OTHER_ACCOUNT)))
    assert theirs.status_code == 400, "another account's order is no cursor"


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


# -- Kafka unavailable ----------------------------------------------------------------------------------------------


class _BrokersDown:
    """A publisher whose brokers never acknowledge (what KafkaPublisher raises after its delivery timeout)."""

    def __init__(self) -> None:
        self.tries = 0

    def publish(self, topic: str, key: str, value: bytes) -> None:
        from pipeline.infra.publish import PublishError  # noqa: PLC0415

        self.tries += 1
        raise PublishError(f"no acknowledgement for an event for {topic} in 30 s")


@pytest.mark.usefixtures("account")
@pytest.mark.parametrize(
    ("path", "body"),
    [("funds", {"amount": "100.00"}), ("plan", {"plan": "business"}), ("owner", {"user_id": "bob"})],
)
def test_a_kafka_outage_on_a_manage_action_is_a_json_503_that_says_a_keyed_retry_is_safe(
    chdb_client: Client, database: str, publisher: RecordingPublisher, path: str, body: dict[str, Any]
) -> None:
    """The route cannot tell whether the event was written: 503 in the product's error shape, Retry-After, and the
    advice to retry with the same Idempotency-Key; nothing is remembered, so that retry does the work (with the
    same ids: the processors count it once even if the first attempt did get through)."""
    down = _BrokersDown()
    headers = {**ADMIN, "Idempotency-Key": f"k-{path}"}
    with TestClient(make_app(chdb_client, database, console_settings(now=NOW), extras={"publisher": down})) as c:
        answer = c.post(f"/api/v1/apps/acme-bot/{path}", json=body, headers=headers)
    assert answer.status_code == 503, (answer.status_code, answer.headers.get("content-type"), answer.text)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "5"
    assert "same Idempotency-Key" in answer.json()["error"]
    assert answer.json()["retry_safe_with"] == "Idempotency-Key"
    assert down.tries == 1
    with http(make_app(chdb_client, database, console_settings(now=NOW), extras={"publisher": publisher})) as c:
        retried = c.post(f"/api/v1/apps/acme-bot/{path}", json=body, headers=headers)
    assert retried.status_code == 202, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert len(publisher.sent) == 1


# -- money as each currency writes it ---------------------------------------------------------------------------------


def test_amounts_follow_the_currencys_minor_units(chdb_client: Client, database: str, client: TestClient) -> None:
    """JPY 0 decimals, USD 2, KWD 3, in every amount the console API formats (apps, orders, add funds); a fraction
    of a minor unit the balance really has is kept (never rounded)."""
    snapshots = [
        msgspec.structs.replace(
            plan_snapshot("yen-bot", plan="pro", balance="12000.000000", term=False), currency="JPY", threshold="5000"
        ),
        msgspec.structs.replace(plan_snapshot("dinar-bot", plan="pro", balance="1.5", term=False), currency="KWD"),
        plan_snapshot("cent-bot", plan="growth", balance="49.995", term=False),
    ]
    store(chdb_client, database, snapshots)
    yen = msgspec.structs.replace(order_state("o-yen", NOW, "paid", 2, "INV-000001"), amount="12000", currency="JPY")
    store(chdb_client, database, [yen])
    apps = apps_by_id(client)
    assert (apps["yen-bot"]["balance"], apps["yen-bot"]["threshold"], apps["yen-bot"]["cost"]) == ("12000", "5000", "0")
    assert apps["dinar-bot"]["balance"] == "1.500"
    assert apps["cent-bot"]["balance"] == "49.995"
    [order] = client.get("/api/v1/orders", headers=ADMIN).json()["orders"]
    assert (order["cost"], order["currency"]) == ("12000", "JPY")
    funds = client.post("/api/v1/apps/yen-bot/funds", json={"amount": "3000"}, headers=ADMIN)
    assert (funds.status_code, funds.json()["amount"], funds.json()["currency"]) == (202, "3000", "JPY")
    decimals = client.post("/api/v1/apps/dinar-bot/funds", json={"amount": "2.0001"}, headers=ADMIN)
    assert (decimals.status_code, decimals.json()["parameter"]) == (400, "amount")
