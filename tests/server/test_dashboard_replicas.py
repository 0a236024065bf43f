"""Several replicas, separate processes on one etcd: every replica's page lists the whole
fleet's agents with the replica each is connected to (this one marked) — in Chromium, in
``/api/state`` and in ``/api/events`` — a replica killed with SIGKILL takes its agents off
the others' pages when its lease expires, and garbage under the roster's prefix is ignored
and counted."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mission_control.server.etcd_process import EtcdProcess
from playwright.sync_api import Browser, expect

from tests.server.test_dashboard_browser import Plane, browser, open_page, start_plane  # noqa: F401
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, python


def state(plane: Plane) -> dict[str, Any]:
    with urllib.request.urlopen(plane.http + "/api/state", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def agents(picture: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """agent id -> (its replica, whether that is the replica showing it); a follower's relay
    to the leader is listed too, as a link, and left out here."""
    return {a["id"]: (a["replica"], a["this_replica"]) for a in picture["agents"] if not a.get("relay")}


def until(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds it took ``condition`` to hold (fails after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


def pushed_picture(plane: Plane, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first picture ``/api/events`` pushes that satisfies ``wanted``."""
    with urllib.request.urlopen(plane.http + "/api/events", timeout=30) as events:
        for line in events:
            if line.startswith(b"data: "):
                picture: dict[str, Any] = json.loads(line[6:])
                if wanted(picture):
                    return picture
    raise AssertionError("the event stream ended")


def test_every_replica_shows_the_fleet_and_loses_a_dead_replicas_agents(
    browser: Browser,  # noqa: F811
    etcd_server: EtcdProcess,
    prefix: str,
    tmp_path: Path,
    spawned: list[Proc],
) -> None:
    a = start_plane(etcd_server, prefix, tmp_path, spawned, "--instance-id", "rep-a")
    b = start_plane(etcd_server, prefix, tmp_path, spawned, "--instance-id", "rep-b")
    for plane, name in ((a, "agent-a"), (b, "agent-b")):
        crowd = python("tests.support.many_agents", plane.address, "1", name)
        spawned.append(crowd)
        assert json.loads(crowd.wait_for('{"connected"', timeout=60)) == {"connected": 1}
    fleet = {"agent-a-0000": "rep-a", "agent-b-0000": "rep-b"}
    for plane, me in ((a, "rep-a"), (b, "rep-b")):
        until(lambda: {k: r for k, (r, _) in agents(state(plane)).items()} == fleet)  # noqa: B023
        assert agents(state(plane)) == {k: (r, r == me) for k, r in fleet.items()}
    pushed = pushed_picture(b, lambda p: len(agents(p)) == 2)
    assert agents(pushed) == {"agent-a-0000": ("rep-a", False), "agent-b-0000": ("rep-b", True)}
    assert {r["id"]: r["agents"] for r in pushed["replicas"]} == {"rep-a": 1, "rep-b": 1}

    page, problems, _ = open_page(browser, a)
    rows = page.locator("#agents tbody tr")
    expect(rows.filter(has_text="agent-a-0000")).to_contain_text("rep-a (this replica)", timeout=15_000)
    expect(rows.filter(has_text="agent-b-0000")).to_contain_text("rep-b", timeout=15_000)
    assert "this replica" not in rows.filter(has_text="agent-b-0000").inner_text()
    expect(page.locator("#agents-connected")).to_have_text("2")

    etcdctl(etcd_server.endpoint, "put", f"{prefix}/fleet-agents/rep-x/0", "{not json")
    until(lambda: state(a)["roster_malformed"] == 1)
    assert set(agents(state(a))) == set(fleet)
    expect(page.locator("#replicas")).to_contain_text("1 malformed roster values ignored", timeout=15_000)
    with urllib.request.urlopen(a.http + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "mission_control_roster_malformed_total 1.0" in metrics
    assert 'mission_control_fleet_agents{replica="rep-b"} 1.0' in metrics

    b.proc.kill()  # SIGKILL: nothing is withdrawn, the lease runs out
    gone = until(lambda: set(agents(state(a))) == {"agent-a-0000"})
    print(f"\nrep-b's agent left rep-a's page {gone:.1f} s after rep-b was killed (lease TTL 5 s)")
    expect(rows.filter(has_text="agent-b-0000")).to_have_count(0, timeout=15_000)
    expect(rows.filter(has_text="agent-a-0000")).to_have_count(1)
    assert problems == []
