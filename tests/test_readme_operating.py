"""The README's "Operating" walk through a change and a rollback, run command by command
against a real control plane and etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.etcd import start_etcd
from tests.support.procs import Proc, control_plane
from tests.test_readme import readme_block

ROOT = Path(__file__).resolve().parents[1]


def operating() -> list[str]:
    return readme_block("operating")


def test_readme_operating_runs(tmp_path: Path, spawned: list[Proc]) -> None:
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

        def run(command: str) -> str:
            result = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            return result.stdout

        outputs = {line: run(line) for line in operating()}
        restored = next(v for k, v in outputs.items() if k.startswith("mission-control policies get"))
        assert "timeout_secs = 30" in restored  # the seed's value, back
        history = next(v for k, v in outputs.items() if k.startswith("mission-control breakers history"))
        assert "INC-1234 disk maintenance" in history and "maintenance over" in history
        # the hand edit's record is written by the replica that saw it: poll for it
        deadline = time.monotonic() + 20
        while True:
            records = json.loads(run("mission-control audit --service llm_provider --json"))
            done = [(r["identity"], r["action"]) for r in records]
            if ("etcd", "etcd.put") in done:
                break
            assert time.monotonic() < deadline, done
            time.sleep(0.1)
        assert done == [
            ("local", "policy.rollback"),
            ("etcd", "etcd.put"),
            ("local", "config.import"),
        ]  # newest first
    finally:
        etcd.stop()
