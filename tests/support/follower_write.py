"""A leader and a follower, each reaching etcd through a pausable TCP proxy of its own, one
agent process on the follower calling a real upstream; and the flow in which an operator
writes the breaker through the follower while the leader hears nothing from etcd, then etcd
goes away for the follower too.

``start_pair`` starts them with the breaker stored in a given state and read by both
replicas and by the agent. ``write_and_cut_off`` takes the operator's write, runs an
optional step, cuts both links and returns what the agent did once the follower found etcd
away (``Outcome``); ``etcd_back`` lets both links flow again and waits for etcd and the
agent to hold the operator's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import SERVICE_NAME

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
#: The two cases, as (``leaders``, ``operators``): the state stored through the leader, and
#: the state the operator writes through the follower.
LEADERS_AND_OPERATORS = pytest.mark.parametrize(
    ("leaders", "operators"),
    [
        (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_FORCED_OPEN),
        (pb.BREAKER_STATE_FORCED_OPEN, pb.BREAKER_STATE_CLOSED),
    ],
    ids=["force-open", "reset"],
)


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


@dataclass(frozen=True)
class Pair:
    """The running leader and follower (their addresses), the agent on the follower, and
    the revision at which the breaker was stored and read by both."""

    lead_link: Link
    follow_link: Link
    endpoint: str
    prefix: str
    upstream: ProbeUpstream
    lead_at: str
    follow_at: str
    agent: Proc
    stored_at: int


def linked_pair(
    endpoint: str, prefix: str, spawned: list[Proc], links: tuple[Link, Link]
) -> tuple[tuple[Proc, str], tuple[Proc, str]]:
    """Point both links at ``endpoint``; start the leader ("lead") through the first, then,
    once it leads, the follower ("follow") through the second. Returns (the leader, its
    address), (the follower, its address)."""
    lead_link, follow_link = links
    lead_link[0].target = follow_link[0].target = endpoint
    leader, lead_at = control_plane(lead_link[0].address, prefix, "--instance-id", "lead")
    spawned.append(leader)
    poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
    follower, follow_at = control_plane(follow_link[0].address, prefix, "--instance-id", "follow")
    spawned.append(follower)
    return (leader, lead_at), (follower, follow_at)


def start_pair(
    endpoint: str,
    prefix: str,
    spawned: list[Proc],
    links: tuple[Link, Link],
    upstream: ProbeUpstream,
    leaders: int,
) -> Pair:
    """Point both links at ``endpoint``; start the leader ("lead"), then the follower
    ("follow"); store the policy and the breaker in state ``leaders`` through the leader;
    once both replicas read it, start the agent on the follower and wait until it holds it."""
    lead_link, follow_link = links
    (_, lead_at), (_, follow_at) = linked_pair(endpoint, prefix, spawned, links)
    put_policy(lead_at, POLICY)
    stored_at = set_state(lead_at, leaders).revision  # both replicas read it
    poll(lambda: held(follow_at).revision == stored_at and held(lead_at).revision == stored_at, 30)
    (agent,) = start_probers(spawned, ["agent"], follow_at, upstream.address, SERVICE, 1)
    poll(lambda: agent.ask("state")["state"] == STATE[leaders], 30)
    return Pair(lead_link, follow_link, endpoint, prefix, upstream, lead_at, follow_at, agent, stored_at)


@dataclass(frozen=True)
class Outcome:
    """What the follower's agent did once etcd was away for both replicas."""

    written: pb.Breaker  # the operator's write, as the follower stored it
    served: int  # calls the upstream served since the follower found etcd away
    refused: int  # calls the agent's breaker refused since then
    state: dict  # type: ignore[type-arg]  # the agent's "state" answer once MORE calls were made
    told: str  # all of it, for an assertion's message


def write_and_cut_off(pair: Pair, operators: int, between: Callable[[], None] | None = None) -> Outcome:
    """The leader stops hearing etcd (its requests still go: its lease stays fresh there); the
    operator sets ``operators`` through the follower; ``between`` runs; then the follower's
    link stops too, and the leader's. Once the follower reports etcd away (NOT_SERVING), the
    agent's own counts are the clock: the outcome is taken after ``MORE`` calls since."""
    agent, upstream = pair.agent, pair.upstream
    do(pair.lead_link, "hold_answers")
    written = set_state(pair.follow_at, operators)  # the operator, through the follower
    if between is not None:
        between()
    do(pair.follow_link, "pause")  # then the follower's link stops too
    do(pair.lead_link, "pause")
    assert written.revision > pair.stored_at and held(pair.follow_at).revision == written.revision
    poll(lambda: not serving(pair.follow_at), 60)  # the follower found etcd away
    away = time.monotonic()
    before = agent.ask("outcomes")["outcomes"]

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
    return Outcome(written, counts[0], counts[1], state, told)


def etcd_back(pair: Pair, shown: str) -> None:
    """Both links flow again: etcd stores, and the agent holds, state ``shown``."""
    do(pair.follow_link, "resume")
    do(pair.lead_link, "resume", "release_answers")
    poll(
        lambda: (
            stored(pair.endpoint, pair.prefix, SERVICE).get("state", "BREAKER_STATE_CLOSED").endswith(shown)
        ),
        60,
    )
    poll(lambda: pair.agent.ask("state")["state"] == shown, 60)
