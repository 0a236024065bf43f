"""What ``mission-control serve`` logs about its store is true: no "store reachable again"
on a start where it never was unreachable, and no "reloading everything from the store" when
it stops (its etcd up or dead); "store reachable again" after a real outage."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.support.etcd import start_etcd
from tests.support.procs import Proc, logging_to, tail

SERVICE = "mission_control.resilience.v1.ControlPlaneService"


def _serve(etcd: str, log: Path, spawned: list[Proc]) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "mission_control.server.cli", "serve", "--listen", "127.0.0.1:0",
            "--etcd", etcd, "--etcd-prefix", "/fresh"]  # fmt: skip
    proc = Proc(logging_to(log, argv))
    spawned.append(proc)
    return proc, proc.wait_for("mission-control: serving on ", timeout=60).split()[3]


def _wait_status(address: str, wanted: int, log: Path, timeout: float = 60.0) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status != wanted:
        assert time.monotonic() < deadline, f"health not {wanted} in time; log:\n{tail(log)}"
        time.sleep(0.1)


def _wait_logged(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged; log:\n{tail(log)}"
        time.sleep(0.1)


def test_a_fresh_start_and_a_stop_say_nothing_untrue(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = start_etcd(tmp_path)
    log = tmp_path / "serve.log"
    try:
        proc, address = _serve(etcd.endpoint, log, spawned)
        _wait_status(address, health_pb2.HealthCheckResponse.SERVING, log)
        _wait_logged(log, "is the leader")
        proc.stop()
        assert proc.popen.returncode == 0
    finally:
        etcd.stop()
    text = log.read_text()
    assert "store reachable again" not in text, text
    assert "reloading everything" not in text, text


def test_an_outage_is_told_and_a_stop_with_etcd_dead_reloads_nothing(
    tmp_path: Path, spawned: list[Proc]
) -> None:
    etcd = start_etcd(tmp_path)
    log = tmp_path / "serve.log"
    try:
        proc, address = _serve(etcd.endpoint, log, spawned)
        _wait_status(address, health_pb2.HealthCheckResponse.SERVING, log)
        _wait_logged(log, "is the leader")
        etcd.stop()
        _wait_status(address, health_pb2.HealthCheckResponse.NOT_SERVING, log)
        etcd.start()
        _wait_status(address, health_pb2.HealthCheckResponse.SERVING, log)
        _wait_logged(log, "store reachable again")
        etcd.stop()
        _wait_status(address, health_pb2.HealthCheckResponse.NOT_SERVING, log)
        before = len(log.read_text())
        proc.stop()
        assert proc.popen.returncode == 0
    finally:
        etcd.stop()
    at_stop = log.read_text()[before:]
    assert "reloading everything" not in at_stop, at_stop


async def test_the_first_health_check_is_not_a_return(
    etcd_server: EtcdProcess, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first check that finds the store answering (before the first load, as may happen
    at any start) says nothing: the store was never unreachable."""
    caplog.set_level(logging.INFO)
    store = EtcdStore([etcd_server.endpoint])
    await store.connect()
    plane = ControlPlane(store, prefix=prefix)
    checking = asyncio.create_task(plane._health_loop())
    try:
        while not plane.store_ok:
            await asyncio.sleep(0.01)
    finally:
        checking.cancel()
        await store.close()
    assert not [r for r in caplog.records if "reachable again" in r.getMessage()]
