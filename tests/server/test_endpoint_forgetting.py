"""Idle forgetting never ends an open endpoint breaker early, across processes: real etcd, a
control plane process and an agent. Both endpoints go idle; the CLOSED one is forgotten,
the OPEN one stays OPEN (and stored) until its wait is over."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.idle_endpoints import SERVICE, A, B, endpoint_fleet
from tests.support.polling import poll
from tests.support.procs import Proc


def test_an_idle_open_endpoint_breaker_is_kept_while_a_closed_one_is_forgotten(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    def stored(name: str) -> str:
        return etcdctl(etcd_server.endpoint, "get", f"{prefix}/breakers/{name}", "--print-value-only")

    with endpoint_fleet(etcd_server.endpoint, prefix, spawned) as fleet:
        breakers = fleet.breakers
        fleet.fail_twice()
        assert fleet.mc.guard(SERVICE, endpoint="anthropic/claude")(lambda: "ok")() == "ok"
        poll(lambda: breakers().get(A) == pb.BREAKER_STATE_OPEN and B in breakers())
        poll(lambda: stored(A))
        # both idle from here; once B is forgotten, A has been idle as long
        poll(lambda: B not in breakers())
        assert breakers().get(A) == pb.BREAKER_STATE_OPEN
        assert "OPEN" in stored(A)
