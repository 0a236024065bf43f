"""I3 against a killed probe holder: an agent process holding the only HALF_OPEN probe
permit is killed (kill -9); the control plane sees its stream end and hands the permit to
an agent asking now once the permit's hold (probe TTL + the policy's call timeout) lapsed,
not before: a killed holder looks to it as one cut off whose probe may still run
(tests/server/test_probe_cut_off.py). (Until then it went on one probe TTL after the
grant, and beside such a probe still running.)"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import PROBE_TTL_SECS
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.procs import Proc, control_plane, python

SERVICE = "held_dep"
TIMEOUT = 8.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=1, success_threshold=1, wait_duration_secs=0.3, timeout_secs=TIMEOUT
)


async def ask_until_granted(address: str, holder: Proc) -> float:
    """Seconds from the holder's kill to the asker's grant."""
    async with RawAgent(address, "asker", (SERVICE,)) as asker:
        await asker.wait_for(lambda: asker.state(SERVICE) == pb.BREAKER_STATE_HALF_OPEN, timeout=30)
        for _ in range(5):  # the only permit is out: asking gets nothing
            await asker.ask_probe(SERVICE)
            await asyncio.sleep(0.1)
        assert asker.grants == []
        holder.kill()  # SIGKILL: no goodbye, no give-back
        killed = time.monotonic()
        deadline = killed + 60
        while not asker.grants:
            assert time.monotonic() < deadline, "the permit never came back"
            await asker.ask_probe(SERVICE)
            await asyncio.sleep(0.1)
        return time.monotonic() - killed


def test_a_killed_holders_permit_goes_to_an_asking_agent_once_its_hold_lapsed(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    with grpc.insecure_channel(address) as channel:
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)
    holder = python("tests.support.probe_holder", address, "holder", SERVICE)
    spawned.append(holder)
    assert json.loads(holder.wait_for('{"granted"', timeout=60))["granted"] > 0
    waited = asyncio.run(ask_until_granted(address, holder))
    hold = PROBE_TTL_SECS + TIMEOUT
    # granted before the kill: at least one probe TTL from it, at most the hold (plus slack)
    assert PROBE_TTL_SECS < waited < hold + 5.0, f"{waited:.1f}s (the permit's hold is {hold:g}s)"
