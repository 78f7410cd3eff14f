"""/console/plans and /console/orders in Chromium, over the real broker, balance and order processors.

- Manage appears on a row's hover and on keyboard focus (and not otherwise);
- add funds through Manage: the page shows the order it created, the order is on Orders &
  invoices (newest first, paid, its invoice a PDF whose text holds the order id and the total),
  and the app's balance on Plan & usage rises by the amount once the balance processor applied it;
- a lower plan chosen in Manage is scheduled: the row's information icon shows the downgrade notice;
- an extension request made in Manage shows as a pending notice;
- the row's … menu changes the owner, and the row shows the new owner;
- screenshots of both pages (laptop and phone width) and of the Manage view.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect
from pypdf import PdfReader

from tests.browser.browser import PHONE
from tests.browser.conftest import Stack
from tests.support import wait_until

pytestmark = pytest.mark.integration


def open_plans(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/console/plans")
    expect(page.get_by_role("heading", name="Plan & usage")).to_be_visible()
    # (selectors, not wait_for_function: the page's CSP refuses the eval that one needs)
    page.locator("body[data-loaded]").wait_for(state="attached")


def app_row(page: Page, app: str) -> Locator:
    return page.locator(f'#apps-table tbody tr[data-app-id="{app}"]')


def open_manage(page: Page, app: str) -> tuple[Locator, Locator]:
    """Hover the app's row and open its Manage dialog: (row, dialog)."""
    row = app_row(page, app)
    row.hover()
    row.get_by_role("button", name="Manage").click()
    return row, page.get_by_role("dialog", name=f"Manage {app}")


def balance_of(stack: Stack, app: str) -> Decimal:
    apps = stack.api("/api/v1/apps").json()["apps"]
    return Decimal(next(a for a in apps if a["app_id"] == app)["balance"])


def opacity(locator: Locator) -> float:
    return float(locator.evaluate("e => getComputedStyle(e).opacity"))


def test_manage_shows_on_hover_and_on_keyboard_focus(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    open_plans(page, stack)
    row = app_row(page, "app-00-1")
    manage = row.get_by_role("button", name="Manage")
    page.mouse.move(1, 1)
    expect(manage).to_have_css("opacity", "0")
    row.hover()
    expect(manage).to_have_css("opacity", "1")
    page.mouse.move(1, 1)
    expect(manage).to_have_css("opacity", "0")
    row.get_by_role("button", name=re.compile("^Notices for")).focus()
    page.keyboard.press("Tab")
    expect(manage).to_be_focused()
    expect(manage).to_have_css("opacity", "1")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Manage app-00-1")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(manage).to_be_focused()


def test_add_funds_creates_an_order_with_an_invoice_and_raises_the_balance(
    admin_page: Page, stack: Stack, shoot: Callable[..., Path]
) -> None:
    page = admin_page
    app = "app-00-0"
    before = balance_of(stack, app)
    open_plans(page, stack)
    row, dialog = open_manage(page, app)
    dialog.get_by_label("Amount", exact=True).fill("1234.50")
    dialog.get_by_label("Payment method", exact=True).select_option("manual")
    shoot(page, "plans-manage", full_page=False)
    dialog.get_by_role("button", name="Add funds").click()
    result = dialog.locator("#funds-result")
    expect(result).to_contain_text("Order ")
    expect(result).to_contain_text("$1,234.50")
    order_id = result.locator("[data-order-id]").get_attribute("data-order-id")
    assert order_id

    # The balance on this page rises by the amount once the balance processor applied the funds.
    expected = before + Decimal("1234.50")
    balance = row.locator('[data-field="balance"]')
    expect(balance).to_have_attribute("data-value", re.compile(rf"^{expected}0*$"), timeout=90_000)
    expect(row.locator('[data-field="balance"]')).to_contain_text(f"${expected:,.2f}")
    page.keyboard.press("Escape")
    row.hover()
    shoot(page, "plans")

    # The order is on Orders & invoices, newest first, paid, with its invoice.
    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Orders & invoices").click()
    expect(page.get_by_role("heading", name="Orders & invoices")).to_be_visible()
    first = page.locator("#orders-table tbody tr").first
    expect(first).to_have_attribute("data-order-id", order_id)
    expect(first).to_contain_text("$1,234.50")
    expect(first).to_contain_text("paid", timeout=60_000)
    orders = stack.api("/api/v1/orders").json()["orders"]
    assert orders[0]["order_id"] == order_id
    assert orders[0]["payment_status"] == "paid"
    shoot(page, "orders")

    link = first.get_by_role("link", name=re.compile("Download invoice"))
    with page.expect_download() as info:
        link.click()
    pdf = Path(info.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert order_id in text
    assert "1,234.50" in text or "1234.50" in text
    assert orders[0]["invoice_id"] in text

    page.set_viewport_size(PHONE)
    shoot(page, "orders-phone")


def test_a_lower_plan_is_scheduled_and_shown_as_a_notice(
    admin_page: Page, stack: Stack, shoot: Callable[..., Path]
) -> None:
    page = admin_page
    app = "app-00-2"
    current = next(a for a in stack.api("/api/v1/apps").json()["apps"] if a["app_id"] == app)
    open_plans(page, stack)
    row, dialog = open_manage(page, app)
    options = dialog.get_by_label("Plan", exact=True).locator("option").evaluate_all("os => os.map(o => o.value)")
    plans = page.evaluate("JSON.parse(document.getElementById('page-data').textContent).plans")
    rank = {p["name"]: p["rank"] for p in plans}
    lower = [name for name in options if rank[name] < rank.get(current["plan"], 10**6)]
    assert lower, f"the catalogue has a plan below {current['plan']}: {plans}"
    dialog.get_by_label("Plan", exact=True).select_option(lower[0])
    dialog.get_by_role("button", name="Change plan").click()
    expect(dialog.locator("#plan-result")).to_contain_text(f"Plan {lower[0]} requested")
    page.keyboard.press("Escape")
    info = row.get_by_role("button", name=re.compile("^Notices for"))
    expect(info).not_to_have_accessible_name(re.compile(r"\(0\)"), timeout=60_000)
    info.hover()
    tooltip = row.get_by_role("tooltip")
    expect(tooltip).to_be_visible()
    notice = tooltip.locator('[data-notice="scheduled_downgrade"]')
    expect(notice).to_contain_text("Scheduled downgrade")
    expect(notice).to_contain_text(f"Moves to the {lower[0]} plan on")
    expect(row.locator('[data-field="plan"]')).to_have_text(current["plan"])  # not yet: at the period's end
    shoot(page, "plans-notice", full_page=False)


def test_an_extension_request_is_shown_as_a_notice(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    app = "app-00-2"  # on a plan with a term
    open_plans(page, stack)
    row, dialog = open_manage(page, app)
    dialog.get_by_label("Days", exact=True).fill("21")
    dialog.get_by_label("Reason", exact=True).fill("Waiting for the annual contract")
    dialog.get_by_role("button", name="Request extension").click()
    expect(dialog.locator("#extension-result")).to_contain_text("Extension of 21 days requested")
    page.keyboard.press("Escape")
    notice = row.locator('[data-notice="extension_pending"]')  # in the DOM once the processor applied it
    expect(notice).to_contain_text("An extension of 21 days is waiting for approval", timeout=60_000)
    row.get_by_role("button", name=re.compile("^Notices for")).focus()
    expect(row.get_by_role("tooltip")).to_contain_text("Extension requested")


def test_the_row_menu_changes_the_owner(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    app = "app-00-1"
    open_plans(page, stack)
    row = app_row(page, app)
    row.get_by_role("button", name="…").click()
    row.get_by_role("menuitem", name="Change owner").click()
    dialog = page.get_by_role("dialog", name=f"Change owner of {app}")
    dialog.get_by_label("New owner (user id)").fill("grace")
    dialog.get_by_role("button", name="Change owner").click()
    expect(dialog.locator("#owner-result")).to_contain_text("grace")
    page.keyboard.press("Escape")
    expect(row.locator('[data-field="owner"]')).to_have_text("grace", timeout=60_000)
    assert next(a for a in stack.api("/api/v1/apps").json()["apps"] if a["app_id"] == app)["owner"] == "grace"


def test_plans_page_at_phone_width(admin_page: Page, stack: Stack, shoot: Callable[..., Path]) -> None:
    page = admin_page
    page.set_viewport_size(PHONE)
    open_plans(page, stack)
    shoot(page, "plans-phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page scrolls sideways at phone width"


def test_the_orders_page_loads_more_orders_a_page_at_a_time(admin_page: Page, stack: Stack) -> None:
    """The API answers a page of orders and a `next` link; the page shows the first and adds the next ones on
    "Load more orders". (The page's first request is given limit=1 here, so two orders make two pages.)"""
    for amount in ("11.00", "12.00"):
        answer = stack.post("/api/v1/apps/app-00-1/funds", {"amount": amount, "payment_method": "transfer"})
        assert answer.status_code == 202, answer.text
    wait_until(lambda: len(stack.api("/api/v1/orders").json()["orders"]) >= 2, 60, "two orders")
    everything = [o["order_id"] for o in stack.api("/api/v1/orders?limit=1000").json()["orders"]]
    page = admin_page
    page.route(re.compile(r".*/api/v1/orders$"), lambda route: route.continue_(url=route.request.url + "?limit=1"))
    page.goto(f"{stack.url}/console/orders")
    rows = page.locator("#orders-table tbody tr")
    expect(rows).to_have_count(1)
    more = page.get_by_role("button", name="Load more orders")
    for shown in range(2, len(everything) + 1):
        more.click()
        expect(rows).to_have_count(shown)
    expect(more).to_be_hidden()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.orderId)") == everything
