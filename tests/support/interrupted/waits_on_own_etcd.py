"""A test that holds an etcd of its own until it is interrupted (see
waits_on_session_etcd.py)."""

from __future__ import annotations

import threading

from mission_control.server.etcd_process import EtcdProcess


def test_holds_its_own_etcd(etcd: EtcdProcess) -> None:
    print(f"ETCD {etcd.pid}", flush=True)
    assert not threading.Event().wait(120)  # interrupted long before
