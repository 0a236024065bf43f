"""I3 across an agent's reconnect behind a follower, with real processes: a leader, a
follower, and agents connected to the follower only, so their probe permits come from the
leader through the follower's relay. Agent A reaches the follower through a TCP proxy and
holds the only probe permit of a HALF_OPEN (success_threshold 1); its connection is reset
while its probe runs, and it reconnects at once; agent B starts after the reset. At the
upstream, never more than ``success_threshold`` fleet probes run at once, and the breaker
closes on a probe begun after the reset.

Before, the follower handed A's permit back to the leader by count when A's stream ended
(the leader let go of it, whichever it was, without keeping it to be named again): A, back,
said its probe still ran (``probes_running``), but the leader knew no such permit any more,
counted nothing in flight and granted B a permit beside it — 2 probes at once against a
bound of 1. Now the follower names what it gives back (``OutcomeSummary.released_grants``),
the leader keeps a released permit to be named again, and the follower passes on only what
it relayed to that agent, by grant (``server/relay_permits.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_probe_recovery import leader_of
from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_resets import run_to_close, told
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane
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


@pytest.mark.timeout(180)
def test_a_probe_begun_before_a_reconnect_to_a_follower_is_counted_in_flight(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    proxy: tuple[PausableProxy, asyncio.AbstractEventLoop],
) -> None:
    cut_proxy, loop = proxy
    endpoint = etcd_server.endpoint
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        leader, leader_address = control_plane(endpoint, prefix, "--instance-id", "r1")
        spawned.append(leader)
        poll(lambda: leader_of(endpoint, prefix) == "r1")
        follower, follower_address = control_plane(endpoint, prefix, "--instance-id", "r2")
        spawned.append(follower)
        cut_proxy.target = follower_address
        put_policy(leader_address, POLICY)
        agents = start_probers(spawned, ["A"], cut_proxy.address, upstream.address, SERVICE, 3)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: upstream.in_flight("fleet") >= 1, 60)  # A's probe under the first permit
        loop.call_soon_threadsafe(cut_proxy.cut)  # A reconnects through the proxy at once
        cut = time.monotonic()
        agents += start_probers(spawned, ["B"], follower_address, upstream.address, SERVICE, 3)
        probes, closed_at = run_to_close(endpoint, prefix, SERVICE, agents, upstream)
    shown = told(probes, upstream.most("fleet"), BOUND, cut, closed_at)
    assert upstream.most("fleet") <= BOUND, f"more fleet probes at once than {BOUND} permits: {shown}"
    after = [c for c in probes if c.start > cut and c.end <= closed_at]
    assert len(after) >= BOUND, f"closed on a probe from before the reconnect: {shown}"
