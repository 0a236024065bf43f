"""Recovery checks with real parts: a real etcd, a control plane process, an agent process
and a real gRPC upstream serving grpc.health.v1. An OPEN with a 30 s wait ends within a few
check intervals of the upstream's recovery; a health endpoint that says SERVING while every
call fails does not make the breaker flap at each check; an unreachable check target leaves
the OPEN to its wait. Only the leader checks, and a new leader takes the checks over."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_cli import cli
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, agent, control_plane
from tests.support.upstream import Upstream

SERVICE = "llm_provider"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def policy(target: str, wait: float, **fields: float) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=SERVICE,
        failure_threshold=1,
        success_threshold=1,
        max_retries=0,
        wait_duration_secs=wait,
        rate_limit_requests=10**6,
        recovery_check=policy_pb2.RecoveryCheckPolicy(target=target, interval_secs=0.1, timeout_secs=0.5),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, health.HealthServicer]]:
    """The Echo upstream with a health servicer in the same server, NOT_SERVING at first."""
    up = Upstream("llm")
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, up.server)
    servicer.set("", NOT_SERVING)
    with up:
        yield up, servicer


@dataclass
class Watch:
    """Every change of the service's breaker the control plane tells (WatchBreakers): its
    moves, not the same state pushed again. A state is pushed again, unchanged but for the
    revision it rests on, when the write of the one before it is seen stored after it was
    decided (a HALF_OPEN's write answered after its probe failed): on a loaded machine
    that came after about every other OPEN here, and counted as OPENs of their own those
    pushes read as a flap (two OPENs 0 s apart) that the breaker never made."""

    address: str
    seen: list[tuple[float, int, str]] = field(default_factory=list)
    #: when the control plane made each change (its changed_at), for the gaps between them
    made: list[tuple[float, int, str]] = field(default_factory=list)

    def start(self) -> Watch:
        self._channel = grpc.insecure_channel(self.address)
        stream = pb_grpc.ControlPlaneServiceStub(self._channel).WatchBreakers(
            pb.WatchBreakersRequest(names=[SERVICE])
        )
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        return self

    def _read(self, stream: Iterator[pb.WatchBreakersResponse]) -> None:
        try:
            last: tuple[int, int, int] | None = None
            for change in stream:
                breaker = change.breaker
                move = (breaker.state, breaker.generation, breaker.changed_at.ToNanoseconds())
                if move == last:
                    continue  # pushed again as it was (see the class's doc)
                last = move
                self.seen.append((time.monotonic(), breaker.state, breaker.reason))
                self.made.append((breaker.changed_at.ToNanoseconds() / 1e9, breaker.state, breaker.reason))
        except grpc.RpcError:
            pass

    def opens(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [c for c in self.seen if c[1] == pb.BREAKER_STATE_OPEN and c[0] >= since]

    def close(self) -> None:
        self._channel.close()


def stats(address: str) -> pb.ErrorStatistics:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10).statistics


@dataclass
class Fleet:
    """A test's fleet: its control planes (instance id -> process, address), the leader
    the policy was put to, the agent calling the upstream, and a watch on the leader."""

    planes: dict[str, tuple[Proc, str]]
    leader: str
    caller: Proc
    watch: Watch

    @property
    def address(self) -> str:
        return self.planes[self.leader][1]

    def other(self) -> str:
        return next(name for name in self.planes if name != self.leader)


Start = Callable[..., Fleet]


@pytest.fixture
def fleet(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    upstream: tuple[Upstream, health.HealthServicer],
) -> Iterator[Start]:
    """``start(rule, instances=("one",))``: control planes on the test's etcd (the policy
    put to the leader) and an agent calling the upstream, failing at first, with ``rule``
    in force; the watches are closed after the test."""
    up, _ = upstream
    up.set("fail")
    watches: list[Watch] = []

    def start(rule: policy_pb2.ServicePolicy, instances: tuple[str, ...] = ("one",)) -> Fleet:
        planes = {}
        for name in instances:
            plane, address = control_plane(etcd_server.endpoint, prefix, "--instance-id", name)
            spawned.append(plane)
            planes[name] = (plane, address)
        leader = poll(lambda: leader_of(etcd_server.endpoint, prefix)) or ""
        put_policy(planes[leader][1], rule)
        caller = agent("agent-a", ",".join(address for _, address in planes.values()), up.address, SERVICE)
        spawned.append(caller)
        poll(lambda: caller.ask("policy")["rate_limit_requests"] == rule.rate_limit_requests)
        watches.append(Watch(planes[leader][1]).start())
        return Fleet(planes, leader, caller, watches[-1])

    yield start
    for watch in watches:
        watch.close()


def opened(caller: Proc) -> dict[str, object]:
    assert caller.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}
    return poll(lambda: (view := caller.ask("state"))["state"] == "OPEN" and view)  # type: ignore[no-any-return]


def test_a_serving_check_ends_a_30_s_open_and_probes_close_it(
    fleet: Start, upstream: tuple[Upstream, health.HealthServicer]
) -> None:
    up, servicer = upstream
    started = fleet(policy(up.address, 30.0))
    address, caller, watch = started.address, started.caller, started.watch
    view = opened(caller)
    assert float(view["open_left"]) > 20  # type: ignore[arg-type]
    poll(lambda: stats(address).recovery_check_answers["NOT_SERVING"] >= 2)  # asked while down
    assert caller.ask("state")["state"] == "OPEN"

    up.set("ok")
    servicer.set("", SERVING)
    recovered = time.monotonic()
    # far within the 30 s wait: a few check intervals, with room for a loaded machine
    poll(lambda: caller.ask("state")["state"] != "OPEN", timeout=15)
    poll(lambda: "ok" in caller.ask("pace 0.2 0.02")["outcomes"], timeout=10)
    poll(lambda: caller.ask("state")["state"] == "CLOSED", timeout=10)
    # the watch hears of the CLOSED a moment after the agent may have
    poll(lambda: any(t >= recovered and s == pb.BREAKER_STATE_CLOSED for t, s, _ in watch.seen))
    states = [(s, r) for t, s, r in watch.seen if t >= recovered]
    assert states[0] == (pb.BREAKER_STATE_HALF_OPEN, f"recovery check: {up.address} SERVING"), states
    assert states[-1][0] == pb.BREAKER_STATE_CLOSED, states
    figures = stats(address)
    assert figures.recovery_check_half_opens == 1
    assert figures.recovery_checks_by_service[SERVICE] == sum(figures.recovery_check_answers.values())
    shown = cli("stats", server=address).stdout
    assert (
        "breakers moved to HALF_OPEN" in shown
        and f"{SERVICE}" in shown.split("recovery checks by service:")[1]
    )


def test_a_lying_health_endpoint_does_not_make_the_breaker_flap(
    fleet: Start, upstream: tuple[Upstream, health.HealthServicer]
) -> None:
    up, servicer = upstream
    servicer.set("", SERVING)  # says SERVING while every call fails
    rule = policy(up.address, 2.0, wait_duration_multiplier=1)  # every wait 2 s: held 1 s after a probe
    started = fleet(rule)
    address, caller, watch = started.address, started.caller, started.watch
    assert caller.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}
    # OPEN, or the HALF_OPEN a check moved it to: a check may end it before the agent sees it
    # OPEN, and a watch whose call the control plane took late hears the state it is in then
    poll(lambda: [c for c in watch.seen if c[1] != pb.BREAKER_STATE_CLOSED])
    begun = time.monotonic()
    caller.ask("pace 6 0.02")  # calls all along, so each HALF_OPEN's probe goes out and fails
    elapsed = time.monotonic() - begun
    opens = watch.opens(since=begun)
    # without the hold, an OPEN per check interval and probe (~0.1 s); with it, at most one
    # a second (the first half of each 2 s wait), plus the one in flight at each end
    assert len(opens) <= elapsed / 1.0 + 2, (len(opens), elapsed)
    checked = [
        r for _, s, r in watch.seen if s == pb.BREAKER_STATE_HALF_OPEN and r.startswith("recovery check")
    ]
    assert len(checked) >= 2, watch.seen  # the check did end OPENs (early), just not at every interval
    # as the control plane decided them: an OPEN after the failed probe of a HALF_OPEN a
    # check began is held for the first half of its wait (nothing moves it sooner). Not one
    # from CLOSED, nor one after a probe of a HALF_OPEN the wait began (the check did not lie:
    # on a loaded machine the checks came late once and the 2 s wait ended first, and a
    # check answered 2 ms into the OPEN that followed)
    held = [
        (later[0] - opened[0], opened[0])
        for before, opened, later in zip(watch.made, watch.made[1:], watch.made[2:], strict=False)
        if opened[1] == pb.BREAKER_STATE_OPEN
        and before[1] == pb.BREAKER_STATE_HALF_OPEN
        and before[2].startswith("recovery check")
    ]
    assert len(held) >= 1 and all(lasted >= 1.0 for lasted, _ in held), (held, watch.made)
    assert stats(address).recovery_check_half_opens >= 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_check_target_leaves_the_open_to_its_wait(
    fleet: Start, upstream: tuple[Upstream, health.HealthServicer]
) -> None:
    up, servicer = upstream
    nowhere = f"127.0.0.1:{free_port()}"
    started = fleet(policy(nowhere, 4.0))
    address, caller, watch = started.address, started.caller, started.watch
    opened(caller)
    up.set("ok")
    servicer.set("", SERVING)  # the upstream serves again, but the check cannot reach its target
    poll(lambda: caller.ask("state")["state"] != "OPEN", timeout=30)
    # the watch hears of it a moment after the agent may have
    half_open = poll(lambda: [r for _, s, r in watch.seen if s == pb.BREAKER_STATE_HALF_OPEN])
    assert half_open[:1] == ["wait elapsed"], watch.seen
    figures = stats(address)
    assert figures.recovery_check_half_opens == 0
    assert figures.recovery_check_answers["unreachable"] + figures.recovery_check_answers["timeout"] >= 2
    assert figures.recovery_check_answers["SERVING"] == 0


def test_only_the_leader_checks_and_a_new_leader_takes_the_checks_over(
    etcd_server: EtcdProcess, prefix: str, fleet: Start, upstream: tuple[Upstream, health.HealthServicer]
) -> None:
    up, servicer = upstream
    started = fleet(policy(up.address, 30.0), instances=("one", "two"))
    replicas, leader, follower, caller = started.planes, started.leader, started.other(), started.caller
    opened(caller)
    poll(lambda: stats(replicas[leader][1]).recovery_check_answers["NOT_SERVING"] >= 2)
    assert not stats(replicas[follower][1]).recovery_checks_by_service  # it follows: asks nothing

    replicas[leader][0].kill()
    poll(lambda: leader_of(etcd_server.endpoint, prefix) == follower, timeout=30)
    poll(lambda: stats(replicas[follower][1]).recovery_check_answers["NOT_SERVING"] >= 1, timeout=15)
    up.set("ok")
    servicer.set("", SERVING)
    poll(lambda: stats(replicas[follower][1]).recovery_check_half_opens == 1, timeout=15)
    poll(lambda: caller.ask("state")["state"] != "OPEN", timeout=15)  # within the 30 s wait
