"""Fail static across a restart without etcd, real processes: one control plane, three probe
agents, a fleet HALF_OPEN with its one probe at the upstream. etcd is paused and the control
plane killed (-9) and started again at once on its address: it has not read etcd, so it
knows nothing of the breaker. An agent that asks it for a probe permit must not be told
CLOSED ("no such breaker here") — that released the whole fleet onto the upstream beside
the predecessor's probe, 1.4-2.5 s after the kill, while etcd still held HALF_OPEN. It says
nothing until it has read etcd; the agents keep the HALF_OPEN they hold."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc

SERVICE = "heldp"
TIMEOUT = 40.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=1.0, timeout_secs=TIMEOUT
)
#: How long an agent holds the HALF_OPEN after its link broke: the probe TTL plus the
#: timeout (then its own breaker decides, as with no control plane at all). The restart
#: waits up to 10 s for etcd: the hold must outlast it and the window watched.
HOLD = 5.0 + TIMEOUT
DELAY = 12.0  # the predecessor's probe outlives the restart
WATCHED = 4.0  # after every agent is connected to the new process (the old code: < 2.5 s)


def serve(etcd: EtcdProcess, prefix: str, port: int) -> Proc:
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--etcd-prefix", prefix]
    proc = Proc([sys.executable, "-m", "mission_control.server.cli", *args, "--instance-id", "r1"])
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc


def connected(agents: list[Proc]) -> bool:
    return all(a.ask("state")["connected"] for a in agents)


@pytest.mark.timeout(240)
def test_a_control_plane_that_has_not_read_etcd_ends_no_hold(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        spawned.append(first := serve(etcd, prefix, port))
        put_policy(address, POLICY)
        agents = start_probers(spawned, [f"p-{n}" for n in range(3)], address, upstream.address, SERVICE, 2)
        poll(lambda: stored(etcd.endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: upstream.in_flight("fleet") >= 1, timeout=30)
        assert etcd.pid is not None
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            killed = time.monotonic()
            first.kill()
            spawned.append(serve(etcd, prefix, port))
            poll(lambda: connected(agents), timeout=30)
            # the agents keep asking for permits meanwhile (a refused call is tried again
            # 50 ms later); one answered CLOSED would call the upstream at once
            deadline = time.monotonic() + WATCHED
            others = 0
            while time.monotonic() < deadline and not others:
                others = upstream.in_flight("none") + upstream.in_flight("local")
                others += len([c for c in upstream.calls() if c.kind != "fleet" and c.start > killed])
                time.sleep(0.05)
            states = [a.ask("state") for a in agents]
            within = time.monotonic() - killed
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert within < HOLD, (
            f"watched until {within:.1f} s after the kill: past the hold, the test says nothing"
        )
        assert not others, upstream.calls()
        assert [s["state"] for s in states] == ["HALF_OPEN"] * 3, states
        assert upstream.most("fleet") == 1, upstream.calls()
