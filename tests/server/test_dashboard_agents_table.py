"""The agents table in a real Chromium, fed pictures as ``/api/events`` delivers them: one row
per agent — an agent that reported here and moved to another replica is listed under that
replica only."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, Page, expect

from tests.server.test_dashboard_browser import Plane, browser, plane  # noqa: F401

ACTIVITY = {"calls": 5, "failures": 1, "rejected": 0, "fallbacks_served": 0, "fallbacks_failed": 0}

SHOW = """([agents, byAgent]) => {
  const p = JSON.parse(JSON.stringify(picture));
  p.agents = agents; p.by_agent = byAgent;
  accept(JSON.stringify(p));
  const rows = [...document.querySelectorAll("#agents tbody tr")];
  return rows.map((tr) => [...tr.cells].map((c) => c.textContent));
}"""


def shown(page: Page, agents: list[dict[str, Any]], by_agent: dict[str, Any]) -> list[list[str]]:
    """The agents table's cells once the page rendered this picture."""
    return page.evaluate(SHOW, [agents, by_agent])  # type: ignore[no-any-return]


def open_live(browser: Browser, plane: Plane) -> Page:  # noqa: F811
    page = browser.new_page(bypass_csp=True)  # to call the page's own render from the test
    page.goto(plane.http + "/")
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    return page


def test_an_agent_that_moved_to_another_replica_is_listed_once_there(
    browser: Browser,  # noqa: F811
    plane: Plane,  # noqa: F811
) -> None:
    page = open_live(browser, plane)
    moved = {"id": "agent-m", "replica": "rep-b", "this_replica": False, "streams": 1, **ACTIVITY}
    rows = shown(page, [moved], {"agent-m": ACTIVITY, "agent-gone": ACTIVITY})
    assert [(r[0], r[1], r[2]) for r in rows] == [("agent-m", "yes (1)", "rep-b"), ("agent-gone", "no", "")]
