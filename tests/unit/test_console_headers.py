"""Security headers on every console response (``console.headers``): no sniffing, no framing, no caching of
billing data, a Content-Security-Policy the pages work with (the browser tests prove they do: tests/browser
fail on any CSP violation)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from console.headers import CONTENT_SECURITY_POLICY
from consumers.clickhouse import Client
from tests.console_support import bearer, console_settings, fill, http, make_app, token
from tests.support import Conversation, in_time_order

ADMIN = bearer(token())


@pytest.fixture
def app(chdb_client: Client, database: str) -> FastAPI:
    fill(
        chdb_client,
        database,
        in_time_order(Conversation("c-1", app_id="acme-bot", account_id="acme").user(0).bot(1).events),
    )
    return make_app(chdb_client, database, console_settings(now=datetime(2026, 11, 2, tzinfo=UTC)))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with http(app) as c:
        yield c


@pytest.mark.parametrize(
    "path",
    [
        "/console/plans",
        "/console/usage",
        "/console/orders",
        "/login",
        "/api/v1/apps",
        "/api/v1/usage",
        "/api/v1/usage.csv",
        "/api/v1/sessions.csv",
        "/api/v1/orders",
    ],
)
def test_billing_responses_forbid_sniffing_framing_and_caching(client: TestClient, path: str) -> None:
    """The Manage dialog (plan change, add funds, owner change) cannot be framed by another site (clickjacking);
    a CSV is never sniffed into a script; no browser or proxy keeps billing data."""
    client.cookies.set("metering_session", token())
    answer = client.get(path, headers={} if path.startswith("/console") or path == "/login" else ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"
    policy = answer.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/apps", 401), ("/api/v1/nowhere", 404), ("/healthz", 200), ("/api/v1/openapi.json", 200)],
)
def test_errors_and_open_routes_carry_them_too(client: TestClient, path: str, status: int) -> None:
    answer = client.get(path)
    assert answer.status_code == status
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["cache-control"] == "no-store"


def test_a_refused_oversized_body_carries_them(client: TestClient) -> None:
    answer = client.post("/login", content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.headers["x-frame-options"] == "DENY"


def test_static_files_may_be_cached_and_the_docs_page_has_a_policy_of_its_own(client: TestClient) -> None:
    script = client.get("/console/static/console.js")
    assert script.status_code == 200
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "no-store" not in script.headers.get("cache-control", "")
    assert script.headers.get("etag")
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


def test_pages_carry_no_inline_script_or_style_the_policy_would_refuse(client: TestClient) -> None:
    """The policy has no 'unsafe-inline': a page with an inline script, handler or style attribute would break.
    (A JSON data block is not a script: the browser never runs it.)"""
    import re  # noqa: PLC0415

    client.cookies.set("metering_session", token())
    for path in ("/console/plans", "/console/usage", "/console/orders", "/login"):
        html = client.get(path).text
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+=", html), path
        assert not re.search(r"\sstyle=", html), path
