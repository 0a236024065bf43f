"""A follower behind a stalled link (a TCP proxy between it and the leader paused: no RST, no
FIN, bytes held both ways), with real processes: the leader notices the silent follower
within its keepalive (a ping every 10 s, 5 s to answer it) and gives the follower's share of
a fleet limit back once the follower's agents may no longer spend their last lease (H and
two periods). The code before kept the follower's stream, and its share, for ~70 s: grpc
waited 60 s for a ping's answer on a connection carrying leases."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.server.app import KEEPALIVE_SECS, KEEPALIVE_TIMEOUT_SECS
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.replicas import fleet_limit, spending_agents, stop_agents, usage, wait_usage
from tests.support.tcp_pause import PausableProxy

SERVICE = "stalled_follower_llm"
LIMIT, WINDOW, PERIOD, HORIZON = 100, 2.0, 0.5, 1.0
UNITS = LIMIT * PERIOD / WINDOW
#: What noticing the silent follower may take: the keepalive, and room for a loaded machine.
NOTICED_WITHIN = KEEPALIVE_SECS + KEEPALIVE_TIMEOUT_SECS + 10.0


def agents_on(address: str) -> int:
    found = usage(address, SERVICE)
    return found.agents if found is not None else 0


@pytest.mark.timeout(180)
async def test_the_leader_gives_a_silent_followers_share_back(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proxy = await PausableProxy().start()
    try:
        lead, lead_address = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "lead", "--advertise", proxy.address
        )
        spawned.append(lead)
        proxy.target = lead_address
        await asyncio.to_thread(poll, lambda: leader_of(etcd_server.endpoint, prefix) == "lead")
        follow, follow_address = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "follow"
        )
        spawned.append(follow)
        policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, HORIZON)
        await asyncio.to_thread(put_policy, lead_address, policy)
        # each asks more than the limit: each holds about half while both are leased
        wanted = (("direct", lead_address), ("behind", follow_address))
        agents = await asyncio.to_thread(spending_agents, spawned, SERVICE, 80.0, *wanted)
        await asyncio.to_thread(poll, lambda: agents_on(lead_address) == 2, 60)

        proxy.pause()
        paused = time.monotonic()
        await asyncio.to_thread(poll, lambda: agents_on(lead_address) == 1, NOTICED_WITHIN)
        assert time.monotonic() - paused <= NOTICED_WITHIN
        # the follower's agent may spend its last lease until its horizon: then its share
        # is the direct agent's
        await asyncio.to_thread(wait_usage, lead_address, SERVICE, lambda u: u.leased >= UNITS - 1e-6, 30)
        await asyncio.to_thread(stop_agents, agents)
    finally:
        await proxy.close()
