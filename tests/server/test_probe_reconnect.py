"""I3 across an agent's reconnect, with real processes: agent A reaches the control plane
through a TCP proxy and holds the first probe permit of a HALF_OPEN; its connection is reset
while its probe runs, and it reconnects at once; agent B starts after the reset. At the
upstream, never more than ``success_threshold`` fleet probes run at once, and the breaker
closes on probes begun after the reset only.

Before, the control plane gave A a second permit for the same HALF_OPEN (the first went
with A's stream); when A's first probe ended, its success was taken for the new permit
(results were bounded by the permits held, by count): the HALF_OPEN counted a success of a
probe that no longer counts, the new permit seemed free, and two more went out while A's
second probe still ran — 3 fleet probes in flight against a bound of 2. Now a result names
its grant (``OutcomeSummary.probe_grants``), A tells the control plane which probe of the
stream before still runs (``probes_running``; counted in flight until it ends), and asks for
no permit meanwhile (``server/probe_results.py``, ``client/probes.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_resets import run_to_close, told
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy, proxy_in_thread

SERVICE = "probed"
BOUND = 2  # success_threshold: the most fleet probes in flight at once
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
def test_a_probe_begun_before_a_reconnect_does_not_count_against_a_new_permit(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    proxy: tuple[PausableProxy, asyncio.AbstractEventLoop],
) -> None:
    cut_proxy, loop = proxy
    endpoint = etcd_server.endpoint
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        plane, address = control_plane(endpoint, prefix)
        spawned.append(plane)
        cut_proxy.target = address
        put_policy(address, POLICY)
        agents = start_probers(spawned, ["A"], cut_proxy.address, upstream.address, SERVICE, 3)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: upstream.in_flight("fleet") >= 1, 60)  # A's probe under the first permit
        loop.call_soon_threadsafe(cut_proxy.cut)  # A reconnects through the proxy at once
        cut = time.monotonic()
        agents += start_probers(spawned, ["B"], address, upstream.address, SERVICE, 3)
        probes, closed_at = run_to_close(endpoint, prefix, SERVICE, agents, upstream)
    shown = told(probes, upstream.most("fleet"), BOUND, cut, closed_at)
    assert upstream.most("fleet") <= BOUND, f"more fleet probes at once than {BOUND} permits: {shown}"
    # success_threshold probes begun after the reset closed it, not the one from before
    after = [c for c in probes if c.start > cut and c.end <= closed_at]
    assert len(after) >= BOUND, f"closed on a probe from before the reconnect: {shown}"
