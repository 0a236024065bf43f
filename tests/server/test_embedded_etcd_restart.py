"""``mission-control serve`` keeps its embedded etcd running: killed, it is reaped and started
again on the same port with the same data, health comes back, and ``status`` tells the truth
meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.state_dir import StateLock, client_address, read_status

from tests.support.procs import Proc, logging_to, tail

SERVICE = "mission_control.resilience.v1.ControlPlaneService"


def _poll(check, timeout: float, what: str, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s; serve's log ends:\n{tail(log)}")
        time.sleep(0.1)


def _facts(state: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((state / "lock").read_text() or "{}")  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _zombie_or_running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return False


def _status(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mission_control.server.cli", "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_killed_embedded_etcd_is_restarted_with_its_data(tmp_path: Path, spawned: list[Proc]) -> None:
    state, log = tmp_path / "state", tmp_path / "serve.log"
    argv = [sys.executable, "-m", "mission_control.server.cli", "serve", "--listen", "127.0.0.1:0",
            "--state-dir", str(state)]  # fmt: skip
    proc = Proc(logging_to(log, argv))
    spawned.append(proc)
    pids: set[int] = set()
    try:
        etcd = proc.wait_for("mission-control: embedded etcd at ", timeout=60).split()[4]
        address = proc.wait_for("mission-control: serving on ", timeout=60).split()[3]
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        plane = pb_grpc.ControlPlaneServiceStub(channel)

        def serving() -> bool:
            request = health_pb2.HealthCheckRequest(service=SERVICE)
            return health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING

        _poll(serving, 30, "SERVING at the start", log)
        plane.SetBreakerState(
            pb.SetBreakerStateRequest(
                name="kept", state=pb.BREAKER_STATE_FORCED_OPEN, reason="t", create=True
            ),
            timeout=10,
        )
        first = _facts(state)["etcd_pid"]
        pids.add(first)
        os.kill(first, signal.SIGKILL)

        def restarted() -> int | None:
            pid = _facts(state).get("etcd_pid")
            return pid if pid != first and not _facts(state).get("etcd_down") else None

        second = _poll(restarted, 60, "a restarted etcd", log)
        pids.add(second)
        assert not _zombie_or_running(first)  # reaped: no <defunct> left behind
        _poll(serving, 60, "SERVING again", log)
        # same port, same data: what was stored before is there, and writes are taken again
        assert _facts(state)["etcd"] == etcd
        listed = plane.ListBreakers(pb.ListBreakersRequest(), timeout=10).breakers
        assert {b.name: b.state for b in listed}["kept"] == pb.BREAKER_STATE_FORCED_OPEN
        plane.SetBreakerState(
            pb.SetBreakerStateRequest(
                name="after", state=pb.BREAKER_STATE_FORCED_OPEN, reason="t", create=True
            ),
            timeout=10,
        )
        said = _status(state)
        assert said.returncode == 0, said.stdout + said.stderr
        assert f"embedded etcd: {etcd}" in said.stdout
    finally:
        proc.stop()  # SIGTERM: serve stops its etcd
        for pid in pids:
            if _zombie_or_running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert text.count("the embedded etcd (pid") == 1, tail(log)  # said once
    assert "killed by signal 9" in text
    assert "the embedded etcd answers again" in text
    assert "status = StatusCode" not in text  # gRPC errors in one line, not their dump


def test_status_tells_an_ended_etcd(tmp_path: Path) -> None:
    """A serve holding the folder whose etcd ended (reaped or not yet): status says it is
    down and exits 3."""
    state = tmp_path / "state"
    lock = StateLock(state).acquire()
    ended = subprocess.Popen(["sleep", "60"])
    try:
        lock.record(listen="127.0.0.1:1", etcd="127.0.0.1:2", etcd_pid=ended.pid)
        assert read_status(state).ok
        ended.kill()
        # not reaped yet: a zombie is not a running etcd
        _poll(lambda: not read_status(state).ok, 10, "status seeing the zombie", tmp_path / "none")
        ended.wait()
        said = _status(state)
        assert said.returncode == 3
        assert f"embedded etcd: 127.0.0.1:2 is DOWN (pid {ended.pid} ended)" in said.stdout
        assert "export ETCD" not in said.stdout
        lock.record(etcd_pid=os.getpid(), etcd_down=True)  # being restarted
        assert "is DOWN" in _status(state).stdout
        lock.record(etcd_down=False)
        said = _status(state)
        assert said.returncode == 0 and "export ETCD=127.0.0.1:2" in said.stdout
    finally:
        ended.kill()
        ended.wait()
        lock.release()


def test_status_exports_a_server_reached_on_this_machine() -> None:
    assert client_address("127.0.0.1:50061") == "127.0.0.1:50061"
    assert client_address("0.0.0.0:50061") == "127.0.0.1:50061"
    assert client_address("[::]:50061") == "127.0.0.1:50061"
    assert client_address("[::1]:50061") == "[::1]:50061"
