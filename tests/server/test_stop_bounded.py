"""``mission-control serve`` exits within its stop bound after SIGTERM, whatever etcd does:
here etcd is paused (SIGSTOP) just before, with an agent connected and the dashboard on.
Real processes; the bound is a ceiling polled for, not a speed measured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mission_control.server.shutdown import STOP_BOUND_SECS

from tests.support.etcd import etcdctl, start_etcd
from tests.support.polling import poll
from tests.support.procs import ROOT, Proc, as_at_a_terminal, control_plane

PREFIX = "/stop-bounded"


def leader(endpoint: str) -> str | None:
    text = etcdctl(endpoint, "get", f"{PREFIX}/leader", "--print-value-only").strip()
    return json.loads(text)["instance"] if text else None


@pytest.mark.timeout(STOP_BOUND_SECS + 120)
def test_sigterm_with_etcd_paused_ends_serve_within_its_bound(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = start_etcd(tmp_path)
    assert etcd.pid is not None
    try:
        extra = ("--instance-id", "s1", "--http", "127.0.0.1:0")
        serve, address = control_plane(etcd.endpoint, PREFIX, *extra)
        spawned.append(serve)
        poll(lambda: leader(etcd.endpoint) == "s1")
        agent = Proc([sys.executable, "-m", "tests.support.horizon_agent", "a1", address, "stopping", "5"])
        spawned.append(agent)
        assert '"ready": true' in agent.wait_for('{"ready"', timeout=60)
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            serve.popen.send_signal(signal.SIGTERM)
            # a ceiling polled for: the documented bound plus time to get scheduled at all
            poll(lambda: serve.popen.poll() is not None, timeout=STOP_BOUND_SECS + 30)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert serve.popen.returncode == 0, serve.popen.returncode
        agent.send("stop")
    finally:
        etcd.stop()


def _has_socket(pid: int) -> bool:
    """Whether the process holds a socket (its gRPC channel connected or connecting)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fds / fd).startswith("socket:") for fd in os.listdir(fds))
    except OSError:  # it ended, or an fd closed while read
        return False


@pytest.mark.timeout(180)
def test_ctrl_c_during_config_import_against_a_paused_etcd_says_so(
    tmp_path: Path, spawned: list[Proc]
) -> None:
    etcd = start_etcd(tmp_path)
    assert etcd.pid is not None
    try:
        serve, address = control_plane(etcd.endpoint, PREFIX)
        spawned.append(serve)
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            command = [str(Path(sys.executable).parent / "mission-control"), "config", "import"]
            cli = subprocess.Popen(
                as_at_a_terminal(
                    [
                        *command,
                        str(ROOT / "config" / "error_handling.toml"),
                        "--server",
                        address,
                        "--reason",
                        "r",
                    ]
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            poll(lambda: _has_socket(cli.pid) or cli.poll() is not None, timeout=60)
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=60)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and out == "", (out, err)
        if cli.returncode == 130:  # interrupted while the import was on its way
            assert "interrupted; the import may have been stored or not" in lines[0], lines
            assert "config diff" in lines[0]
        else:  # it had ended already, saying the store did not answer
            assert cli.returncode not in (0, 130) and "mission-control:" in lines[0], (cli.returncode, lines)
    finally:
        etcd.stop()
