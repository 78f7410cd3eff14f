"""The Billing pages' server side, without a browser: who gets a page, a 403 or the login form.

(The browser tests in tests/browser drive the same pages in Chromium with real data; these are
the fast checks of the rules: redirects with ``next`` and a message, 403 without data, the
Enterprise navigation, the one-time login link, the static files and the Chart.js licence.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from console import login_link
from console.pages import SIGNED_IN_COOKIE, STATIC_DIR
from consumers.clickhouse import Client, migrate
from tests.console_support import ACCOUNT, console_settings, http, make_app, token
from tests.support import migrated_database

PAGES = ("/console/usage", "/console/plans", "/console/orders")


@pytest.fixture(scope="module")
def pages_db(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        yield database


@pytest.fixture
def app(chdb_client: Client, pages_db: str, tmp_path: Path) -> FastAPI:
    return make_app(chdb_client, pages_db, extras={"data_dir": tmp_path})


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return http(app)


def signed_in(client: TestClient, value: str) -> TestClient:
    client.cookies.set("metering_session", value)
    return client


@pytest.mark.parametrize("path", PAGES)
def test_no_session_goes_to_login_with_where_it_was(client: TestClient, path: str) -> None:
    answer = client.get(f"{path}", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/login?next={path.replace('/', '%2F')}"


def test_an_expired_session_says_so(client: TestClient) -> None:
    signed_in(client, token(ttl=timedelta(minutes=-5)))
    answer = client.get("/console/usage?range=7d", follow_redirects=True)
    assert answer.status_code == 200
    assert "Your session has ended" in answer.text
    assert "Log in to Billing" in answer.text


def test_a_session_the_browser_dropped_says_so_too(client: TestClient) -> None:
    client.cookies.set(SIGNED_IN_COOKIE, "1")
    answer = client.get("/console/plans", follow_redirects=True)
    assert "Your session has ended" in answer.text
    assert SIGNED_IN_COOKIE not in answer.cookies  # the login page forgets it


@pytest.mark.parametrize(("role", "shared"), [("member", False), ("admin", True)])
def test_members_and_shared_admins_get_403_pages_without_data(client: TestClient, role: str, shared: bool) -> None:
    signed_in(client, token(role=role, shared=shared))
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 403, path
        assert "You do not have access to Billing" in answer.text
        assert 'aria-label="Billing"' not in answer.text  # no navigation
        assert ".js" not in answer.text  # no page script, so no API call either


def test_an_admin_gets_each_page_with_the_navigation(client: TestClient) -> None:
    signed_in(client, token())
    for path, heading in zip(PAGES, ("Usage", "Plan &amp; usage", "Orders &amp; invoices"), strict=True):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert f"<h1>{heading}</h1>" in answer.text
        assert 'href="/console/orders"' in answer.text
        assert answer.headers["cache-control"] == "no-store"


def test_enterprise_accounts_have_no_orders(chdb_client: Client, pages_db: str, tmp_path: Path) -> None:
    database = f"t_{uuid.uuid4().hex}"
    migrate(chdb_client, database)
    try:
        chdb_client.command(
            "INSERT INTO {db:Identifier}.billing_accounts (account_id, billing_type, event_id, occurred_at) "
            "VALUES ({a:String}, 'enterprise', 'e-1', now64(3))",
            parameters={"db": database, "a": ACCOUNT},
        )
        client = signed_in(http(make_app(chdb_client, database, extras={"data_dir": tmp_path})), token())
        usage = client.get("/console/usage")
        assert 'href="/console/orders"' not in usage.text
        orders = client.get("/console/orders")
        assert orders.status_code == 403
        assert "Enterprise" in orders.text
    finally:
        chdb_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": database})


def test_the_one_time_link_signs_in_once(client: TestClient, tmp_path: Path) -> None:
    code = login_link.create(console_settings(), tmp_path, account_id=ACCOUNT, user="demo")
    assert code is not None
    assert oct(login_link.link_file(tmp_path).stat().st_mode & 0o777) == "0o600"
    first = client.get(f"/login?once={code}", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/console/usage"
    assert "metering_session" in first.cookies
    client.cookies.clear()
    again = client.get(f"/login?once={code}")
    assert "already used" in again.text
    assert "metering_session" not in again.cookies


def test_a_wrong_code_signs_nobody_in(client: TestClient, tmp_path: Path) -> None:
    code = login_link.create(console_settings(), tmp_path, account_id=ACCOUNT, user="demo")
    assert code is not None
    answer = client.get(f"/login?once={code[:-1]}x")
    assert "already used or has expired" in answer.text
    assert login_link.link_file(tmp_path).exists(), "a wrong guess does not use the link up"


def test_no_link_without_a_secret_of_our_own(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    assert login_link.create(console_settings(secret="", jwks=str(jwks)), tmp_path, account_id="a", user="u") is None


def test_static_files_and_the_chart_library_licence(client: TestClient) -> None:
    for name in ("console.css", "console.js", "usage.js", "plans.js", "orders.js", "vendor/chartjs/chart.umd.min.js"):
        assert client.get(f"/console/static/{name}").status_code == 200, name
    licence = (STATIC_DIR / "vendor" / "chartjs" / "LICENSE.md").read_text()
    assert "MIT License" in licence
    assert "Chart.js v4.6.2" in (STATIC_DIR / "vendor" / "chartjs" / "chart.umd.min.js").read_text()[:200]
