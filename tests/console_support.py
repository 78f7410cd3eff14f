"""Test helpers for the console: an app over a chDB database of the test's own, tokens of every kind.

The app is the real one (``console.app.create_app``) with the real authenticator; the database is
the session's embedded chDB, filled through the sink's own ``SessionStore`` and ``PlanStore``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from fastapi import FastAPI
from fastapi.testclient import TestClient

from console.app import create_app
from console.auth import Authenticator, issue_token
from console.context import ConsoleContext
from console.server import ConsoleServer
from consumers.clickhouse import Client, SessionStore
from consumers.clickhouse.plans import PlanStore
from pipeline.contract.decode import decode_event
from pipeline.contract.events import BalanceSnapshot, Rejection
from pipeline.infra.settings import ConsoleSettings
from pipeline.stream.records import billing_session_record
from tests.support import FAR_FUTURE, meter_run

SECRET = "s" * 40
OPERATOR_TOKEN = "operator-token-of-the-test"
ACCOUNT = "acme"
OTHER_ACCOUNT = "globex"


def console_settings(**changes: Any) -> ConsoleSettings:
    return replace(ConsoleSettings(secret=SECRET), **changes)


class RecordingPublisher:
    """Stands in for the Kafka publisher in unit tests (no broker there): keeps what the routes publish."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, key: str, value: bytes) -> None:
        with self._lock:
            self.sent.append((topic, key, value))

    def events(self, topic: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(value) for t, _, value in self.sent if topic is None or t == topic]


def make_app(
    client: Client,
    database: str,
    settings: ConsoleSettings | None = None,
    *,
    open_handle: bool = True,
    operator_token: str | None = OPERATOR_TOKEN,
    extras: dict[str, Any] | None = None,
) -> FastAPI:
    settings = settings or console_settings()
    context = ConsoleContext(
        client=client,
        database=database,
        settings=settings,
        authenticator=Authenticator(settings, None if settings.jwks else settings.secret),
        operator_token=operator_token,
        open_handle=(lambda: _same_engine(client)) if open_handle else None,
        extras={"publisher": RecordingPublisher()} if extras is None else extras,
    )
    return create_app(context)


@contextlib.contextmanager
def serve_console(client: Client, database: str, **options: Any) -> Iterator[str]:
    """The app served by uvicorn on a free port, as the store serves it; yields its URL."""
    server = ConsoleServer(make_app(client, database, **options), "127.0.0.1", 0)
    host, port = server.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _same_engine(client: Client) -> Client:
    """Another handle on the session's chDB engine, as the store opens one per export."""
    from consumers.clickhouse import connect  # noqa: PLC0415

    return connect(f"chdb://{client.path}", "metering")  # type: ignore[attr-defined]


def http(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=True)


def token(
    account: str = ACCOUNT,
    *,
    role: str = "admin",
    shared: bool = False,
    user: str = "u-admin",
    ttl: timedelta = timedelta(hours=1),
    secret: str = SECRET,
    now: datetime | None = None,
) -> str:
    return issue_token(secret, account_id=account, user=user, role=role, shared=shared, ttl=ttl, now=now)


def unsigned_token(account: str = ACCOUNT) -> str:
    """An ``alg: none`` token with an admin's claims."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    claims = {"sub": "u", "account_id": account, "role": "admin", "shared": False, "exp": exp}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def claims_token(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def fill(
    client: Client, database: str, events: Sequence[dict[str, Any]], token_name: str = "test:0", *, replay: bool = False
) -> None:
    """Meter ``events`` and store their sessions, seats and transfers as the sinks do.

    ``replay``: the first half of the sessions is stored twice, under two tokens, as a reset
    consumer group would (nothing may count twice).
    """
    metered = [e for e in events if e["type"] in ("conversation_turn", "agent_transfer", "alert_delivered")]
    records = [billing_session_record(s) for s in meter_run(metered)]
    if replay and records:
        SessionStore(client, database).insert(records[: len(records) // 2], f"{token_name}:replayed")
    if records:
        SessionStore(client, database).insert(records, f"{token_name}:sessions")
    plan_records = [decoded[1] for decoded in _decoded(events) if _stored_by_plan_sinks(decoded[1])]
    if plan_records:
        PlanStore(client, database).insert(plan_records, f"{token_name}:plans")  # type: ignore[arg-type]


def _decoded(events: Iterable[dict[str, Any]]) -> list[tuple[int, Any]]:
    out = []
    for event in events:
        decoded = decode_event(json.dumps(event).encode(), FAR_FUTURE)
        if not isinstance(decoded, Rejection):
            out.append(decoded)
    return out


def _stored_by_plan_sinks(event: Any) -> bool:
    return type(event).__name__ in {"PlanChanged", "FundsAdded", "AgentsSubscribed", "AgentTransfer"}


def plan_snapshot(
    app: str,
    account: str = ACCOUNT,
    *,
    plan: str | None = "business",
    status: str = "active",
    balance: str = "500.00",
    expires_at: datetime | None = None,
    term: bool = True,
    version: int = 1,
    **fields: Any,
) -> BalanceSnapshot:
    """The balance processor's view of an app (a ``balance-state`` record), on a plan with a term by default."""
    now = datetime.now(UTC)
    return BalanceSnapshot(
        account_id=account,
        app_id=app,
        plan=plan,
        currency="USD",
        funds=balance,
        usage_cost="0.00",
        alert_cost="0.00",
        voice_cost="0.00",
        usage_sessions=0,
        alert_sessions=0,
        voice_sessions=0,
        unpriced_sessions=0,
        balance=balance,
        threshold="100.00",
        status=status,  # type: ignore[arg-type]
        entitled=status != "depleted",
        agents=0,
        version=version,
        updated_at=now,
        expires_at=now + timedelta(days=200) if expires_at is None and term and plan is not None else expires_at,
        **fields,
    )


def order_record(
    order_id: str,
    created: datetime,
    status: str,
    version: int = 1,
    invoice: str | None = None,
    *,
    account: str = ACCOUNT,
    app: str = "bot",
) -> Any:
    """An ``order_state`` record as the order processor writes it (the ``orders`` read model's row)."""
    from pipeline.orders.events import OrderState  # noqa: PLC0415

    return OrderState(
        account_id=account,
        order_id=order_id,
        app_id=app,
        description=f"Funds for app {app}",
        amount="100.00",
        currency="USD",
        payment_method="manual",
        payment_status=status,  # type: ignore[arg-type]
        provider="manual",
        provider_reference=None,
        failure_reason=None,
        billing_date=created.date() if status in ("paid", "refunded") else None,
        invoice_id=invoice,
        credit_note_id=None,
        requested_by="u-admin",
        created_at=created,
        updated_at=created,
        version=version,
    )


def issued_invoice(
    invoice_id: str, account: str = ACCOUNT, *, order_id: str = "ord-1", app: str = "acme-support"
) -> Any:
    """An ``invoice_issued`` record as the order processor writes it."""
    from pipeline.orders.events import InvoiceIssued, InvoiceLine  # noqa: PLC0415

    now = datetime.now(UTC)
    return InvoiceIssued(
        account_id=account,
        invoice_id=invoice_id,
        number=int(invoice_id.rsplit("-", 1)[-1]),
        kind="invoice",
        order_id=order_id,
        app_id=app,
        issued_at=now,
        billing_date=now.date(),
        seller="Metering",
        currency="USD",
        lines=[InvoiceLine(description=f"Funds for app {app}", quantity=1, unit_price="100.00", amount="100.00")],
        total="100.00",
        payment_method="manual",
        payment_status="paid",
    )
