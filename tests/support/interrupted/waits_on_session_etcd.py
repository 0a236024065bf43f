"""A test that holds the session's etcd until it is interrupted (tests/test_interrupted_run.py
starts a parallel pytest run of this file and interrupts it)."""

from __future__ import annotations

import threading

from mission_control.server.etcd_process import EtcdProcess


def test_holds_the_session_etcd(etcd_server: EtcdProcess) -> None:
    print(f"ETCD {etcd_server.pid}", flush=True)
    assert not threading.Event().wait(120)  # interrupted long before
