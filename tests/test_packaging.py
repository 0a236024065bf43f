"""The distribution installs and runs outside the repository: an sdist, a wheel built from it,
a fresh virtualenv in a temporary folder, ``mission-control serve`` and an agent from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.proc import Child

from tests.support.procs import ROOT

AGENT = textwrap.dedent(
    """
    import json, sys, time
    import mission_control
    from mission_control.client import MissionControl
    from mission_control.client.errors import CircuitBreakerOpen, LLMProviderUnavailable

    mc = MissionControl("packaged-agent", control_plane=sys.argv[1]).start()
    assert mc.wait_connected(30), "not connected"

    @mc.guard("llm_provider")
    def generate():
        raise LLMProviderUnavailable("test-model", "down for the packaging test")

    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            generate()
        except CircuitBreakerOpen:
            seen.append("CircuitBreakerOpen")
            break
        except LLMProviderUnavailable:
            seen.append("LLMProviderUnavailable")
    print(json.dumps({"package": mission_control.__file__, "seen": seen[-1]}), flush=True)
    mc.close()
    """
)


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from the sdist: proves the sdist holds everything
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    return out


def test_the_sdist_and_wheel_carry_the_package_and_its_protos(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "mission_control/resilience/v1/errors_pb2.py",
        "mission_control/resilience/v1/control_plane.proto",
        "mission_control/client/agent.py",
        "mission_control/interceptors/__init__.py",
        "mission_control/server/cli.py",
        "mission_control/py.typed",
    ):
        assert module in names, module
    assert not [n for n in names if n.startswith("tests/")]
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"LICENSE", "pyproject.toml", "protos/mission_control/resilience/v1/policy_pb2.py"} <= members


def test_a_fresh_virtualenv_serves_and_links_an_agent(
    dist: Path, tmp_path: Path, etcd_server: EtcdProcess, prefix: str
) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    serve = Child(
        [
            str(venv / "bin" / "mission-control"), "serve", "--listen", "127.0.0.1:0",
            "--etcd", etcd_server.endpoint, "--etcd-prefix", prefix,
        ],
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        address = serve.wait_for("mission-control: serving on ", timeout=60).split()[3]
        health = run(venv / "bin" / "mission-control", "health", "--server", address, cwd=tmp_path)
        assert "SERVING" in health
        script = tmp_path / "agent.py"
        script.write_text(AGENT)
        out = run(venv / "bin" / "python", script, address, cwd=tmp_path, timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["package"].startswith(str(venv)), result
        assert result["seen"] == "CircuitBreakerOpen"
        listed = run(
            venv / "bin" / "mission-control", "breakers", "list", "--json", "--server", address, cwd=tmp_path
        )
        states = {b["name"]: b["state"] for b in json.loads(listed)}
        assert states["llm_provider"] == "BREAKER_STATE_OPEN"
    finally:
        serve.kill()
