"""An etcd started on a port another etcd holds is not taken for healthy: the other one
answers the health check, and the member started exits with "address already in use"
(free ports are picked, then bound by etcd: another process may take one between)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mission_control.server import etcd_process
from mission_control.server.etcd_process import EtcdProcess, EtcdUnavailable

from tests.support.etcd import start_etcd


def test_an_etcd_whose_port_another_holds_does_not_start(tmp_path: Path) -> None:
    other = start_etcd(tmp_path, "other")
    try:
        mine = EtcdProcess(
            tmp_path / "mine" / "data", client_port=other.client_port, log_file=tmp_path / "mine.log"
        )
        with pytest.raises(EtcdUnavailable, match="address already in use"):
            mine.start(timeout=60)  # the old code: "healthy", from the other etcd's answer
        assert not mine.running
    finally:
        other.stop()


def test_a_test_etcd_starts_again_on_other_ports_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = start_etcd(tmp_path, "other")
    picks = iter([other.client_port])
    free = etcd_process.free_port
    monkeypatch.setattr(etcd_process, "free_port", lambda: next(picks, None) or free())
    try:
        mine = start_etcd(tmp_path, "mine")
        try:
            assert mine.running and mine.client_port != other.client_port
        finally:
            mine.stop()
    finally:
        other.stop()
