"""A freshly started agent enforces the fleet's state from its first call: ``start()``
waits for the control plane's first snapshot (``start_wait``), so a breaker an operator
forced open stops the call a process makes right after it started — one that makes a single
call and exits used to call the dependency every time (the snapshot came 2-77 ms after
``start()`` returned). A control plane that does not answer costs ``start_wait`` once, then
the local config is enforced; one that has not read its store (a ``partial`` snapshot) is
waited past. Real etcd, a real control-plane process."""

from __future__ import annotations

import os
import signal
import threading

import grpc
import pytest
from mission_control.client import CircuitBreakerOpen, MissionControl
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.server.test_probe_answer_incomplete import serve
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "llm_provider"
AGENTS = 10  # fresh agents, one after another (before: each called the dependency)


def test_an_agent_started_after_a_force_open_makes_no_call(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    with grpc.insecure_channel(address) as channel:
        request = pb.SetBreakerStateRequest(
            name=SERVICE, state=pb.BREAKER_STATE_FORCED_OPEN, reason="provider incident", create=True
        )
        pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(request, timeout=10)
    calls = 0
    for n in range(AGENTS):
        with (
            MissionControl(f"one-shot-{n}", control_plane=address) as mc,
            pytest.raises(CircuitBreakerOpen),
            mc.guard(SERVICE),
        ):
            calls += 1
    assert calls == 0


def test_an_agent_whose_control_plane_does_not_answer_starts_on_its_config() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    with MissionControl("alone", control_plane=nobody, start_wait=0.3) as mc:
        assert not mc.connected
        with mc.guard(SERVICE):
            pass  # the local config's breaker is CLOSED: the call goes
        assert mc.breaker(SERVICE).source == "local"


def test_start_wait_zero_returns_at_once_and_the_snapshot_comes_later(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    with MissionControl("no-wait", control_plane=address, start_wait=0) as mc:
        assert mc.wait_connected(30)
        assert mc.connected


@pytest.mark.timeout(180)
def test_start_waits_past_a_control_plane_that_has_not_read_its_store(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    """A control plane restarted while etcd is paused answers with a ``partial`` snapshot:
    start() went on at once, and the agent called a dependency an operator had forced open.
    It now waits for the fleet's state (up to ``start_wait``) and honours the force-open."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    spawned.append(first := serve(etcd, prefix, port))
    with grpc.insecure_channel(address) as channel:
        request = pb.SetBreakerStateRequest(
            name=SERVICE, state=pb.BREAKER_STATE_FORCED_OPEN, reason="provider incident", create=True
        )
        pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(request, timeout=10)
    assert etcd.pid is not None
    os.kill(etcd.pid, signal.SIGSTOP)
    resumed = False
    try:
        first.kill()
        spawned.append(serve(etcd, prefix, port))
        mc = MissionControl("fresh", control_plane=address, start_wait=60)
        started = threading.Thread(target=mc.start, daemon=True)
        started.start()
        try:
            assert poll(lambda: mc.connected, timeout=30)  # the partial snapshot came
            started.join(1.0)  # the old code: start() had returned by now
            os.kill(etcd.pid, signal.SIGCONT)
            resumed = True
            started.join(60)
            assert not started.is_alive()
            with pytest.raises(CircuitBreakerOpen), mc.guard(SERVICE):
                pytest.fail("called a dependency forced open")
        finally:
            mc.close()
    finally:
        if not resumed:
            os.kill(etcd.pid, signal.SIGCONT)
