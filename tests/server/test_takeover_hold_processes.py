"""A takeover after a restart or a failover holds a breaker's probe permits for the probe TTL
plus the policy's timeout, not plus the 30-s default (real processes, real etcd).

The breaker is OPEN in etcd, the policy's timeout T short, the upstream recovered; then
the only replica is killed and started again on its address, or a fresh replica starts
and the old leader is killed. The new leader read the breaker before its policy (key
order) and made it under the default policy, so the stored policy looked like a timeout
lowered 30 -> T and it held the breaker's permits for 5 + 30 s. Now it holds them for
the probe TTL plus T (what its log of the first permit says), and the breaker closes
(how soon is printed: a loaded machine stretches it).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import PROBE_TTL_SECS
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, logging_to, tail

SERVICE = "restarted"
T = 3.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=3.0, timeout_secs=T
)


def serve(etcd: EtcdProcess, prefix: str, port: int, instance: str, log: Path) -> Proc:
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--etcd-prefix", prefix]
    argv = [sys.executable, "-m", "mission_control.server.cli", *args, "--instance-id", instance]
    proc = Proc(logging_to(log, argv))
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc


def logged_at(line: str) -> float:
    """When a log line was written (the process's wall clock, seconds)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def line_with(log: Path, *parts: str) -> str | None:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line for line in lines if all(part in line for part in parts)), None)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("change", ["restart", "failover"])
def test_a_new_leader_holds_a_stored_open_for_the_probe_ttl_plus_its_policys_timeout(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path, change: str
) -> None:
    ports = [free_port(), free_port()]
    addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
    first_log, leader_log = tmp_path / "first.log", tmp_path / "leader.log"
    with ProbeUpstream(0.5) as upstream:
        try:
            upstream.fail(True)
            spawned.append(first := serve(etcd_server, prefix, ports[0], "r1", first_log))
            poll(lambda: leader_of(etcd_server.endpoint, prefix) == "r1", 30)
            put_policy(f"127.0.0.1:{ports[0]}", POLICY)
            start_probers(spawned, ["A"], addresses, upstream.address, SERVICE, 2)
            poll(
                lambda: stored(etcd_server.endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60
            )
            if change == "restart":  # the only replica, started again on its address
                first.kill()
                spawned.append(serve(etcd_server, prefix, ports[0], "r1", leader_log))
                leader = "r1"
            else:  # a fresh replica (a rolling upgrade), then the old leader goes
                spawned.append(serve(etcd_server, prefix, ports[1], "r2", leader_log))
                first.kill()
                leader = "r2"
            upstream.fail(False)
            poll(
                lambda: stored(etcd_server.endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED",
                90,
            )
            took_over = line_with(leader_log, f"{leader} is the leader")
            closed = line_with(leader_log, f"breaker {SERVICE}: HALF_OPEN -> CLOSED")
            assert took_over and closed, "the leader logged no takeover or no close"
            after = logged_at(closed) - logged_at(took_over)
            print(f"{change}: CLOSED {after:.1f} s after the takeover")
            # how soon it closed is printed, not asserted (a loaded machine stretches it; 8.5 s
            # here, 35.5 s before); the hold the leader computed is what the README promises:
            # the probe TTL plus the policy's timeout, not plus the 30-s default
            granted = line_with(leader_log, f"breaker {SERVICE}: first probe permit")
            assert granted is not None and f"(hold {PROBE_TTL_SECS + T:.1f} s:" in granted, granted
        except BaseException as err:  # also pytest's timeout: say what was seen before it
            err.add_note(f"upstream: {upstream.summary()}")
            for log in (first_log, leader_log):
                err.add_note(f"--- {log.name} (last lines) ---\n{tail(log)}")
            raise
