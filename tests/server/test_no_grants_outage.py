"""A fleet HALF_OPEN nobody can grant for holds agents no longer than a lost link, with real
processes: one control plane on a real etcd of the test's own, two agent processes calling a
real upstream that counts every call by kind. The breaker is OPEN (the upstream failing) when
etcd stops answering (SIGSTOP); the upstream fails on until the leader's lease can no longer
be known to hold, then serves again. The leader goes HALF_OPEN from memory and can grant no
probe permit: it tells its agents so, and each holds the HALF_OPEN for the probe TTL plus the
policy's timeout, then its own breaker decides and its calls reach the upstream while etcd is
still away. The old code: connected, they held the fleet HALF_OPEN and refused every call
for the whole outage (and the probe TTL plus the timeout after it). etcd then answers again:
the breaker closes with no more than ``success_threshold`` fleet probes at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.probe_upstream import Call, ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc
from tests.support.replicas import start_replicas

SERVICE = "ungranted"
BOUND = 2  # success_threshold
TIMEOUT = 3.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=3,
    success_threshold=BOUND,
    wait_duration_secs=2.0,
    max_wait_duration_secs=2.0,
    timeout_secs=TIMEOUT,
)
#: How long an agent holds a HALF_OPEN it can get no permit for: the probe TTL (5 s, the
#: control plane's) plus the policy's timeout.
HOLD = 5.0 + TIMEOUT
#: The leader lease's TTL (the control plane's default): past it, and its margin, the
#: leader's lease is no longer known to hold.
LEASE_TTL = 3.0
AGENTS, THREADS = 2, 2
CALLS = 20  # served to each agent while etcd is away


def not_fleet(calls: list[Call], after: float) -> list[Call]:
    return [c for c in calls if c.kind != "fleet" and c.start > after]


def served_by(calls: list[Call], after: float, names: list[str]) -> list[int]:
    return [sum(1 for c in not_fleet(calls, after) if c.agent == n) for n in names]


@pytest.fixture
def paused(etcd: EtcdProcess) -> Iterator[list[bool]]:
    """etcd is resumed at the end whatever happened ([True] while paused)."""
    state = [False]
    yield state
    if state[0] and etcd.pid is not None:
        os.kill(etcd.pid, signal.SIGCONT)


@pytest.mark.timeout(240)
def test_agents_of_a_leader_that_cannot_grant_let_their_own_breaker_decide(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    endpoint = etcd.endpoint
    assert etcd.pid is not None
    names = [f"ungranted-{n}" for n in range(AGENTS)]
    with ProbeUpstream(0.05) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1",), POLICY)
        agents = start_probers(spawned, names, fleet.addresses["r1"], upstream.address, SERVICE, THREADS)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        os.kill(etcd.pid, signal.SIGSTOP)
        paused[0] = True
        stopped = time.monotonic()
        # failing on until no grant can come (a probe granted before would close it)
        time.sleep(LEASE_TTL + 1.0)
        upstream.fail(False)
        served = time.monotonic()
        # every agent's own breaker decides once the HALF_OPEN has been held for HOLD
        # (and goes on deciding: calls flow while etcd is away)
        poll(lambda: all(n >= CALLS for n in served_by(upstream.calls(), served, names)), 60)
        during = not_fleet(upstream.calls(), stopped)
        first = min(c.start for c in during) - stopped
        per_agent = {n: sum(1 for c in during if c.agent == n) for n in names}
        assert [a.ask("state")["connected"] for a in agents] == [True] * AGENTS  # not a lost link
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        back = time.monotonic()
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 90)
        for proc in agents:
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 60)  # type: ignore[misc]
        calls = upstream.calls()
    shown = (
        f"first call other than a fleet probe {first:.2f} s after etcd stopped, "
        f"{len(during)} while it was away {per_agent}; closed {time.monotonic() - back:.2f} s "
        f"after it came back; most fleet probes at once {upstream.most('fleet')}"
    )
    print(shown)
    # held as after a lost link: not before the hold, counted from no earlier than the pause
    assert first >= HOLD, shown
    assert upstream.most("fleet") <= BOUND, shown
    assert any(c.kind == "fleet" for c in calls if c.start > back), shown
