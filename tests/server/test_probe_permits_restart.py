"""I3 across a restart in place, real processes: one replica on a fixed address (as a
supervisor restarts it), etcd paused while it decides HALF_OPEN from memory and grants the
first probe; the replica is killed (-9) and started again at once, etcd resumed. The new
process saw no other leader (the key had expired, or it was its own), yet the probe of the
one before may still run: with ``success_threshold = 1`` at most one fleet probe is ever
in flight at the upstream (the new process once granted a second beside it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.etcd import etcdctl
from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, logging_to, tail

SERVICE = "probed"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=1.0, timeout_secs=20.0
)
DELAY = 14.0  # a probe outlives the restart


def serve(etcd: EtcdProcess, prefix: str, port: int, instance: str, log: Path) -> Proc:
    extra = ["--instance-id", instance] if instance else []
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--etcd-prefix", prefix]
    proc = Proc(logging_to(log, [sys.executable, "-m", "mission_control.server.cli", *args, *extra]))
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc


def what_it_saw(
    etcd: EtcdProcess, prefix: str, upstream: ProbeUpstream, probers: list[Proc], logs: list[Path]
) -> str:
    """The breaker as etcd holds it, the upstream's counts, what each agent sees and the
    replicas' last log lines: what a failure of this test is told with."""
    try:
        record = etcdctl(etcd.endpoint, "--command-timeout=3s", "get", f"{prefix}/breakers/{SERVICE}")
    except (AssertionError, subprocess.TimeoutExpired) as err:
        record = f"(not read: {err})"
    said = [f"stored: {record.strip()}", f"upstream: {upstream.summary()}"]
    for prober in probers:
        try:
            said.append(f"{prober.args[3]}: {prober.ask('state', timeout=5)}")
        except (AssertionError, OSError, ValueError) as err:
            said.append(f"{prober.args[3]}: no state ({err}; exit code {prober.popen.poll()})")
    for log in logs:
        said.append(f"--- {log.name} (last lines) ---\n{tail(log)}")
    return "\n".join(said)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("instance", ["r1", pytest.param("", marks=pytest.mark.soak)])
def test_a_replica_restarted_in_place_never_runs_a_second_probe_beside_its_predecessors(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], instance: str, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    probers: list[Proc] = []
    with ProbeUpstream(DELAY) as upstream:
        try:
            upstream.fail(True)
            spawned.append(first := serve(etcd, prefix, port, instance, logs[0]))
            put_policy(address, POLICY)
            names = [f"prober-{n}" for n in range(4)]
            probers = start_probers(spawned, names, address, upstream.address, SERVICE, 3)
            poll(
                lambda: stored(etcd.endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN",
                timeout=60,
            )
            assert etcd.pid is not None
            os.kill(etcd.pid, signal.SIGSTOP)  # the HALF_OPEN is decided from memory, never stored
            upstream.fail(False)
            try:
                poll(lambda: upstream.in_flight("fleet") >= 1, timeout=30)
                first.kill()
            finally:
                os.kill(etcd.pid, signal.SIGCONT)
            spawned.append(serve(etcd, prefix, port, instance, logs[1]))
            # the predecessor's probe runs DELAY seconds; the agents keep asking meanwhile
            deadline = time.monotonic() + DELAY
            while time.monotonic() < deadline and upstream.most("fleet") < 2:
                time.sleep(0.05)
            assert upstream.most("fleet") == 1, upstream.calls()
        except BaseException as err:  # also pytest's timeout: say what was seen before it
            err.add_note(what_it_saw(etcd, prefix, upstream, probers, logs))
            raise
