"""An idle breaker forgotten while etcd is away keeps its stored record (the deletion
fails). When the name is reported on again and its breaker opens, the leader's write
(expecting the key absent) meets that record: its own, left behind, not a change made
elsewhere. The OPEN is written over it — stored, kept and told — never dropped for the old
CLOSED (I2). Real etcd of the test's own, stopped and started on the same data."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.admission import AdmissionLimits
from mission_control.server.app import SERVICE_NAME, start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.server.test_hostile_clients import _watch_caught_up, poll
from tests.support.idle_endpoints import A, endpoint_fleet, stored_record
from tests.support.polling import poll as poll_sync
from tests.support.procs import Proc


def test_an_endpoint_breaker_forgotten_while_etcd_was_away_opens_again_and_is_stored(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    key = f"{prefix}/breakers/{A}"
    with endpoint_fleet(etcd.endpoint, prefix, spawned) as fleet:
        stub, mc, breakers = fleet.stub, fleet.mc, fleet.breakers
        health = health_pb2_grpc.HealthStub(fleet.channel)

        def serving() -> bool:
            check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            return bool(check.status == health_pb2.HealthCheckResponse.SERVING)

        fleet.fail_twice()
        poll_sync(lambda: stored_record(etcd.endpoint, key).get("state") == "BREAKER_STATE_OPEN")
        request = pb.SetBreakerStateRequest(name=A, state=pb.BREAKER_STATE_CLOSED, reason="fixed")
        stub.SetBreakerState(request, timeout=10)
        left = stored_record(etcd.endpoint, key)
        assert left.get("state") == "BREAKER_STATE_CLOSED"
        etcd.stop()
        poll_sync(lambda: A not in breakers())  # idle: forgotten, its key's deletion fails
        etcd.start()
        poll_sync(serving)
        assert stored_record(etcd.endpoint, key) == left  # the record left behind
        fleet.fail_twice()  # the endpoint fails again: the fleet opens its breaker
        # stored over the record left behind (before, etcd never held it: the leader took
        # the old CLOSED as another's change and dropped its OPEN)
        poll_sync(lambda: stored_record(etcd.endpoint, key).get("state") == "BREAKER_STATE_OPEN")
        opened = stored_record(etcd.endpoint, key)
        assert int(str(opened["generation"])) > int(str(left["generation"]))  # counts on
        assert breakers().get(A) == pb.BREAKER_STATE_OPEN
        poll_sync(lambda: (held := mc.view.get(A).fleet) is not None and held.state is BreakerState.OPEN)


@pytest.mark.parametrize("back_first", [False, True], ids=["decided-while-away", "decided-when-back"])
async def test_a_breaker_forgotten_while_etcd_was_away_keeps_the_open_decided_after(
    etcd: EtcdProcess, prefix: str, back_first: bool
) -> None:
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    plane = running.plane
    key = f"{prefix}/breakers/fad"
    try:
        plane.admission.limits = AdmissionLimits(idle_secs=1e9)
        assert plane.admission.allows("a", "fad")
        plane.breakers.record("a", pb.OutcomeSummary(service="fad", failures=5))
        assert await plane.flush(timeout=10)
        plane.breakers.force("fad", BreakerState.CLOSED, "recovered")
        assert await plane.flush(timeout=10)
        left = stored_record(etcd.endpoint, key)
        etcd.stop()
        await plane.forget_breaker("fad")  # the deletion fails: etcd is away
        assert plane.breakers.find("fad") is None
        if back_first:  # etcd back, its state read again, before the name is reported on
            etcd.start()

            async def reachable() -> bool:
                return plane.store_ok

            await poll(reachable, 30)
            await _watch_caught_up(plane, etcd)
            assert plane.breakers.find("fad") is None  # the load took the record for an echo
        assert plane.admission.allows("a", "fad")
        plane.breakers.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
        decided = plane.breakers.find("fad")
        assert decided is not None and decided.state is BreakerState.OPEN
        assert decided.generation > int(str(left["generation"]))
        if not back_first:
            etcd.start()
        assert await plane.flush(timeout=30)
        stored = stored_record(etcd.endpoint, key)
        assert stored.get("state") == "BREAKER_STATE_OPEN", stored
        assert int(str(stored.get("generation"))) == decided.generation
        await _watch_caught_up(plane, etcd)  # the watch's echo of the write changes nothing
        held = plane.breakers.find("fad")
        assert held is not None and held.state is BreakerState.OPEN
    finally:
        await running.stop(grace=0.5)
