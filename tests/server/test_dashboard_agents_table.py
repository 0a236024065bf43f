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


SHOW_MANY = """([n, filter]) => {
  const p = JSON.parse(JSON.stringify(picture));
  p.agents = [...Array(n).keys()].map((i) => ({
    id: `agent-${String(i).padStart(5, "0")}`, replica: `rep-${"abc"[i % 3]}`, this_replica: i % 3 === 0,
    streams: 1, calls: i, failures: 0, rejected: 0,
  }));
  p.agents_total = n;
  p.by_agent = {};
  document.getElementById("agent-filter").value = filter;
  const start = performance.now();
  accept(JSON.stringify(p));
  const ms = performance.now() - start;
  const rows = document.querySelectorAll("#agents tbody tr");
  return [rows.length, rows[0].cells[0].textContent, document.getElementById("agents-more").textContent, ms];
}"""


def test_three_thousand_agents_draw_five_hundred_rows_and_the_filter_finds_the_rest(
    browser: Browser,  # noqa: F811
    plane: Plane,  # noqa: F811
) -> None:
    page = open_live(browser, plane)
    rows, first, more, ms = page.evaluate(SHOW_MANY, [3000, ""])
    assert (rows, first) == (500, "agent-00000")
    assert more.startswith("2500 more agents not shown")
    rows, first, more, _ = page.evaluate(SHOW_MANY, [3000, "agent-02999"])
    assert (rows, first, more) == (1, "agent-02999", "")
    rows, _, more, _ = page.evaluate(SHOW_MANY, [3000, "rep-b"])
    assert (rows, more) == (
        500,
        "500 more agents not shown: type in the filter to find one by agent or replica",
    )
    print(f"\nthe page drew a picture of 3,000 agents (500 rows) in {ms:.0f} ms")
