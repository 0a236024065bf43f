"""Idle forgetting never ends an OPEN early for a breaker no policy names (I1): a real control
plane on real etcd, an agent on the Connect stream. Two such breakers go idle; the CLOSED
one is forgotten, the OPEN one stays OPEN — in memory, in etcd and for the agent — and is
forgotten once it has closed and idled."""

from __future__ import annotations

import asyncio

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.admission import AdmissionLimits
from mission_control.server.app import RunningControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.support.agents import RawAgent

OPENED, QUIET = "passing-fad", "quiet-fad"


async def stored(etcd: EtcdProcess, key: str) -> bytes | None:
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    try:
        entry = await store.get(key)
        return None if entry is None else entry.value
    finally:
        await store.close()


async def poll(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_an_idle_open_breaker_no_policy_names_is_kept_until_it_has_closed(
    control_plane: RunningControlPlane, etcd_server: EtcdProcess, prefix: str
) -> None:
    plane = control_plane.plane
    plane.admission.limits = AdmissionLimits(idle_secs=0.5)
    address = f"127.0.0.1:{control_plane.port}"
    async with RawAgent(address, "fad-agent") as agent:
        await agent.report(OPENED, failures=5)  # no policy: the defaults, a 60 s wait
        await agent.wait_for(lambda: agent.state(OPENED) == pb.BREAKER_STATE_OPEN)
        await agent.report(QUIET, successes=1)  # reported last: idle no longer than OPENED
        await poll(lambda: plane.breakers.find(QUIET) is not None)
        assert await plane.flush(timeout=10)
        # both idle from here; once QUIET is forgotten, OPENED has been idle as long
        await poll(lambda: plane.breakers.find(QUIET) is None)
        breaker = plane.breakers.find(OPENED)
        assert breaker is not None and breaker.state is BreakerState.OPEN
        assert b"OPEN" in (await stored(etcd_server, plane.breaker_key(OPENED)) or b"")
        assert agent.state(OPENED) == pb.BREAKER_STATE_OPEN
        # closed, it idles like any other and is forgotten, with its key
        await plane.set_breaker_state(OPENED, BreakerState.CLOSED, "recovered")
        await poll(lambda: plane.breakers.find(OPENED) is None)
        await agent.wait_for(lambda: agent.state(OPENED) == pb.BREAKER_STATE_CLOSED)
