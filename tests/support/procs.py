"""Start helper programs as separate OS processes and read what they announce."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from mission_control.server.proc import Child

ROOT = Path(__file__).resolve().parents[2]


def as_at_a_terminal(argv: Sequence[str]) -> list[str]:
    """`argv` started as at a terminal, where Ctrl-C reaches it.

    A test run started in the background (`make test &`) inherits SIGINT ignored, and so would
    the command. The default handler comes back in a small exec step rather than a
    `preexec_fn`: that makes subprocess fork instead of vfork, and grpc's fork handler then
    restarts its poller in the child, which can print an epoll error onto the command's stderr
    (or abort it) before it runs.
    """
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    return [sys.executable, "-c", reset + "os.execv(sys.argv[1], sys.argv[1:])", *argv]


def logging_to(log: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` with its stderr (where a server logs) appended to ``log``, for a test to show
    its tail when it fails (see :func:`tail`); the redirect is an exec step, as above."""
    redirect = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644); "
        "os.dup2(fd, 2); os.close(fd); "
    )
    return [sys.executable, "-c", redirect + "os.execv(sys.argv[2], sys.argv[2:])", str(log), *argv]


def tail(log: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of ``log`` ("" when there is none)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Proc(Child):
    """A child process of a test (see mission_control.server.proc.Child), started from the
    repository root."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        super().__init__(args, env=env, cwd=ROOT)

    def ask(self, line: str, timeout: float = 60.0) -> dict:  # type: ignore[type-arg]
        """Send a command; the next JSON line it prints."""
        import json

        self.lines.clear()
        if line != "noop":  # "noop": read the answer to a command sent before
            self.send(line)
        return json.loads(self.wait_for("{", timeout))  # type: ignore[no-any-return]

    def all_lines(self, timeout: float = 30.0) -> list[str]:
        """Every line it printed, once its output has ended (after it exited or was killed)."""
        while (got := self._incoming.get(timeout=timeout)) is not None:
            self.lines.append(got)
        self._incoming.put(None)
        return self.lines

    def port(self, timeout: float = 30.0) -> int:
        return int(self.wait_for("PORT ", timeout).split()[1])


def python(module: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([sys.executable, "-m", module, *args], env=env)


def control_plane(
    etcd: str, prefix: str, *extra: str, env: dict[str, str] | None = None, skew: float | str = 0.0
) -> tuple[Proc, str]:
    """``mission-control serve`` as its own process (its wall clock ``skew`` seconds off, or
    ``"@path"``: as that file says, during the run too; see tests.support.skewed_clock);
    returns it and its address."""
    serve = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd, "--etcd-prefix", prefix, *extra]
    module = ["mission_control.server.cli"]
    if skew:
        module = ["tests.support.skewed_clock", str(skew), *module]
    proc = Proc([sys.executable, "-m", *module, *serve], env=env)
    try:
        line = proc.wait_for("mission-control: serving on ", timeout=60)
    except AssertionError:  # not handed to the test yet: nothing else would stop it
        proc.kill()
        raise
    return proc, line.split()[3]


def agent(
    agent_id: str,
    control_plane: str,
    upstream: str,
    service: str,
    env: dict[str, str] | None = None,
    path: str = "channel",
) -> Proc:
    """An agent process (tests.support.agent_proc), started and connected; ``path``: how
    its channel is protected (see tests.support.channels)."""
    args = [agent_id, control_plane, upstream, service, path]
    proc = Proc([sys.executable, "-m", "tests.support.agent_proc", *args], env=env)
    ready = proc.wait_for('{"ready"', timeout=60)
    assert '"ready": true' in ready, ready
    return proc


@contextlib.contextmanager
def paused(proc: Proc) -> Iterator[None]:
    """``proc`` stopped (SIGSTOP) for the block, and resumed (SIGCONT) however it ends."""
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.popen.send_signal(signal.SIGCONT)
