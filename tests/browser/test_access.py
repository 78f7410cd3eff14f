"""Who gets into the Billing pages, in Chromium: sign-in, the one-time link, sign-out, expiry, 403s.

- the login form takes a platform token and lands on Usage; a refused token comes back with why;
- the one-time link ``metering run`` prints signs the demo admin in once, and only once;
- Log out ends the session; an expired session returns to the login page with a message, both
  when a page is opened and when a page's script finds the session gone;
- a member and a shared account's admin get a 403 page on every Billing URL, with no navigation,
  and no billing figure or app of the account anywhere (the page's text and every API answer);
- an Enterprise account's navigation has no Orders & invoices, and its URL answers 403;
- the pages run under their Content-Security-Policy, which Chromium enforces (every test's context
  fails on a violation: tests/browser/conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from console import login_link
from tests.browser.conftest import ADMIN_ACCOUNT, ENTERPRISE_ACCOUNT, Stack
from tests.browser.traffic import all_apps

pytestmark = pytest.mark.integration

PAGES = ("/console/usage", "/console/plans", "/console/orders")


def test_login_form_signs_an_admin_in(page: Page, stack: Stack, shoot: Callable[..., Path]) -> None:
    page.goto(f"{stack.url}/console/plans")
    expect(page).to_have_url(f"{stack.url}/login?next=%2Fconsole%2Fplans")
    expect(page.get_by_role("heading", name="Log in to Billing")).to_be_visible()
    shoot(page, "login")
    page.get_by_label("Platform token").fill(stack.token())
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{stack.url}/console/plans")
    nav = page.get_by_role("navigation", name="Billing")
    expect(nav.get_by_role("link")).to_have_text(["Usage", "Plan & usage", "Orders & invoices"])
    expect(nav.get_by_role("link", name="Plan & usage")).to_have_attribute("aria-current", "page")


def test_chromium_enforces_the_pages_policy(browser: Browser, stack: Stack) -> None:
    """What makes the other tests' "no violation" meaningful: an inline script (as an injected one would be) is
    refused and reported, a framed page is not shown."""
    context = browser.new_context()
    try:
        stack.sign_in(context)
        page = context.new_page()
        reports: list[str] = []
        page.on("console", lambda m: reports.append(m.text))
        page.goto(f"{stack.url}/console/plans")
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
            " document.body.append(s); }"
        )
        assert page.evaluate("window.injected") is None
        expect(page.locator("#apps-table tbody tr").first).not_to_have_text("Loading…")  # its own script ran
        page.set_content(f'<iframe id="f" src="{stack.url}/console/plans"></iframe>')
        page.wait_for_timeout(1000)
        framed = page.frame_locator("#f").get_by_role("heading", name="Plan & usage")
        expect(framed).to_have_count(0)
        assert any("Content Security Policy" in r for r in reports), reports
    finally:
        context.close()


def test_a_refused_token_says_why(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/login")
    page.get_by_label("Platform token").fill(stack.token()[:-4] + "AAAA")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("signature")
    expect(page.get_by_role("heading", name="Log in to Billing")).to_be_visible()


def test_the_one_time_link_works_once(page: Page, context: BrowserContext, stack: Stack) -> None:
    code = login_link.create(stack.settings.console, stack.settings.data_dir, account_id=ADMIN_ACCOUNT, user="demo")
    assert code is not None
    page.goto(f"{stack.url}/login?once={code}")
    expect(page).to_have_url(re.compile(r"/console/usage"))
    expect(page.get_by_text(f"account {ADMIN_ACCOUNT}")).to_be_visible()
    context.clear_cookies()
    page.goto(f"{stack.url}/login?once={code}")
    expect(page.get_by_role("alert")).to_contain_text("already used")


def test_log_out_ends_the_session(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    page.goto(f"{stack.url}/console/usage")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to Billing")).to_be_visible()
    page.goto(f"{stack.url}/console/usage")
    expect(page.get_by_role("heading", name="Log in to Billing")).to_be_visible()


def test_an_expired_session_returns_to_login_with_a_message(page: Page, context: BrowserContext, stack: Stack) -> None:
    expired = stack.token(ttl=timedelta(minutes=-5))
    context.add_cookies([{"name": "metering_session", "value": expired, "url": stack.url}])
    page.goto(f"{stack.url}/console/orders")
    expect(page.get_by_role("alert")).to_contain_text("session has ended")
    expect(page.get_by_role("heading", name="Log in to Billing")).to_be_visible()
    # A page already open whose session ends: its next API call brings the login page.
    stack.sign_in(context)
    page.goto(f"{stack.url}/console/usage")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    context.add_cookies([{"name": "metering_session", "value": expired, "url": stack.url}])
    page.get_by_role("button", name="7 days", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("session has ended")
    expect(page).to_have_url(re.compile(r"/login\?expired=1&next=%2Fconsole%2Fusage%3Frange%3D7d"))


@pytest.mark.parametrize(
    ("who", "role", "shared"), [("member", "member", False), ("shared-admin", "admin", True)], ids=["member", "shared"]
)
def test_no_billing_data_for_members_and_shared_admins(
    page: Page, context: BrowserContext, stack: Stack, shoot: Callable[..., Path], *, who: str, role: str, shared: bool
) -> None:
    token = stack.token(role=role, shared=shared, user=who)
    stack.sign_in(context, token)
    api_calls: list[tuple[str, int]] = []
    page.on("response", lambda r: api_calls.append((r.url, r.status)) if "/api/" in r.url else None)
    secrets = [app for account, app in all_apps() if account == ADMIN_ACCOUNT]
    for path in PAGES:
        answer = page.goto(stack.url + path)
        assert answer is not None
        assert answer.status == 403, path
        expect(page.get_by_role("heading", name="You do not have access to Billing")).to_be_visible()
        expect(page.get_by_role("navigation", name="Billing")).to_have_count(0)
        text = page.locator("body").inner_text()
        for app in secrets:
            assert app not in text
        assert "$" not in text
        assert "Balance" not in text
    shoot(page, f"forbidden-{who}")
    assert api_calls == [], "a 403 page asks the API for nothing"
    for path in ("/api/v1/usage?range=7d", "/api/v1/apps", "/api/v1/orders", "/api/v1/usage.csv?range=7d"):
        answer = stack.api(path, token)
        assert answer.status_code == 403, path
        assert not any(app in answer.text for app in secrets)


def test_enterprise_navigation_has_no_orders(page: Page, context: BrowserContext, stack: Stack) -> None:
    token = stack.token(ENTERPRISE_ACCOUNT, user="erin")
    stack.sign_in(context, token)
    page.goto(f"{stack.url}/console/usage")
    nav = page.get_by_role("navigation", name="Billing")
    expect(nav.get_by_role("link")).to_have_text(["Usage", "Plan & usage"])
    page.goto(f"{stack.url}/console/plans")
    row = page.locator('#apps-table tbody tr[data-app-id="app-01-0"]')
    row.hover()
    row.get_by_role("button", name="Manage").click()
    dialog = page.get_by_role("dialog", name="Manage app-01-0")
    expect(dialog.get_by_role("button", name="Request extension")).to_be_visible()
    expect(dialog.get_by_role("button", name="Add funds")).to_have_count(0)
    expect(dialog.get_by_role("button", name="Change plan")).to_have_count(0)
    answer = page.goto(f"{stack.url}/console/orders")
    assert answer is not None
    assert answer.status == 403
    expect(page.get_by_role("alert")).to_contain_text("Enterprise")
    assert stack.api("/api/v1/orders", token).status_code == 403
