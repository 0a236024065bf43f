"""A recovered dependency is probed and closed promptly, by agents behind a follower replica.

Real etcd, a leader and a follower control plane and two agent processes, all connected to
the follower: their probe permits come from the leader through the follower's relay, and
can arrive before the follower pushes the HALF_OPEN state. The time from HALF_OPEN to
CLOSED is read from the control plane's own transition times and bounded in probe TTLs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import PROBE_TTL_SECS
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode

SERVICE = "llm_provider"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=3,
    success_threshold=3,
    wait_duration_secs=1.0,
    timeout_secs=3,
    max_retries=0,
)
ROUNDS = 3


def leader_of(etcd: str, prefix: str) -> str | None:
    result = subprocess.run(
        [
            shutil.which("etcdctl") or "etcdctl",
            f"--endpoints={etcd}",
            "get",
            f"{prefix}/leader",
            "--print-value-only",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        env={"ETCDCTL_API": "3"},
    )
    text = result.stdout.strip()
    return json.loads(text)["instance"] if text else None


class Transitions:
    """Every state change of the breaker as the leader reports it, with its own times."""

    def __init__(self, address: str) -> None:
        self.seen: list[tuple[int, float]] = []
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        self.call = stub.WatchBreakers(pb.WatchBreakersRequest(names=[SERVICE]))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                breaker = response.breaker
                if not self.seen or self.seen[-1][0] != breaker.state:
                    self.seen.append((breaker.state, breaker.changed_at.ToNanoseconds() / 1e9))
        except grpc.RpcError:
            pass

    def left_closed_after(self, count: int) -> bool:
        """Whether the breaker was anything but CLOSED after the first ``count`` entries."""
        return any(state != pb.BREAKER_STATE_CLOSED for state, _ in self.seen[count:])

    def closing_after(self, count: int) -> float | None:
        """Seconds from the last HALF_OPEN to CLOSED, once CLOSED follows ``count`` entries."""
        later = self.seen[count:]
        for i, (state, at) in enumerate(later):
            if state == pb.BREAKER_STATE_CLOSED and i > 0 and later[i - 1][0] == pb.BREAKER_STATE_HALF_OPEN:
                return at - later[i - 1][1]
        return None


def test_the_breaker_closes_within_a_probe_ttl_of_half_open(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    leader, leader_address = control_plane(etcd_server.endpoint, prefix, "--instance-id", "r1")
    spawned.append(leader)
    poll(lambda: leader_of(etcd_server.endpoint, prefix) == "r1")
    follower, follower_address = control_plane(etcd_server.endpoint, prefix, "--instance-id", "r2")
    upstream_proc = python("tests.support.upstream", "llm")
    spawned += [follower, upstream_proc]
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(leader_address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)
    agents = [agent(name, follower_address, upstream, SERVICE) for name in ("agent-a", "agent-b")]
    spawned += agents
    poll(lambda: all(a.ask("policy")["timeout_secs"] == POLICY.timeout_secs for a in agents))
    watch = Transitions(leader_address)
    closings: list[float] = []
    for _ in range(ROUNDS):
        before = len(watch.seen)
        set_mode(upstream, "fail", code="UNAVAILABLE")
        assert agents[0].ask("until_open")["first_rejection"] is not None
        # The upstream recovers only once the fleet breaker opened. In the first round no
        # agent knows a fleet state yet, so agent-a's own breaker stops it after its three
        # failures, and agent-b's calls go through: recovered at once, its successes could
        # reach the leader between agent-a's failure batches (slow to come under load) and
        # the fleet, seeing no three failures in a row, would rightly not open at all.
        poll(lambda before=before: watch.left_closed_after(before), timeout=60)
        set_mode(upstream, "ok")
        for a in agents:  # both keep calling through OPEN and HALF_OPEN
            a.lines.clear()
            a.send("pace 4 0.01")
        closed: Any = poll(lambda before=before: watch.closing_after(before), timeout=60)
        closings.append(closed)
        for a in agents:
            a.wait_for("{", timeout=60)
        poll(lambda: all(a.ask("state")["state"] == "CLOSED" for a in agents))
    watch.call.cancel()
    # with every permit either used or given back, three probes take well under one TTL
    assert all(seconds < PROBE_TTL_SECS for seconds in closings), closings
