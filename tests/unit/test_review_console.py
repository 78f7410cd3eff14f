"""Review reproductions (branch `review`): console security and correctness findings.

Each test asserts what the product definition (console.md) or a careful reviewer expects and is
marked ``xfail(strict=True)`` while the finding is open, so the suite stays green and a fix turns
the test into an XPASS that fails until the marker is removed. ``pytest --runxfail`` shows them
failing on main.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from pipeline.events import format_ms
from tests.console_support import (
    ACCOUNT,
    RecordingPublisher,
    bearer,
    console_settings,
    fill,
    http,
    make_app,
    plan_snapshot,
    token,
)

NOW = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
ADMIN = bearer(token())


def plan_event(app: str, name: str, at: datetime, currency: str = "USD") -> dict[str, Any]:
    return {
        "type": "plan_changed",
        "event_id": f"{app}-{name}-{at.isoformat()}",
        "occurred_at": format_ms(int(at.timestamp() * 1000)),
        "account_id": ACCOUNT,
        "app_id": app,
        "plan": name,
        "price_per_usage_session": "0.03",
        "price_per_alert_session": "0.01",
        "price_per_voice_session": "0.05",
        "currency": currency,
    }


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


@pytest.fixture
def usd_app(chdb_client: Client, database: str) -> str:
    """acme-bot on a USD plan, as the balance processor published it."""
    fill(chdb_client, database, [plan_event("acme-bot", "growth", datetime(2026, 11, 1, tzinfo=UTC))])
    PlanStore(chdb_client, database).insert([plan_snapshot("acme-bot", plan="growth", term=False)], "t:snap")
    return "acme-bot"


# -- login ---------------------------------------------------------------------------------------------------


def test_login_accepts_a_cross_site_form_post(client: TestClient) -> None:
    """Login CSRF: any site can auto-submit a form to POST /login with the attacker's own token; the victim's
    browser then holds the attacker's session (their Billing console, their apps) with no Origin check."""
    attacker = token("attacker-account")
    answer = client.post(
        "/login",
        data={"token": attacker, "next": "/console/plans"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/plans"
    assert "metering_session=" in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["/\\evil.example", "/\t/evil.example", "/%2F%2Fevil.example", "/%5Cevil.example"])
def test_login_next_is_never_an_off_site_redirect(client: TestClient, target: str) -> None:
    """Checked, not a finding: Starlette percent-encodes what browsers would normalise to //host."""
    answer = client.post("/login", data={"token": token(), "next": target}, follow_redirects=False)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/"), location
    assert not location.startswith(("//", "/\\")), location
    assert "\t" not in location, location
    assert "\\" not in location, location


def test_login_page_shows_any_text_an_attacker_puts_in_the_link(client: TestClient) -> None:
    """Content spoofing: /login?error=... prints the attacker's sentence as the console's own error."""
    text = "Your account is suspended. Call +1 555 0100 and read out your token to restore access."
    answer = client.get("/login", params={"error": text})
    assert answer.status_code == 200
    assert text in answer.text
    assert json.dumps(text)  # (the text is escaped: no XSS, only spoofed content)


def test_operator_token_never_opens_billing_and_console_token_never_opens_operators(client: TestClient) -> None:
    """Checked, not a finding."""
    assert client.get("/usage", headers=ADMIN).status_code == 401
    assert client.get("/api/v1/apps", headers=bearer("operator-token-of-the-test")).status_code == 401
