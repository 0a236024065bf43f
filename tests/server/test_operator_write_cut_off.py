"""An operator's write through a FOLLOWER, which the leader (cut off from etcd) never saw,
holds for the follower's agents once etcd goes away for the follower too, with real
processes: a real etcd, two control planes each reaching it through a TCP proxy of its own,
one agent process on the follower (its one address) calling a real upstream.

The breaker is stored (CLOSED, or FORCED_OPEN for the mirror case) and both replicas read
it. The leader's etcd link stops answering; the operator forces the breaker open (resets
it) through the follower, which stores it at a later revision and reads it; the follower's
etcd link stops too, before the leader's lease could lapse. Both replicas rest on the same
etcd history (``server/store_history.py``), so the follower keeps telling its agents the
later revision, its own (``server/leader_states.py``). Before: once the follower found etcd
away (~2.5 s after the cut) its agents were told the leader's older state for the whole
outage — the forced-open service called (9 of 9 runs), the reset one rejected.

The agent's own counts are the clock: the outcome is taken once it has made ``MORE`` calls
since the follower reported etcd away (NOT_SERVING)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import SERVICE_NAME
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy, proxy_in_thread

SERVICE = "operated"
#: (a request limit no agent reaches: every refusal is the breaker's)
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, timeout_secs=3.0, rate_limit_requests=1_000_000, rate_limit_window_secs=1.0
)
#: Calls the follower's agent makes after the follower reported etcd away (each refused one
#: waits 50 ms, each served one takes the upstream's 50 ms): seconds past the ~2.5 s at
#: which its agents were told the leader's state before.
MORE = 100
REFUSED = "CircuitBreakerOpen"  # the agent's outcome of a call its breaker refused
STATE = {pb.BREAKER_STATE_CLOSED: "CLOSED", pb.BREAKER_STATE_FORCED_OPEN: "FORCED_OPEN"}


def set_state(address: str, state: int) -> pb.Breaker:
    request = pb.SetBreakerStateRequest(name=SERVICE, state=state, reason="INC-7 drill")
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(request, timeout=30).breaker


def held(address: str) -> pb.Breaker:
    """The replica's breaker (empty while it holds none: not loaded yet)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        try:
            return stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=10).breaker
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            return pb.Breaker()


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        check = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    return bool(check.status == health_pb2.HealthCheckResponse.SERVING)


Link = tuple[PausableProxy, asyncio.AbstractEventLoop]


def do(link: Link, *steps: str) -> None:
    """Take ``steps`` (PausableProxy methods) on ``link``'s proxy, on its loop, now."""
    proxy, loop = link

    async def take() -> None:
        for step in steps:
            getattr(proxy, step)()

    asyncio.run_coroutine_threadsafe(take(), loop).result(10)


@pytest.fixture
def links() -> Iterator[tuple[Link, Link]]:
    """Each replica's link to etcd: (the leader's, the follower's), flowing again on the
    test's way out."""
    with proxy_in_thread() as lead, proxy_in_thread() as follow:
        try:
            yield lead, follow
        finally:
            do(lead, "resume", "release_answers")
            do(follow, "resume")


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("leaders", "operators"),
    [
        (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_FORCED_OPEN),
        (pb.BREAKER_STATE_FORCED_OPEN, pb.BREAKER_STATE_CLOSED),
    ],
    ids=["force-open", "reset"],
)
def test_an_operators_write_through_the_follower_holds_for_its_agents_once_etcd_is_away_for_both(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    links: tuple[Link, Link],
    leaders: int,
    operators: int,
) -> None:
    lead_link, follow_link = links
    endpoint = etcd_server.endpoint
    lead_link[0].target = follow_link[0].target = endpoint
    with ProbeUpstream(0.05) as upstream:
        leader, lead_at = control_plane(lead_link[0].address, prefix, "--instance-id", "lead")
        spawned.append(leader)
        poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
        follower, follow_at = control_plane(follow_link[0].address, prefix, "--instance-id", "follow")
        spawned.append(follower)
        put_policy(lead_at, POLICY)
        stored_at = set_state(lead_at, leaders).revision  # both replicas read it
        poll(lambda: held(follow_at).revision == stored_at and held(lead_at).revision == stored_at, 30)
        (agent,) = start_probers(spawned, ["agent"], follow_at, upstream.address, SERVICE, 1)
        poll(lambda: agent.ask("state")["state"] == STATE[leaders], 30)

        # the leader stops hearing etcd (its requests still go: its lease stays fresh there)
        do(lead_link, "hold_answers")
        written = set_state(follow_at, operators)  # the operator, through the follower
        do(follow_link, "pause")  # then the follower's link stops too
        do(lead_link, "pause")
        assert written.revision > stored_at and held(follow_at).revision == written.revision
        poll(lambda: not serving(follow_at), 60)  # the follower found etcd away
        away = time.monotonic()
        before = agent.ask("outcomes")["outcomes"]
        shown = STATE[operators]

        def calls_since() -> tuple[int, int]:
            """(served by the upstream, refused by the agent's breaker) since the follower
            found etcd away."""
            now = agent.ask("outcomes")["outcomes"]
            served = sum(1 for c in upstream.calls() if c.agent == "agent" and c.start >= away)
            refused = now.get(REFUSED, 0) - before.get(REFUSED, 0)
            return served, refused

        try:
            poll(lambda: sum(calls_since()) >= MORE, 120)
        finally:
            counts, state = calls_since(), agent.ask("state")
        told = (
            f"served {counts[0]}, refused {counts[1]} since etcd was away for both; the agent holds "
            f"{state}; its outcomes {agent.ask('outcomes')['outcomes']}"
        )
        assert state["state"] == shown and state["connected"], told
        if operators == pb.BREAKER_STATE_FORCED_OPEN:
            assert counts[0] == 0, told
        else:
            assert counts[1] == 0, told
        print(told)

        do(follow_link, "resume")  # etcd back: everyone holds the operator's
        do(lead_link, "resume", "release_answers")
        poll(
            lambda: stored(endpoint, prefix, SERVICE).get("state", "BREAKER_STATE_CLOSED").endswith(shown), 60
        )
        poll(lambda: agent.ask("state")["state"] == shown, 60)
