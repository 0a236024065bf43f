"""I3 in the moment an agent's stream breaks while its probe runs, with real processes.

Agent A reaches a replica through a TCP proxy and holds the only probe permit of a
HALF_OPEN (``success_threshold`` 1); agents B and C, connected straight to the leader, ask
for one all along. A's connection is reset while its probe runs: A reconnects at once
(through the proxy, to the same replica or to the other) and its first batch on the new
stream names the probe it still runs. At the upstream, never more than one fleet probe
runs at once, and a permit still comes once A's probe ended (to any of them: A asks again
too) — at the latest when the permit's hold has passed (A back on another replica, whose
word the replica it left does not hear).

Before, the leader freed A's permit when A's stream ended and granted it at once to B or C,
asking then, in the ~0.1 s before A's batch said the probe still runs: two fleet probes in
flight against a bound of one. Now a permit that went with a broken stream keeps counting
until its holder is back and has said what it runs, or until the permit's hold has passed
(``CircuitBreaker.holder_said``); a follower keeps its agent's permit out likewise
(``server/relay_permits.py``), where before it gave it back to the leader at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.probe_resets import run_to_close, told
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc
from tests.support.replicas import start_replicas
from tests.support.tcp_pause import PausableProxy, proxy_in_thread

SERVICE = "probed"
BOUND = 1  # success_threshold: the most fleet probes in flight at once
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=3, success_threshold=BOUND, wait_duration_secs=2.0, timeout_secs=8.0
)
#: How long the healthy upstream takes to answer: the reset comes while A's probe runs.
DELAY = 6.0


@pytest.fixture
def proxy() -> Iterator[tuple[PausableProxy, asyncio.AbstractEventLoop]]:
    with proxy_in_thread() as started:
        yield started


def refused(agent: Proc) -> int:
    """The calls of a probe agent refused so far (of any kind but served)."""
    outcomes: dict[str, int] = agent.ask("outcomes")["outcomes"]
    return sum(n for outcome, n in outcomes.items() if outcome != "ok")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("r1", "r1"),
        ("r2", "r2"),
        # make soak: the leader's side is on-the-leader here (the reset as B and C ask), and
        # A's move to a follower test_probe_cut_off.py's leader-to-follower
        pytest.param("r1", "r2", marks=pytest.mark.soak),
    ],
    ids=["on-the-leader", "on-a-follower", "leader-then-follower"],
)
def test_a_permit_gone_with_a_reset_stream_is_not_granted_beside_its_running_probe(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    proxy: tuple[PausableProxy, asyncio.AbstractEventLoop],
    before: str,
    after: str,
) -> None:
    cut_proxy, loop = proxy
    endpoint = etcd_server.endpoint
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), POLICY)  # r1 leads
        address = fleet.addresses["r1"]
        cut_proxy.target = fleet.addresses[before]
        agents = start_probers(spawned, ["A"], cut_proxy.address, upstream.address, SERVICE, 2)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: upstream.in_flight("fleet") >= 1, 60)  # A's probe under the only permit
        # B and C ask while A's probe runs (refused: the one permit is out)
        agents += start_probers(spawned, ["B", "C"], address, upstream.address, SERVICE, 2)
        assert upstream.in_flight("fleet") == 1 and not upstream.calls(), (
            "A's probe ended before B and C asked"
        )
        # B and C are asking now: each refused (the one permit is out), as it asks again
        # every 50-100 ms
        poll(lambda: all(refused(p) >= 2 for p in agents[1:]), 30)
        assert upstream.in_flight("fleet") == 1, "A's probe ended before B and C asked"
        cut_proxy.target = fleet.addresses[after]
        loop.call_soon_threadsafe(cut_proxy.cut)  # A reconnects through the proxy at once
        cut = time.monotonic()
        probes, closed_at = run_to_close(endpoint, prefix, SERVICE, agents, upstream)
    shown = told(probes, upstream.most("fleet"), BOUND, cut, closed_at)
    first = min(probes, key=lambda c: c.start)  # A's
    assert upstream.most("fleet") <= BOUND, f"more fleet probes at once than {BOUND} permit: {shown}"
    if before == after == "r2":
        return  # the follower kept A's permit out for its probe: that probe may count
    # the leader took A's permit from it (a result under it counts for nothing): a permit
    # came again once A's probe ended, and the breaker closed on its probe
    after = [c for c in probes if c.start >= first.end and c.end <= closed_at]
    assert after, f"closed on no probe begun after A's: {shown}"
