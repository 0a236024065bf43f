"""A child process whose stdout lines can be awaited with a bound (the demo's parts; the
tests build on it too)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class Child:
    def __init__(
        self, args: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None
    ) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            self.args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env={**os.environ, **(env or {})},
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []

    @classmethod
    def python(cls, module: str, *args: str, env: dict[str, str] | None = None) -> Child:
        return cls([sys.executable, "-m", module, *args], env=env)

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
