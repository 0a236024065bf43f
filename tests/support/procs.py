"""Start helper programs as separate OS processes and read what they announce."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A child process whose stdout lines can be awaited with a bound."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            self.args,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The first stdout line starting with ``prefix``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if line.startswith(prefix):
                return line
        assert self.popen.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.popen.stdout], [], [], 0.1)
            if not ready:
                if self.popen.poll() is not None:
                    break
                continue
            line = self.popen.stdout.readline()
            if not line:
                if self.popen.poll() is not None:
                    break
                continue
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        raise AssertionError(
            f"{self.args}: no line starting {prefix!r} within {timeout}s "
            f"(exit code {self.popen.poll()}); saw {self.lines[-20:]}"
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def ask(self, line: str, timeout: float = 60.0) -> dict:  # type: ignore[type-arg]
        """Send a command; the next JSON line it prints."""
        import json

        self.lines.clear()
        if line != "noop":  # "noop": read the answer to a command sent before
            self.send(line)
        return json.loads(self.wait_for("{", timeout))  # type: ignore[no-any-return]

    def port(self, timeout: float = 30.0) -> int:
        return int(self.wait_for("PORT ", timeout).split()[1])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def python(module: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([sys.executable, "-m", module, *args], env=env)


def control_plane(etcd: str, prefix: str, *extra: str, env: dict[str, str] | None = None) -> tuple[Proc, str]:
    """``mission-control serve`` as its own process; returns it and its address."""
    serve = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd, "--etcd-prefix", prefix, *extra]
    proc = Proc([sys.executable, "-m", "mission_control.server.cli", *serve], env=env)
    line = proc.wait_for("mission-control: serving on ", timeout=60)
    return proc, line.split()[3]


def agent(
    agent_id: str, control_plane: str, upstream: str, service: str, env: dict[str, str] | None = None
) -> Proc:
    """An agent process (tests.support.agent_proc), started and connected."""
    args = [agent_id, control_plane, upstream, service]
    proc = Proc([sys.executable, "-m", "tests.support.agent_proc", *args], env=env)
    ready = proc.wait_for('{"ready"', timeout=60)
    assert '"ready": true' in ready, ready
    return proc
