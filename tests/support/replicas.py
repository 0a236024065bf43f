"""Control-plane replicas as processes of their own on one real etcd, a policy put on the
leader, and agent processes spending a fleet limit (tests.support.horizon_agent): the
start-up the real-process lease and probe tests share."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane


@dataclass(frozen=True, slots=True)
class Replicas:
    """Replicas by instance id: each one's process and address."""

    procs: dict[str, Proc]
    addresses: dict[str, str]
    etcd: str
    prefix: str

    def leader(self) -> str | None:
        """The instance id of the replica leading now, if any."""
        return leader_of(self.etcd, self.prefix)

    def wait_leader(self, name: str, timeout: float = 30.0) -> None:
        poll(lambda: self.leader() == name, timeout)


def start_replicas(
    etcd: str, prefix: str, spawned: list[Proc], names: Sequence[str], policy: policy_pb2.ServicePolicy
) -> Replicas:
    """Replicas ``names`` on ``etcd``: the first started alone and leading before the others
    start; then ``policy`` put on it. All processes go to ``spawned``."""
    procs, addresses = {}, {}
    for name in names:
        procs[name], addresses[name] = control_plane(etcd, prefix, "--instance-id", name)
        spawned.append(procs[name])
        if name == names[0] and len(names) > 1:
            poll(lambda: leader_of(etcd, prefix) == names[0])
    put_policy(addresses[names[0]], policy)
    return Replicas(procs, addresses, etcd, prefix)


def fleet_limit(
    service: str, limit: int, window: float, period: float, horizon: float | None = None
) -> policy_pb2.ServicePolicy:
    """A policy whose request limit the fleet shares, leased per ``period``."""
    fleet = policy_pb2.FleetLimits(rate_limit=True, lease_secs=period)
    if horizon is not None:
        fleet.unleased_secs = horizon
    return policy_pb2.ServicePolicy(
        service=service, rate_limit_requests=limit, rate_limit_window_secs=window, fleet=fleet
    )


def spending_agents(spawned: list[Proc], service: str, rate: float, *wanted: tuple[str, str]) -> list[Proc]:
    """Agent processes (id, the one address each knows) calling ``service`` at ``rate``,
    started at once; returned once each is connected and has admitted its first call."""
    procs = []
    for agent_id, address in wanted:
        args = [sys.executable, "-m", "tests.support.horizon_agent", agent_id, address, service, str(rate)]
        procs.append(Proc(args))
        spawned.append(procs[-1])
    for proc in procs:
        ready = proc.wait_for('{"ready"', timeout=60)
        assert '"ready": true' in ready, ready
    for proc in procs:  # every agent holds a lease (else it spends nothing when cut off)
        proc.wait_for('{"first"', timeout=30)
    return procs


def all_leased(address: str, service: str, agents: int, units: float, period: float) -> None:
    """Wait until the leader at ``address`` splits ``service``'s limit among ``agents`` with
    (all but one of) its ``units`` a period leased, then two periods more: every agent holds
    a lease of that split."""
    poll(lambda: (u := usage(address, service)) is not None and u.agents == agents and u.leased >= units - 1)
    time.sleep(2 * period)


def spent_for(window: float, agents: Mapping[str, Proc]) -> dict[str, dict]:  # type: ignore[type-arg]
    """Let ``agents`` (by name) spend ``window`` seconds more, then stop them all: what each
    admitted and refused, by name."""
    time.sleep(window)
    return dict(zip(agents, stop_agents(list(agents.values())), strict=True))


def assert_window_bound(
    results: Mapping[str, dict],  # type: ignore[type-arg]
    window: float,
    limit: int,
    units: float,
    shown: str,
) -> None:
    """I4: the calls all agents admitted in any ``window`` seconds are at most the ``limit``
    plus one period's ``units``."""
    worst = worst_window([t for r in results.values() for t in r["admitted"]], window)
    assert worst <= limit + units, (
        f"{worst} admitted in one {window} s window (limit {limit} + {units:g})\n{shown}"
    )


def stop_agents(procs: Sequence[Proc]) -> list[dict]:  # type: ignore[type-arg]
    """Tell every agent to stop at once; what each admitted and refused (horizon_agent's answer)."""
    for proc in procs:
        proc.send("stop")
    return [json.loads(proc.wait_for('{"admitted"', timeout=30)) for proc in procs]


def usage(address: str, service: str) -> pb.FleetLimitUsage | None:
    """The fleet limit's figures for ``service`` as the replica at ``address`` shows them."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        found = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    return next((u for u in found if u.service == service), None)


def wait_usage(
    address: str, service: str, check: Callable[[pb.FleetLimitUsage], bool], timeout: float = 30.0
) -> pb.FleetLimitUsage:
    """Poll until the replica at ``address`` shows figures for ``service`` that ``check``
    holds for; returns them."""

    def found() -> pb.FleetLimitUsage | None:
        figures = usage(address, service)
        return figures if figures is not None and check(figures) else None

    figures = poll(found, timeout)
    assert figures is not None
    return figures


def per_second(
    results: Mapping[str, dict],  # type: ignore[type-arg]
    events: Mapping[str, float],
    cut_off: bool = False,
) -> str:
    """What each agent admitted per second (with ``cut_off``, and in which seconds it
    refused for want of a lease), from the first admitted call, after the ``events`` (name:
    when): shown with the figures."""
    start = min(t for r in results.values() for t in r["admitted"])
    lines = [" ".join(f"{name}@{at - start:.1f}" for name, at in events.items())]
    for name, got in results.items():
        counts = [0] * (int(max(events.values()) - start) + 6)
        for t in got["admitted"]:
            if int(t - start) < len(counts):
                counts[int(t - start)] += 1
        line = f"{name}: {counts}"
        if cut_off:
            line += f" cut off in seconds {sorted({int(t - start) for t in got['cut_off']})}"
        lines.append(line)
    return "\n".join(lines)


def worst_window(times: list[float], window: float) -> int:
    """The most of ``times`` in any ``window`` seconds."""
    times, worst, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def connected_agents(address: str) -> int:
    """How many agent processes (follower relays included) have a stream to the replica at
    ``address``."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.connected_agents
