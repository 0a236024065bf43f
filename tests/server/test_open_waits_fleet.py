"""The exponential wait in the OPEN state is the fleet's: real etcd, a control plane process,
a failing upstream and two agent processes. A probe of agent A fails, then one of agent B:
each opens the breaker for longer, up to the longest wait, in both agents' views and in
etcd; once a probe succeeds, the next OPEN waits the first wait again."""

from __future__ import annotations

import json
from typing import Any

from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.fleets import fleet_of_two
from tests.support.polling import poll
from tests.support.procs import Proc
from tests.support.upstream import set_mode

SERVICE = "llm_provider"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=1,
    success_threshold=1,
    max_retries=0,
    wait_duration_secs=0.6,
    wait_duration_multiplier=4,
    max_wait_duration_secs=5,  # waits 0.6 s, 2.4 s, then 5 s (9.6 capped)
    rate_limit_requests=10**6,
)


def state(proc: Proc) -> dict[str, Any]:
    return proc.ask("state")


def reopened(procs: list[Proc], after: int) -> list[dict[str, Any]]:
    """Each agent's view once it holds an OPEN of a later generation than ``after``."""

    def seen(proc: Proc) -> dict[str, Any] | None:
        view = state(proc)
        return view if view["state"] == "OPEN" and view["generation"] > after else None

    return [poll(lambda p=proc: seen(p)) for proc in procs]  # type: ignore[misc]


def probe_fails(proc: Proc) -> None:
    """Waits for HALF_OPEN, then calls until its probe has reached the upstream."""
    assert proc.ask("until_state HALF_OPEN")["state"] == "HALF_OPEN"
    poll(lambda: "LLMProviderUnavailable" in proc.ask("pace 0.2 0.01")["outcomes"])


def stored(etcd: str, prefix: str) -> dict[str, Any]:
    value = etcdctl(etcd, "get", f"{prefix}/breakers/{SERVICE}", "--print-value-only")
    return json.loads(value) if value else {}


def stored_wait(etcd: str, prefix: str) -> str:
    return str(stored(etcd, prefix).get("open_remaining", ""))


def stored_wait_of(etcd: str, prefix: str, generation: int) -> str:
    """The whole wait of the OPEN of ``generation`` (or of a later HALF_OPEN, which keeps
    it) as stored: its expiry less its opening, whenever it is read (the time left at a
    read on a loaded machine may be anything below it)."""
    record = poll(lambda: (r := stored(etcd, prefix)) and int(r.get("generation", 0)) >= generation and r)
    assert int(record["generation"]) <= generation + 1, record  # no later OPEN
    return str(record["open_remaining"])


def test_each_failed_probe_opens_the_fleet_breaker_longer_for_every_agent(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    fleet = fleet_of_two(etcd_server.endpoint, prefix, spawned, POLICY, ("agent-a", "agent-b"))
    a, b = fleet.agents
    upstream = fleet.upstream
    set_mode(upstream, "fail")

    a.ask("call 1")
    first = reopened([a, b], 0)
    assert all(view["open_left"] <= 0.6 for view in first), first
    probe_fails(a)
    second = reopened([a, b], first[0]["generation"])
    assert all(view["open_left"] <= 2.4 for view in second), second
    assert stored_wait_of(etcd_server.endpoint, prefix, second[0]["generation"]) == "2.400s"
    probe_fails(b)  # another agent's probe: the fleet's wait grows on
    third = reopened([a, b], second[1]["generation"])
    assert all(view["open_left"] <= 5.0 for view in third), third
    assert stored_wait_of(etcd_server.endpoint, prefix, third[0]["generation"]) == "5s"
    poll(lambda: stored_wait(etcd_server.endpoint, prefix) == "5s")  # a restart keeps it

    set_mode(upstream, "ok")
    assert a.ask("until_state HALF_OPEN")["state"] == "HALF_OPEN"
    poll(lambda: "ok" in a.ask("pace 0.2 0.01")["outcomes"])
    poll(lambda: state(b)["state"] == "CLOSED")
    set_mode(upstream, "fail")
    b.ask("call 1")
    again = reopened([a, b], third[0]["generation"])
    assert all(view["open_left"] <= 0.6 for view in again), again  # closing started over
