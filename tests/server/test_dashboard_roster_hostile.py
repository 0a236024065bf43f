"""Hostile values under the roster's prefix, against a real replica's page in Chromium: none
of them may stop the page, the roster or the replica's readiness — each is ignored, counted
and shown."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mission_control.server.etcd_process import EtcdProcess
from playwright.sync_api import Browser, expect

from tests.server.test_dashboard_browser import browser, open_page, start_plane  # noqa: F401
from tests.server.test_dashboard_replicas import agents, until
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, python


def strict_state(http: str) -> dict[str, Any]:
    """``/api/state`` read as a browser reads it: NaN or Infinity fail."""
    with urllib.request.urlopen(http + "/api/state", timeout=10) as response:
        return json.loads(response.read(), parse_constant=_refuse)  # type: ignore[no-any-return]


def _refuse(name: str) -> None:
    raise AssertionError(f"/api/state holds {name}: a page cannot parse it")


def shard(replica: str, since: str, agent: str = "ghost") -> str:
    return f'{{"replica":"{replica}","shard":0,"omitted":0,"agents":[{{"id":"{agent}","since":{since}}}]}}'


def ready(http: str) -> int:
    try:
        with urllib.request.urlopen(http + "/readyz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_hostile_roster_values_are_counted_and_the_page_stays_live(
    browser: Browser,  # noqa: F811
    etcd_server: EtcdProcess,
    prefix: str,
    tmp_path: Path,
    spawned: list[Proc],
) -> None:
    a = start_plane(etcd_server, prefix, tmp_path, spawned, "--instance-id", "rep-a")
    crowd = python("tests.support.many_agents", a.address, "1", "agent-a")
    spawned.append(crowd)
    assert json.loads(crowd.wait_for('{"connected"', timeout=60)) == {"connected": 1}
    lease = etcdctl(etcd_server.endpoint, "lease", "grant", "300").split()[1]
    roster = f"{prefix}/fleet-agents"
    for n, since in enumerate(("NaN", "Infinity", "-1e999")):
        etcdctl(
            etcd_server.endpoint, "put", f"--lease={lease}", f"{roster}/rep-x{n}/0", shard(f"rep-x{n}", since)
        )
    until(lambda: strict_state(a.http)["roster_malformed"] == 3)
    assert set(agents(strict_state(a.http))) == {"agent-a-0000"}

    page, problems, _ = open_page(browser, a)
    rows = page.locator("#agents tbody tr")
    expect(rows.filter(has_text="agent-a-0000")).to_contain_text("rep-a (this replica)", timeout=15_000)
    expect(page.locator("#replicas")).to_contain_text("3 malformed roster values ignored", timeout=15_000)
    assert rows.filter(has_text="ghost").count() == 0

    # A key that is not UTF-8 (etcdctl put $'.../evil\xff/0') is skipped and counted: the
    # state's watch and the roster's go on.
    etcdctl(etcd_server.endpoint, "put", f"{roster}/evil\udcff/0", "{}")
    until(lambda: any("evil" in e["key"] for e in strict_state(a.http)["statistics"]["config_errors"]))
    etcdctl(
        etcd_server.endpoint, "put", f"--lease={lease}", f"{roster}/rep-y/0", shard("rep-y", "1.5", "agent-y")
    )
    expect(rows.filter(has_text="agent-y")).to_contain_text("rep-y", timeout=15_000)
    a.force("after-the-bad-key", 4)
    expect(page.locator('#breakers tbody tr[data-breaker="after-the-bad-key"]')).to_have_count(
        1, timeout=15_000
    )
    assert ready(a.http) == 200
    assert problems == []
