"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): it loads without
console errors, follows a breaker an agent process trips without a reload, lets an admin force
a breaker (etcd shows it) and refuses the same without a token, and stays usable at 200
breakers and 1,000 agents."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode

TOKEN = "browser-admin-token-5f1c0e"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is installed by `make test`"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


class Plane:
    def __init__(self, proc: Proc, address: str, http: str, etcd: EtcdProcess, prefix: str) -> None:
        self.proc, self.address, self.http, self.etcd, self.prefix = proc, address, http, etcd, prefix

    def etcd_get(self, key: str) -> str:
        endpoints = f"--endpoints={self.etcd.endpoint}"
        done = subprocess.run(
            ["etcdctl", endpoints, "get", f"{self.prefix}/{key}", "--print-value-only"],
            capture_output=True, text=True, timeout=30, check=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        )  # fmt: skip
        return done.stdout.strip()

    def put_policy(self, service: str) -> None:
        with grpc.insecure_channel(self.address) as channel:
            pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(
                pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service=service)),
                metadata=[("authorization", f"Bearer {TOKEN}")],
                timeout=10,
            )

    def force(self, name: str, state: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(
                pb.SetBreakerStateRequest(name=name, state=state, reason="set up by the test", create=True),
                metadata=[("authorization", f"Bearer {TOKEN}")],
                timeout=10,
            )


def start_plane(etcd: EtcdProcess, prefix: str, tmp_path: Path, spawned: list[Proc], *extra: str) -> Plane:
    tokens = tmp_path / "admins"
    tokens.write_text(TOKEN + "\n")
    proc, address = control_plane(
        etcd.endpoint, prefix, "--http", "127.0.0.1:0", "--admin-tokens-file", str(tokens),
        "--max-agents-per-peer", "2000", *extra,  # a crowd of agents from this one host
    )  # fmt: skip
    spawned.append(proc)
    http = proc.wait_for("mission-control: dashboard at ", timeout=30).split()[-1].rstrip("/")
    return Plane(proc, address, http, etcd, prefix)


@pytest.fixture
def plane(etcd_server: EtcdProcess, prefix: str, tmp_path: Path, spawned: list[Proc]) -> Plane:
    return start_plane(etcd_server, prefix, tmp_path, spawned)


def open_page(browser: Browser, plane: Plane) -> tuple[Page, list[str], list[str]]:
    page = browser.new_page()
    problems: list[str] = []
    navigations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None
    )
    page.goto(plane.http + "/")
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    return page, problems, navigations


def breaker_row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#breakers tbody tr[data-breaker="{name}"]')


def test_the_page_follows_a_trip_live_without_console_errors(
    browser: Browser, plane: Plane, spawned: list[Proc]
) -> None:
    upstream_proc = python("tests.support.upstream", "llm-upstream")
    spawned.append(upstream_proc)
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    a = agent("research-agent", plane.address, upstream, "llm_provider")
    spawned.append(a)
    page, problems, navigations = open_page(browser, plane)
    assert page.title() == "Mission Control"
    assert page.locator("#store").inner_text() == "etcd reachable"
    assert a.ask("call 1")["outcomes"] == {"ok": 1}
    expect(page.locator("#agents tbody")).to_contain_text("research-agent", timeout=15_000)
    set_mode(upstream, "taxonomy", text="LLMProviderUnavailable")
    tripped = a.ask("until_open")
    assert tripped["first_rejection"] is not None
    state = breaker_row(page, "llm_provider").locator("td.state")
    expect(state).to_have_text("OPEN", timeout=15_000)
    shown = time.time()
    lag = 1000 * (shown - tripped["first_rejection"])
    print(f"\nOPEN on the page {lag:.0f} ms after the agent's first rejection")
    expect(breaker_row(page, "llm_provider").locator("td.left")).not_to_be_empty()
    expect(page.locator("#timeline")).to_contain_text("llm_provider: CLOSED → OPEN")
    expect(page.locator("#services tbody")).to_contain_text("LLMProviderUnavailable")
    assert len(navigations) == 1, navigations  # no reload
    assert problems == []


def test_an_admin_forces_a_breaker_from_the_page_and_no_token_changes_nothing(
    browser: Browser, plane: Plane
) -> None:
    plane.put_policy("storage_backend")  # a name nothing knows is refused (a likely typo)
    page, problems, _ = open_page(browser, plane)
    page.fill("#action-breaker", "storage_backend")
    page.select_option("#action-kind", "force-open")
    page.fill("#action-reason", "disk maintenance")
    page.click("#action-submit")
    expect(page.locator("#action-result")).to_contain_text("an admin token is needed", timeout=10_000)
    assert plane.etcd_get("breakers/storage_backend") == ""
    assert breaker_row(page, "storage_backend").count() == 0

    page.fill("#action-token", TOKEN)
    page.click("#action-submit")
    expect(page.locator("#action-result")).to_have_text("storage_backend: done", timeout=10_000)
    stored = json.loads(plane.etcd_get("breakers/storage_backend"))
    assert "FORCED_OPEN" in json.dumps(stored) and "disk maintenance" in json.dumps(stored)
    state = breaker_row(page, "storage_backend").locator("td.state")
    expect(state).to_have_text("FORCED_OPEN", timeout=10_000)
    # the token is kept for the tab: the next action needs no typing
    page.fill("#action-token", "")
    page.select_option("#action-kind", "reset")
    page.click("#action-submit")
    expect(state).to_have_text("CLOSED", timeout=10_000)
    assert all("401" in p for p in problems), problems  # only the refused fetch, logged by Chromium


def test_usable_at_200_breakers_and_1000_agents(browser: Browser, plane: Plane, spawned: list[Proc]) -> None:
    for i in range(200):
        plane.force(f"svc-{i:03d}", pb.BREAKER_STATE_FORCED_CLOSED if i % 2 else pb.BREAKER_STATE_DISABLED)
    crowd = python("tests.support.many_agents", plane.address, "1000", "crowd")
    spawned.append(crowd)
    assert json.loads(crowd.wait_for('{"connected"', timeout=120)) == {"connected": 1000}
    page, problems, _ = open_page(browser, plane)
    expect(page.locator("#breakers tbody tr")).to_have_count(200, timeout=20_000)
    expect(page.locator("#agents tbody tr")).to_have_count(500, timeout=20_000)  # the rest: filtered
    expect(page.locator("#agents-more")).to_contain_text("500 more agents not shown")
    expect(page.locator("#agents-connected")).to_have_text("1000")
    page.fill("#agent-filter", "crowd-0999")
    expect(page.locator("#agents tbody tr")).to_have_count(1, timeout=5_000)
    # still responsive while it keeps receiving the whole picture every second
    page.fill("#breaker-filter", "svc-19")
    expect(page.locator("#breakers tbody tr")).to_have_count(10, timeout=5_000)
    version = int(page.locator("body").get_attribute("data-version") or "0")
    expect(page.locator("body")).not_to_have_attribute("data-version", str(version), timeout=10_000)
    render_ms = page.evaluate(
        """() => { const t0 = performance.now(); document.getElementById('breaker-filter')
                     .dispatchEvent(new Event('input')); return performance.now() - t0; }"""
    )
    print(f"\nfiltering 200 breakers took {render_ms:.1f} ms in the page")
    page.fill("#action-token", TOKEN)
    page.fill("#action-breaker", "svc-190")
    page.select_option("#action-kind", "force-open")
    page.fill("#action-reason", "drill")
    page.click("#action-submit")
    expect(breaker_row(page, "svc-190").locator("td.state")).to_have_text("FORCED_OPEN", timeout=10_000)
    assert problems == []
    crowd.popen.stdin.close()  # type: ignore[union-attr]
