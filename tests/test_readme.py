"""The README's walkthrough, run command by command against a real control plane."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.etcd import start_etcd
from tests.support.procs import Proc, control_plane

ROOT = Path(__file__).resolve().parents[1]


def readme_block(name: str) -> list[str]:
    """The commands of the README's shell block marked ``<!-- name -->`` (comments left out)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {name} -->\n```sh\n(.*?)```", text, re.S)
    assert block, f"README lost its {name} block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def walkthrough() -> list[str]:
    return readme_block("walkthrough")


def test_readme_walkthrough_runs(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = start_etcd(tmp_path)
    try:
        plane, address = control_plane(etcd.endpoint, "/mission-control/v1")
        spawned.append(plane)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "ETCD": etcd.endpoint,
            "MISSION_CONTROL_SERVER": address,
            "ETCDCTL_API": "3",
        }
        outputs = {}
        for line in walkthrough():
            command = line.replace("127.0.0.1:50051", address)
            result = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            outputs[line] = result.stdout
        policies = next(v for k, v in outputs.items() if k.startswith("mission-control policies list"))
        assert "llm_provider" in policies and "storage_backend" in policies
        got = next(v for k, v in outputs.items() if k.startswith("mission-control policies get"))
        assert "timeout_secs = 20" in got and "max_retries = 2" in got
        listed = next(v for k, v in outputs.items() if k.startswith("mission-control breakers list"))
        assert "FORCED_OPEN" in listed and "disk maintenance" in listed
    finally:
        etcd.stop()
