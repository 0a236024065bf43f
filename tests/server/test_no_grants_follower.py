"""Agents connected to a FOLLOWER replica are held by the leader's rule while the leader can
grant no probe permit (``Breaker.no_grants``), with real processes: two control planes on a
real etcd of the test's own, two agent processes connected to the follower only, a real
upstream counting every call by kind. As in test_no_grants_outage: the breaker is OPEN (the
upstream failing) when etcd stops answering (SIGSTOP); the upstream fails on until the
leader's lease can no longer be known to hold, then serves again. The leader goes HALF_OPEN
from memory and can grant nothing; the follower, which learns states from etcd, still knows
the breaker as an OPEN whose wait is over. The leader's mark comes to it on its link and it
marks its own pushes: its agents hold for the probe TTL plus the timeout, then their own
breakers decide and their calls reach the upstream while etcd is still away. The old code:
the follower never marked, and its agents refused every call for the whole outage (30 s
paused: 0 calls served, ~1,000 refused per agent). etcd then answers again: the breaker
closes with no more than ``success_threshold`` fleet probes at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc
from tests.support.replicas import start_replicas

from .test_no_grants_outage import (
    BOUND,
    CALLS,
    HOLD,
    LEASE_TTL,
    POLICY,
    SERVICE,
    not_fleet,
    paused,
    served_by,
)

__all__ = ["paused"]  # the fixture, shared
AGENTS, THREADS = 2, 2


@pytest.mark.timeout(300)
def test_agents_of_a_follower_whose_leader_cannot_grant_let_their_own_breaker_decide(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    endpoint = etcd.endpoint
    assert etcd.pid is not None
    names = [f"follower-agent-{n}" for n in range(AGENTS)]
    with ProbeUpstream(0.05) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), POLICY)
        agents = start_probers(spawned, names, fleet.addresses["r2"], upstream.address, SERVICE, THREADS)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        assert fleet.leader() == "r1"
        os.kill(etcd.pid, signal.SIGSTOP)
        paused[0] = True
        stopped = time.monotonic()
        # failing on until no grant can come (a probe granted before would close it)
        time.sleep(LEASE_TTL + 1.0)
        upstream.fail(False)
        served = time.monotonic()
        try:
            poll(lambda: all(n >= CALLS for n in served_by(upstream.calls(), served, names)), 60)
        except AssertionError:
            counts = served_by(upstream.calls(), served, names)
            refused = [a.ask("outcomes")["outcomes"] for a in agents]
            raise AssertionError(
                f"served to each agent while etcd is away {counts}; outcomes {refused}"
            ) from None
        during = not_fleet(upstream.calls(), stopped)
        first = min(c.start for c in during) - stopped
        per_agent = {n: sum(1 for c in during if c.agent == n) for n in names}
        states = [a.ask("state") for a in agents]
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        back = time.monotonic()
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 90)
        for proc in agents:
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 60)  # type: ignore[misc]
        calls = upstream.calls()
    shown = (
        f"first call other than a fleet probe {first:.2f} s after etcd stopped, "
        f"{len(during)} while it was away {per_agent}; agents then {states}; closed "
        f"{time.monotonic() - back:.2f} s after it came back; most fleet probes at once "
        f"{upstream.most('fleet')}"
    )
    print(shown)
    # connected to the follower all along: not a lost link
    assert [(s["connected"], s["endpoint"]) for s in states] == [(True, fleet.addresses["r2"])] * AGENTS
    # held as after a lost link: not before the hold, counted from no earlier than the pause
    assert first >= HOLD, shown
    assert upstream.most("fleet") <= BOUND, shown
    assert any(c.kind == "fleet" for c in calls if c.start > back), shown


def marks_of(agent: RawAgent) -> list[tuple[str, bool]]:
    """What ``agent`` was told of SERVICE, in order: ("mark", no_grants) for each breaker
    push (a snapshot's included) and ("grant", True) for each permit."""
    told: list[tuple[str, bool]] = []
    for response in list(agent.received):
        if response.HasField("snapshot"):
            told += [("mark", b.no_grants) for b in response.snapshot.breakers if b.name == SERVICE]
        elif response.HasField("breaker") and response.breaker.name == SERVICE:
            told.append(("mark", response.breaker.no_grants))
        elif response.HasField("probe_grant") and response.probe_grant.service == SERVICE:
            told.append(("grant", True))
    return told


def granted_unmarked(told: list[tuple[str, bool]]) -> bool:
    """Whether every grant in ``told`` came while the last push said no mark."""
    marked = False
    for kind, value in told:
        if kind == "mark":
            marked = value
        elif marked:
            return False
    return True


async def marks_around_an_outage(etcd: EtcdProcess, address: str, paused: list[bool]) -> tuple[list, list]:  # type: ignore[type-arg]
    assert etcd.pid is not None
    async with RawAgent(address, "a", (SERVICE,)) as a, RawAgent(address, "b", (SERVICE,)) as b:
        await a.report(SERVICE, failures=3, trailing_failures=3)
        await a.wait_for(lambda: a.state(SERVICE) == pb.BREAKER_STATE_HALF_OPEN, timeout=30)
        while not a.grants:  # a permit before the mark: the mark arrives after it
            await a.ask_probe(SERVICE)
            await asyncio.sleep(0.1)
        os.kill(etcd.pid, signal.SIGSTOP)
        paused[0] = True
        await b.wait_for(lambda: ("mark", True) in marks_of(b), timeout=30)
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        deadline = asyncio.get_running_loop().time() + 60
        while not b.grants:  # asks until a leader can grant again
            assert asyncio.get_running_loop().time() < deadline, marks_of(b)
            await b.ask_probe(SERVICE)
            await asyncio.sleep(0.1)
        return marks_of(a), marks_of(b)


@pytest.mark.timeout(180)
def test_a_follower_takes_its_mark_back_before_a_permit_reaches_its_agents(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    """Two raw agents on the follower: ``a`` holds a permit when etcd stops answering, ``b``
    asks on until one comes after etcd is back. The follower's mark reaches both after a's
    permit; b's permit comes after a push that took it back (I3: no agent goes by its own
    breaker beside a fleet probe)."""
    fleet = start_replicas(etcd.endpoint, prefix, spawned, ("r1", "r2"), POLICY)
    told_a, told_b = asyncio.run(marks_around_an_outage(etcd, fleet.addresses["r2"], paused))
    print(f"told a: {told_a}; told b: {told_b}")
    assert ("mark", True) in told_a[told_a.index(("grant", True)) :], told_a
    assert granted_unmarked(told_b), told_b
    assert ("mark", True) in told_b[: told_b.index(("grant", True))], told_b


@pytest.mark.timeout(300)
def test_agents_of_a_follower_that_lost_its_leader_mid_outage_let_their_own_breaker_decide(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    """The leader dies just as etcd stops answering, before it could mark anything: the
    follower has no link and cannot learn a leader while etcd is away, so it marks by
    itself. The old code: its agents refused every call until etcd came back."""
    endpoint = etcd.endpoint
    assert etcd.pid is not None
    names = [f"orphaned-agent-{n}" for n in range(AGENTS)]
    with ProbeUpstream(0.05) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), POLICY)
        agents = start_probers(spawned, names, fleet.addresses["r2"], upstream.address, SERVICE, THREADS)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        os.kill(etcd.pid, signal.SIGSTOP)
        paused[0] = True
        fleet.procs["r1"].kill()
        stopped = time.monotonic()
        time.sleep(LEASE_TTL + 1.0)
        upstream.fail(False)
        served = time.monotonic()
        try:
            poll(lambda: all(n >= CALLS for n in served_by(upstream.calls(), served, names)), 60)
        except AssertionError:
            counts = served_by(upstream.calls(), served, names)
            refused = [a.ask("outcomes")["outcomes"] for a in agents]
            raise AssertionError(
                f"served to each agent while etcd is away {counts}; outcomes {refused}"
            ) from None
        first = min(c.start for c in not_fleet(upstream.calls(), stopped)) - stopped
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        back = time.monotonic()
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 120)
        calls = upstream.calls()
    shown = (
        f"first call other than a fleet probe {first:.2f} s after etcd stopped; closed "
        f"{time.monotonic() - back:.2f} s after it came back; most fleet probes at once "
        f"{upstream.most('fleet')}"
    )
    print(shown)
    assert first >= HOLD, shown
    assert upstream.most("fleet") <= BOUND, shown
    assert any(c.kind == "fleet" for c in calls if c.start > back), shown
