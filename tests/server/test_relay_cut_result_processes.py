"""I3 and I5 when a follower takes a probe result while cut from the leader (real processes).

etcd; r1 leads (its address advertised through proxy P1, so the follower r2's link to it
goes through P1); r2; agent A on r2 through proxy P2 (later to r1). The policy lets one probe in
flight and closes on one success. A probes under the permit r1 granted through r2's relay;
as the probe starts, P1 is cut (no connection gets through). The probe succeeds and A's
batch with the result goes to r2, which takes it for the leader. Then P2 is cut and turned to r1:
A moves there and sends that batch again there. The permit is held under r2's relay, whose
stream to r1 is gone: A's result settles it and counts, and the breaker closes on that one
fleet probe, before r2 is heard again. Then either P1 lets r2 through again and r2 passes its
copy on (it settles nothing: the breaker stays CLOSED on one probe), or r2 is killed and never
passes it on.

Before, A's result was cut (the permit is the relay's); once r2 passed its copy on, r1
dropped it whole (a batch counted already), and with r2 killed nothing ever settled it: the
permit stayed held until its hold lapsed (TTL plus the policy's timeout) and the breaker
closed only after a second fleet probe.

Each step waits on what the processes show, not on time: the follower's dashboard counts
A's probe result before A moves (so the follower holds a copy), and the breaker's state in etcd.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane
from tests.support.replicas import connected_agents
from tests.support.tcp_pause import PausableProxy, proxy_in_thread

SERVICE = "relay-cut"
T, D = 10.0, 1.0  # a permit is held for the probe TTL (5 s) + T: the steps fit in it


def _serve(ep: str, prefix: str, name: str, *extra: str) -> tuple[Proc, str, str]:
    """A replica with its dashboard on: the process, its address and its dashboard's."""
    proc, address = control_plane(ep, prefix, "--instance-id", name, "--http", "127.0.0.1:0", *extra)
    http = proc.wait_for("mission-control: dashboard at ", timeout=30).split()[-1].rstrip("/")
    return proc, address, http


def _successes(http: str, agent: str) -> int:
    """The successful calls (probes included) of ``agent``'s batches the replica took, as its
    dashboard shows them (its per-agent activity)."""
    with urllib.request.urlopen(http + "/api/state", timeout=10) as response:
        row = json.loads(response.read())["by_agent"].get(agent, {})
    return int(row.get("calls", 0)) - int(row.get("failures", 0))


def _state_on(address: str) -> int:
    """The breaker's state as the replica at ``address`` holds it."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=5).breaker.state  # type: ignore[no-any-return]


def _move(proxy: PausableProxy, target: str | None) -> None:
    """Connections through ``proxy`` go to ``target`` (None: none gets through); those open
    are reset."""
    proxy.target = target
    proxy.cut()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fate", ["back", "killed"])
def test_a_result_a_cut_off_follower_took_counts_once_after_the_agent_resent_it(
    etcd_server, prefix, spawned: list[Proc], fate: str
) -> None:
    ep = etcd_server.endpoint
    pol = policy_pb2.ServicePolicy(
        service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=3.0, timeout_secs=T
    )
    with proxy_in_thread() as (p1, loop1), proxy_in_thread() as (p2, loop2), ProbeUpstream(D) as up:
        up.fail(True)
        r1, a1 = control_plane(ep, prefix, "--instance-id", "r1", "--advertise", p1.address)
        spawned.append(r1)
        p1.target = a1
        poll(lambda: leader_of(ep, prefix) == "r1")
        r2, a2, http2 = _serve(ep, prefix, "r2")
        spawned.append(r2)
        p2.target = a2
        put_policy(a1, pol)
        (agent,) = start_probers(spawned, ["A"], p2.address, up.address, SERVICE, 1)
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60)
        up.fail(False)
        poll(lambda: up.in_flight("fleet") == 1, 30)  # A probes under a permit relayed by r2
        loop1.call_soon_threadsafe(_move, p1, None)
        poll(lambda: any(c.kind == "fleet" for c in up.calls()), 10)  # it ended (a success)
        ended = up.calls()  # (a failing upstream records no call: these are A's successes)
        # A's batch with the result reached r2, which holds it for the leader
        poll(lambda: _successes(http2, "A") >= len(ended), 30)
        if fate == "killed":
            r2.kill()  # the result it took is never passed on
        loop2.call_soon_threadsafe(_move, p2, a1)
        poll(lambda: connected_agents(a1) == 1, 30)  # A on r1 (r2 cannot reach it): its batch again
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 40)
        if fate == "back":
            loop1.call_soon_threadsafe(setattr, p1, "target", a1)  # r2's relay gets through again
            poll(lambda: connected_agents(a1) == 2, 30)  # (A, and r2's relay, passing its copy on)
            assert _state_on(a1) == pb.BREAKER_STATE_CLOSED
        agent.send("stop")
        fleet = [(c.agent, round(c.end - c.start, 2)) for c in up.calls() if c.kind == "fleet"]
    assert len(fleet) == 1, f"fleet probes (agent, seconds): {fleet}"
