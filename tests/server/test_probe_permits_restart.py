"""I3 across a restart in place, real processes: one replica on a fixed address (as a
supervisor restarts it), etcd paused while it decides HALF_OPEN from memory and grants the
first probe; the replica is killed (-9) and started again at once, etcd resumed. The new
process saw no other leader (the key had expired, or it was its own), yet the probe of the
one before may still run: with ``success_threshold = 1`` at most one fleet probe is ever
in flight at the upstream (the new process once granted a second beside it)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc

SERVICE = "probed"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=1.0, timeout_secs=20.0
)
DELAY = 14.0  # a probe outlives the restart


def serve(etcd: EtcdProcess, prefix: str, port: int, instance: str) -> Proc:
    extra = ["--instance-id", instance] if instance else []
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--etcd-prefix", prefix]
    proc = Proc([sys.executable, "-m", "mission_control.server.cli", *args, *extra])
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc


@pytest.mark.timeout(240)
@pytest.mark.parametrize("instance", ["r1", pytest.param("", marks=pytest.mark.soak)])
def test_a_replica_restarted_in_place_never_runs_a_second_probe_beside_its_predecessors(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], instance: str
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with ProbeUpstream(DELAY) as upstream:
        upstream.fail(True)
        spawned.append(first := serve(etcd, prefix, port, instance))
        put_policy(address, POLICY)
        names = [f"prober-{n}" for n in range(4)]
        start_probers(spawned, names, address, upstream.address, SERVICE, 3)
        poll(lambda: stored(etcd.endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        assert etcd.pid is not None
        os.kill(etcd.pid, signal.SIGSTOP)  # the HALF_OPEN is decided from memory, never stored
        upstream.fail(False)
        try:
            poll(lambda: upstream.in_flight("fleet") >= 1, timeout=30)
            first.kill()
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        spawned.append(serve(etcd, prefix, port, instance))
        # the predecessor's probe runs DELAY seconds; the agents keep asking meanwhile
        deadline = time.monotonic() + DELAY
        while time.monotonic() < deadline and upstream.most("fleet") < 2:
            time.sleep(0.05)
        assert upstream.most("fleet") == 1, upstream.calls()
