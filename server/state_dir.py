"""The state folder of ``mission-control serve`` with its private etcd (``.state``).

It holds the etcd data, the etcd log, the ports the etcd listens on (reused across
restarts, so an address copied once stays good) and a lock: one ``serve`` at a time, the
second told at once who holds it instead of finding out from the etcd log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .etcd_process import free_port

__all__ = ["StateBusy", "StateLock", "StateStatus", "embedded_ports", "read_status"]

LOCK_FILE = "lock"
PORTS_FILE = "etcd-ports.json"


class StateBusy(OSError):
    """Another ``serve`` (or the etcd it left running) uses the state folder."""


class StateLock:
    """An exclusive ``flock`` on ``<state>/lock`` holding who uses the folder as JSON.

    The lock goes with the process (and with the etcd it starts, which inherits the
    descriptor): a killed ``serve`` leaves nothing stale behind, while an etcd it
    orphaned still keeps the folder taken.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.fd: int | None = None
        self.facts: dict[str, Any] = {}

    def acquire(self, patience: float = 0.5) -> StateLock:
        """Take the lock; raises StateBusy naming the holder. ``patience`` covers a
        ``status`` reading the lock at that moment."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline or _is_exclusive(self.path):
                    os.close(fd)
                    raise StateBusy(_holder(self.path.parent, _read(self.path))) from None
                time.sleep(0.05)
        self.fd = fd
        self.facts = {}
        self.record(pid=os.getpid())
        return self

    def record(self, **facts: Any) -> None:
        """Add ``facts`` (pid, listen, etcd, etcd_pid) to what ``status`` reads."""
        assert self.fd is not None
        self.facts.update(facts)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.facts).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def _is_exclusive(path: Path) -> bool:
    """Whether an exclusive flock is held on ``path`` (not just a reader's shared one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: object) -> bool:
    """Whether process ``pid`` runs (one that ended but is not reaped yet does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ")" (comm may hold one)
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def _holder(state_dir: Path, facts: dict[str, Any]) -> str:
    pid, etcd_pid = facts.get("pid"), facts.get("etcd_pid")
    if pid is not None and not _alive(pid) and _alive(etcd_pid):
        return (
            f"an etcd (pid {etcd_pid}) left by a mission-control that is gone (pid {pid}) "
            f"still uses {state_dir}: stop it (kill {etcd_pid}) and start again"
        )
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"another mission-control ({who}) is using {state_dir}"


def embedded_ports(state_dir: Path) -> tuple[int, int]:
    """Ports of the embedded etcd: the ones recorded when still free, else new ones."""
    path = state_dir / PORTS_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(path.read_text())
        client, peer = int(saved["client"]), int(saved["peer"])
        if _free(client) and _free(peer):
            return client, peer
    client, peer = free_port(), free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"client": client, "peer": peer}))
    return client, peer


def _free(port: int) -> bool:
    # SO_REUSEADDR as etcd's own listener: connections of the last run in TIME_WAIT on the
    # port do not make it taken (without it the port changed on nearly every restart).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def client_address(listen: str) -> str:
    """Where a client on this machine reaches a server listening on ``listen``: a wildcard
    host (``0.0.0.0``, ``[::]``, none) is reached on loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


@dataclass(frozen=True)
class StateStatus:
    """What ``mission-control status`` says of a state folder."""

    state_dir: Path
    running: bool
    pid: int | None
    listen: str | None
    etcd: str | None
    #: The etcd a killed ``serve`` (pid ``pid``) left running; it still holds the folder.
    orphan_etcd_pid: int | None = None
    #: The running ``serve``'s embedded etcd ended and is not answering yet (``serve``
    #: restarts it); its last pid.
    etcd_down_pid: int | None = None
    etcd_down: bool = False

    def lines(self) -> list[str]:
        if self.orphan_etcd_pid is not None:
            return [
                f"no mission-control is using {self.state_dir}: the one that did (pid {self.pid}) is gone",
                f"its embedded etcd (pid {self.orphan_etcd_pid}) still runs at {self.etcd} and holds "
                f"the folder: stop it with `kill {self.orphan_etcd_pid}` before the next serve",
            ]
        heads = [f"no mission-control is using {self.state_dir}"]
        if self.running:
            head = f"mission-control (pid {self.pid}) is using {self.state_dir}"
            head += f", serving on {self.listen}" if self.listen else " (starting)"
            heads = [head]
            if self.listen:  # what the CLI's --server defaults to
                heads.append(f"  export MISSION_CONTROL_SERVER={client_address(self.listen)}")
        if self.etcd is None:
            return [*heads, "embedded etcd: none yet (`mission-control serve` starts one)"]
        if self.etcd_down:
            ended = f" (pid {self.etcd_down_pid} ended)" if self.etcd_down_pid is not None else ""
            return [
                *heads,
                f"embedded etcd: {self.etcd} is DOWN{ended}; serve is restarting it "
                "(health NOT_SERVING until it answers)",
            ]
        when = "" if self.running else " (when next started, if that port is free)"
        return [*heads, f"embedded etcd: {self.etcd}{when}", f"  export ETCD={self.etcd}"]

    @property
    def ok(self) -> bool:
        """A ``serve`` uses the folder and its etcd runs."""
        return self.running and not self.etcd_down

    def as_json(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "running": self.running,
            "pid": self.pid,
            "listen": self.listen,
            "etcd": self.etcd,
            "orphan_etcd_pid": self.orphan_etcd_pid,
            "etcd_down": self.etcd_down,
        }


def read_status(state_dir: Path) -> StateStatus:
    """Who uses ``state_dir`` and where its etcd is; changes nothing."""
    lock_path = state_dir / LOCK_FILE
    running = _is_exclusive(lock_path)
    facts = _read(lock_path) if running else {}
    etcd = facts.get("etcd")
    if etcd is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            etcd = f"127.0.0.1:{int(json.loads((state_dir / PORTS_FILE).read_text())['client'])}"
    pid, etcd_pid = facts.get("pid"), facts.get("etcd_pid")
    if running and pid is not None and not _alive(pid):
        # killed outright (kill -9): the etcd it started inherited the lock and keeps it
        orphan = etcd_pid if _alive(etcd_pid) else None
        return StateStatus(state_dir, False, pid, None, etcd, orphan_etcd_pid=orphan)
    # ended (a zombie not reaped yet counts as ended) or being restarted by the serve
    down = running and (facts.get("etcd_down") is True or (etcd_pid is not None and not _alive(etcd_pid)))
    return StateStatus(
        state_dir,
        running,
        pid,
        facts.get("listen"),
        etcd,
        etcd_down_pid=etcd_pid if down else None,
        etcd_down=down,
    )
