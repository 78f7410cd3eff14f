"""/console/usage in Chromium: what an admin sees equals what the API answers, for every control.

- each range button (24 hours, 7 days, 30 days, 3 months), for all apps and for one app: the
  table's rows (period and the raw number in each cell's ``data-value``) equal ``/api/v1/usage``'s
  series, and the formatted text is the number with thousands separators;
- hovering a point of the graph (a real mouse move over the canvas) shows the HTML tooltip
  (``role="tooltip"``) with that point's date, Sessions, Voice sessions and Agents;
- Custom with From/To dates in a half-hour zone (Asia/Kolkata) by day and by week;
- Export CSV downloads exactly ``/api/v1/usage.csv``; Export sessions downloads ``/api/v1/sessions.csv``;
- the graph is reachable by keyboard (arrow keys walk the periods with the same tooltip);
- screenshots at laptop and phone width.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.browser import PHONE
from tests.browser.conftest import Stack

pytestmark = pytest.mark.integration

RANGES = {"24 hours": "24h", "7 days": "7d", "30 days": "30d", "3 months": "3m"}
METRICS = ("billing_sessions", "usage_sessions", "voice_sessions", "alert_sessions", "agents", "active_agents")


def open_usage(page: Page, stack: Stack, query: str = "") -> None:
    page.goto(f"{stack.url}/console/usage{query}")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    wait_loaded(page)


def wait_loaded(page: Page) -> None:
    """Until the page drew its latest answer (the script marks the body when it has)."""
    # (selectors, not wait_for_function: the page's CSP refuses the eval that one needs)
    page.locator("body[data-loaded]:not([aria-busy])").wait_for(state="attached")


def table_rows(page: Page) -> list[list[str]]:
    """Each body row as [period, raw numbers...], read from the data-value attributes."""
    return page.eval_on_selector_all(
        "#usage-table tbody tr",
        "rows => rows.map(r => [...r.children].map(c => c.dataset.value))",
    )


def table_texts(page: Page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#usage-table tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent.trim()))"
    )


def as_rows(series: list[dict[str, Any]]) -> list[list[str]]:
    return [[p["period"], *(str(p[m]) for m in METRICS)] for p in series]


def click_and_wait(page: Page, name: str) -> None:
    before = page.evaluate("document.body.dataset.loaded")
    page.get_by_role("button", name=name, exact=True).click()
    page.locator(f'body[data-loaded]:not([data-loaded="{before}"]):not([aria-busy])').wait_for(state="attached")


def select_and_wait(page: Page, label: str, value: str) -> None:
    before = page.evaluate("document.body.dataset.loaded")
    page.get_by_label(label, exact=True).select_option(value)
    page.locator(f'body[data-loaded]:not([data-loaded="{before}"]):not([aria-busy])').wait_for(state="attached")


@pytest.mark.parametrize("app", ["", "app-00-0"], ids=["all-apps", "one-app"])
def test_each_range_button_shows_the_api_series_in_the_table(admin_page: Page, stack: Stack, app: str) -> None:
    page = admin_page
    open_usage(page, stack)
    page.get_by_role("button", name="Table", exact=True).click()
    expect(page.locator("#usage-table")).to_be_visible()
    if app:
        select_and_wait(page, "App", app)
    for label, code in RANGES.items():
        click_and_wait(page, label)
        expect(page.get_by_role("button", name=label, exact=True)).to_have_attribute("aria-pressed", "true")
        query = f"range={code}&timezone=UTC" + (f"&app={app}" if app else "")
        answer = stack.api(f"/api/v1/usage?{query}").json()
        assert table_rows(page) == as_rows(answer["series"]), f"{label}, app {app or 'all'}"
        assert answer["totals"]["billing_sessions"] > 0, f"{label}: the range holds traffic"
        totals = page.eval_on_selector_all("#usage-table tfoot td[data-value]", "cs => cs.map(c => c.dataset.value)")
        assert totals == [str(answer["totals"][m]) for m in METRICS]
        for row, point in zip(table_texts(page), answer["series"], strict=True):
            assert row[1:] == [f"{point[m]:,}" for m in METRICS]  # thousands separators, as people read them


def hover_point(page: Page, index: int) -> None:
    """A real mouse move onto the ``index``-th period of the graph."""
    box = page.locator("#chart").bounding_box()
    assert box is not None
    x, y = page.evaluate(
        """i => { const c = Chart.getChart('chart'); const bar = c.getDatasetMeta(0).data[i];
                  return [bar.x, (c.chartArea.top + c.chartArea.bottom) / 2]; }""",
        index,
    )
    page.mouse.move(box["x"] + x, box["y"] + y)


def tooltip_numbers(page: Page) -> dict[str, str]:
    tooltip = page.get_by_role("tooltip")
    expect(tooltip).to_be_visible()
    terms = tooltip.locator("dt").all_inner_texts()
    values = tooltip.locator("dd").evaluate_all("ds => ds.map(d => d.dataset.value)")
    return dict(zip(terms, values, strict=True))


def test_hovering_a_point_shows_its_numbers_in_a_tooltip(
    admin_page: Page, stack: Stack, shoot: Callable[..., Path]
) -> None:
    page = admin_page
    open_usage(page, stack, "?range=30d")
    answer = stack.api("/api/v1/usage?range=30d&timezone=UTC").json()
    series = answer["series"]
    busiest = max(range(len(series)), key=lambda i: series[i]["billing_sessions"])
    for index in (busiest, 0, len(series) - 1):
        hover_point(page, index)
        point = series[index]
        tooltip = page.get_by_role("tooltip")
        expect(tooltip.locator("[data-period]")).to_have_attribute("data-period", point["period"])
        numbers = tooltip_numbers(page)
        assert numbers["Sessions"] == str(point["billing_sessions"])
        assert numbers["Voice sessions"] == str(point["voice_sessions"])
        assert numbers["Agents"] == str(point["agents"])
        assert numbers["Usage sessions"] == str(point["usage_sessions"])
        if index == busiest:
            shoot(page, "usage-graph-tooltip")
    page.mouse.move(2, 2)
    expect(page.get_by_role("tooltip")).to_be_hidden()


def test_the_graph_answers_the_keyboard(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    open_usage(page, stack, "?range=7d")
    series = stack.api("/api/v1/usage?range=7d&timezone=UTC").json()["series"]
    page.locator("#chart").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tooltip").locator("[data-period]")).to_have_attribute("data-period", series[1]["period"])
    page.keyboard.press("End")
    expect(page.get_by_role("tooltip").locator("[data-period]")).to_have_attribute("data-period", series[-1]["period"])
    page.keyboard.press("Escape")
    expect(page.get_by_role("tooltip")).to_be_hidden()


def test_custom_dates_in_a_half_hour_zone(admin_page: Page, stack: Stack, shoot: Callable[..., Path]) -> None:
    page = admin_page
    open_usage(page, stack)
    select_and_wait(page, "Time zone", "Asia/Kolkata")
    page.get_by_role("button", name="Custom", exact=True).click()
    first = (stack.now.date() - timedelta(days=40)).isoformat()
    last = (stack.now.date() - timedelta(days=1)).isoformat()
    page.get_by_label("From", exact=True).fill(first)
    page.get_by_label("To", exact=True).fill(last)
    click_and_wait(page, "Apply")
    page.get_by_role("button", name="Table", exact=True).click()
    answer = stack.api(f"/api/v1/usage?from={first}&to={last}&by=day&timezone=Asia/Kolkata").json()
    assert answer["range"]["timezone"] == "Asia/Kolkata"
    assert table_rows(page) == as_rows(answer["series"])
    utc = stack.api(f"/api/v1/usage?from={first}&to={last}&by=day&timezone=UTC").json()
    assert answer["series"] != utc["series"], "days cut at +05:30 differ from UTC days on this traffic"
    select_and_wait(page, "Granularity", "week")
    weekly = stack.api(f"/api/v1/usage?from={first}&to={last}&by=week&timezone=Asia/Kolkata").json()
    assert table_rows(page) == as_rows(weekly["series"])
    shoot(page, "usage-custom-table")


def test_24_hours_by_hour_in_a_half_hour_zone(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    open_usage(page, stack, "?range=24h&timezone=Asia/Kolkata&view=table")
    answer = stack.api("/api/v1/usage?range=24h&by=hour&timezone=Asia/Kolkata").json()
    rows = table_rows(page)
    assert rows == as_rows(answer["series"])
    assert len(rows) == 24
    assert all(r[0].endswith("+05:30") for r in rows)
    expect(page.locator("#usage-table tbody tr").first.locator("th")).to_contain_text("(UTC+05:30)")


def download(page: Page, name: str) -> bytes:
    with page.expect_download() as info:
        page.get_by_role("link", name=name, exact=True).click()
    path = info.value.path()
    return Path(path).read_bytes()


def test_export_csv_downloads_the_api_csv(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    open_usage(page, stack, "?range=3m&app=app-00-1&timezone=Asia/Kolkata")
    got = download(page, "Export CSV")
    want = stack.api("/api/v1/usage.csv?app=app-00-1&range=3m&by=week&timezone=Asia/Kolkata")
    assert want.status_code == 200
    assert got == want.content
    assert got.decode().splitlines()[0] == "period," + ",".join(METRICS)
    assert len(got.decode().splitlines()) > 10


def test_export_sessions_downloads_the_billing_sessions(admin_page: Page, stack: Stack) -> None:
    page = admin_page
    open_usage(page, stack, "?range=7d")
    got = download(page, "Export sessions")
    answer = stack.api("/api/v1/usage?range=7d&timezone=UTC").json()
    first, last = answer["range"]["from"][:10], answer["range"]["to"][:10]
    want = stack.api(f"/api/v1/sessions.csv?from={first}&to={last}&timezone=UTC")
    assert got == want.content
    lines = got.decode().splitlines()
    assert lines[0].startswith("app_id,channel,user_id,billing_session_type,")
    totals = answer["totals"]
    assert len(lines) - 1 == totals["billing_sessions"] + totals["voice_sessions"]  # one row per session of any kind


def test_screenshots_at_laptop_and_phone_width(admin_page: Page, stack: Stack, shoot: Callable[..., Path]) -> None:
    page = admin_page
    open_usage(page, stack, "?range=30d")
    shoot(page, "usage-graph")
    page.get_by_role("button", name="Table", exact=True).click()
    shoot(page, "usage-table")
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name="Graph", exact=True).click()
    page.wait_for_timeout(300)  # the chart redraws on resize
    hover_point(page, 20)
    shoot(page, "usage-phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page scrolls sideways at phone width"
