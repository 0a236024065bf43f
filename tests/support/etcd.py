"""Real etcd for tests: free ports, a temporary data directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mission_control.server.etcd_process import EtcdProcess


def etcdctl(endpoint: str, *args: str, input_text: str | None = None) -> str:
    binary = shutil.which("etcdctl")
    assert binary, "etcdctl comes with Debian's etcd-client (make install)"
    result = subprocess.run(
        [binary, f"--endpoints={endpoint}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        input=input_text,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_etcd(tmp: Path, name: str = "etcd") -> EtcdProcess:
    return EtcdProcess(tmp / name / "data", log_file=tmp / name / "etcd.log").start()
