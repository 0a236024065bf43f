"""A child process whose stdout lines can be awaited with a bound (the demo's parts; the
tests build on it too)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class Child:
    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        own_group: bool = False,
    ) -> None:
        """Start ``args``; with ``own_group`` in a process group of its own, so that a Ctrl-C
        at the terminal reaches only the parent, which stops it."""
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
            process_group=0 if own_group else None,
        )
        self.lines: list[str] = []
        # A reader thread, not select() on the pipe: readline() buffers ahead, and select()
        # cannot see lines already sitting in that buffer.
        self._incoming: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"stdout of {self.args[0]}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._incoming.put(line.rstrip("\n"))
        self._incoming.put(None)

    @classmethod
    def python(
        cls, module: str, *args: str, env: dict[str, str] | None = None, own_group: bool = False
    ) -> Child:
        return cls([sys.executable, "-m", module, *args], env=env, own_group=own_group)

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The first stdout line starting with ``prefix``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if line.startswith(prefix):
                return line
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._incoming.get(timeout=left)
            except queue.Empty:
                break
            if got is None:  # stdout closed: the process ended
                self._incoming.put(None)
                break
            self.lines.append(got)
            if got.startswith(prefix):
                return got
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
