"""A load puts the stored policies in force before it builds a breaker from one, and a
breaker made under the defaults because its policy was not read yet does not count as
one whose timeout was lowered (real etcd, a control plane in this process).

The store lists ``breakers/`` before ``policies/``: a load that went by key order made each
breaker under the 30-s default policy, and the stored policy that came next looked like a
timeout lowered 30 -> T, so a takeover held the breaker's permits for the probe TTL plus
30 s instead of plus T (:mod:`mission_control.server.lowered_timeouts`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, StoreUnavailable

from tests.support.etcd import etcdctl

SERVICE = "loaded"
T = 3.0
POLICY = ServicePolicy(service=SERVICE, failure_threshold=3, success_threshold=1, timeout_secs=T)
DEFAULT_TIMEOUT = default_policy(SERVICE).timeout_secs


def open_record() -> bytes:
    """The record of ``SERVICE`` OPEN, as a leader stores it."""
    fleet = FleetBreakers(lambda service: POLICY)
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=3, trailing_failures=3))
    return fleet.to_record(SERVICE)


def put(etcd: EtcdProcess, key: str, value: bytes) -> None:
    etcdctl(etcd.endpoint, "put", key, input_text=value.decode())


@pytest.fixture
async def plane(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[ControlPlane]:
    """A control plane on the session etcd, not started."""
    store = await EtcdStore([etcd_server.endpoint]).connect()
    made = ControlPlane(store, prefix=prefix, instance_id="cp")
    yield made
    await made.stop()
    await store.close()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def load_all(plane: ControlPlane, timeout: float = 30.0) -> None:
    """A load of everything, asked again while etcd does not answer (its connection may time
    out on a busy machine, as the replica's own sync would ask again): what it builds is the claim."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await plane.sync._load_all()
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "etcd did not answer a load within the time allowed"
            await asyncio.sleep(0.2)


def hold(plane: ControlPlane) -> float:
    """The wait a takeover now would count for an earlier leader's permits of SERVICE."""
    return plane.breakers.takeover_hold(SERVICE, plane.breakers.now())


async def test_a_first_load_builds_a_stored_breaker_under_its_stored_policy(
    etcd_server: EtcdProcess, prefix: str, plane: ControlPlane
) -> None:
    put(etcd_server, f"{prefix}/breakers/{SERVICE}", open_record())
    put(etcd_server, f"{prefix}/policies/{SERVICE}", policy_to_json(POLICY).encode())
    await plane.start(load_timeout=10.0)
    assert plane.view_complete
    breaker = plane.breakers.get(SERVICE)
    assert breaker.state.name == "OPEN"
    assert breaker.policy.timeout_secs == T
    assert hold(plane) == plane.breakers.probe_ttl + T  # (35.0 before: a lowering 30 -> 3)


async def test_a_reload_builds_a_breaker_it_finds_under_its_stored_policy(
    etcd_server: EtcdProcess, prefix: str, plane: ControlPlane
) -> None:
    """Both keys appear while the replica does not watch (read again after a compacted
    watch or a wipe): the reload reads them together, the breaker's key first."""
    await load_all(plane)  # the first load: nothing stored
    put(etcd_server, f"{prefix}/policies/{SERVICE}", policy_to_json(POLICY).encode())
    put(etcd_server, f"{prefix}/breakers/{SERVICE}", open_record())
    await load_all(plane)
    assert plane.breakers.get(SERVICE).policy.timeout_secs == T
    assert hold(plane) == plane.breakers.probe_ttl + T


async def test_a_breaker_made_before_the_policies_were_read_takes_its_policy_as_no_lowering(
    etcd_server: EtcdProcess, prefix: str, plane: ControlPlane
) -> None:
    """An agent's outcome makes the breaker before the first load (the store away at the
    start, or slow): the defaults stand in until the stored policy is read."""
    put(etcd_server, f"{prefix}/policies/{SERVICE}", policy_to_json(POLICY).encode())
    assert plane.breakers.get(SERVICE).policy.timeout_secs == DEFAULT_TIMEOUT
    await plane.start(load_timeout=10.0)
    assert plane.view_complete
    assert plane.breakers.get(SERVICE).policy.timeout_secs == T
    assert hold(plane) == plane.breakers.probe_ttl + T


async def test_a_policy_put_later_still_counts_a_lowering_from_the_defaults_in_force(
    etcd_server: EtcdProcess, prefix: str, plane: ControlPlane
) -> None:
    """No policy stored: once read, the defaults are the policy in force (a leader grants
    under their 30 s), and a policy put later with a shorter timeout is a true lowering,
    counted while a permit granted before it may be held."""
    await plane.start(load_timeout=10.0)
    assert plane.view_complete
    assert plane.breakers.get(SERVICE).policy.timeout_secs == DEFAULT_TIMEOUT  # an agent's report
    put(etcd_server, f"{prefix}/policies/{SERVICE}", policy_to_json(POLICY).encode())
    await until(lambda: plane.breakers.get(SERVICE).policy.timeout_secs == T)
    assert hold(plane) == plane.breakers.probe_ttl + DEFAULT_TIMEOUT
