"""A fleet HALF_OPEN stays in force when an agent's link breaks (fail static), with real
processes: one control plane on a real etcd, three agent processes calling a real upstream
that counts every call by kind. The breaker is HALF_OPEN with a fleet probe running when
the control plane is killed (SIGKILL): no agent sends an ordinary call, or a probe of its
own breaker, until its link has been down for the probe TTL plus the policy's timeout (the
old code: at once). The control plane is then started again on the same address: the
agents' snapshot brings the HALF_OPEN back, and only fleet probes run until it closes."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.probe_upstream import Call, ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane
from tests.support.replicas import start_replicas

SERVICE = "held"
BOUND = 2  # success_threshold
TIMEOUT = 3.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=3,
    success_threshold=BOUND,
    wait_duration_secs=2.0,
    timeout_secs=TIMEOUT,
)
#: How long an agent whose link broke keeps the fleet HALF_OPEN: the probe TTL (5 s, the
#: control plane's) plus the policy's timeout.
HOLD = 5.0 + TIMEOUT
DELAY = 1.0  # how long the healthy upstream takes to answer: probes overlap
AGENTS, THREADS = 3, 2


def not_fleet(calls: list[Call], after: float) -> list[Call]:
    return [c for c in calls if c.kind != "fleet" and c.start > after]


@pytest.mark.timeout(180)
def test_a_fleet_half_open_stays_in_force_after_the_link_breaks(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd = etcd_server.endpoint
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        fleet = start_replicas(etcd, prefix, spawned, ("r1",), POLICY)
        address = fleet.addresses["r1"]
        agents = start_probers(
            spawned, [f"held-{n}" for n in range(AGENTS)], address, upstream.address, SERVICE, THREADS
        )
        poll(lambda: stored(etcd, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: upstream.in_flight("fleet") >= 1, timeout=60)  # HALF_OPEN, a probe out
        killed = time.monotonic()
        fleet.procs["r1"].kill()
        # every agent's own breaker decides once its link has been down for HOLD
        poll(
            lambda: (
                {c.agent for c in not_fleet(upstream.calls(), killed)} == {f"held-{n}" for n in range(AGENTS)}
            ),
            90,
        )
        first = min(c.start for c in not_fleet(upstream.calls(), killed)) - killed
        assert first >= HOLD, f"a call other than a fleet probe {first:.2f} s after the kill (hold {HOLD} s)"
        # back on the same address: the snapshot's HALF_OPEN replaces what each agent decided
        spawned.append(control_plane(etcd, prefix, "--instance-id", "r1", "--listen", address)[0])
        for proc in agents:
            poll(lambda p=proc: p.ask("state")["connected"], 60)  # type: ignore[misc]
        back = time.monotonic()
        closed = poll(
            lambda: (s := stored(etcd, prefix, SERVICE)).get("state") == "BREAKER_STATE_CLOSED" and s, 90
        )
        for proc in agents:
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED")  # type: ignore[misc]
        calls = upstream.calls()
    closed_at = datetime.fromisoformat(closed["changed_at"]).timestamp() - time.time() + time.monotonic()
    probes = [c for c in calls if c.kind == "fleet"]
    late = [
        (c.agent, c.kind, round(c.start - back, 2)) for c in not_fleet(calls, back) if c.start < closed_at
    ]
    spans = [(c.agent, round(c.start - killed, 2), round(c.end - killed, 2)) for c in probes]
    shown = (
        f"fleet probes {len(probes)}, most at once {upstream.most('fleet')} {spans} (back at "
        f"{back - killed:.2f}, closed at {closed_at - killed:.2f}); other calls while back: {late}"
    )
    print(f"first other call {first:.2f} s after the kill; {shown}")
    assert closed_at > back, f"closed before the agents were back: {shown}"
    assert not late, shown
    # the restarted replica waits out the probes of the one before (I3; it once granted
    # beside them: 3 at once)
    assert upstream.most("fleet") <= BOUND, shown
