"""A private etcd server: the embedded default of ``mission-control serve`` and of the tests.

It runs the ``etcd`` binary (Debian's ``etcd-server``) on free loopback ports with its own
data directory, waits until it answers, and stops it with its owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

__all__ = ["EtcdCluster", "EtcdProcess", "EtcdUnavailable", "free_port"]


class EtcdUnavailable(RuntimeError):
    """etcd could not be found or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One etcd member on loopback.

    Args:
        data_dir: where etcd keeps its data; reused across restarts.
        client_port / peer_port: fixed ports (free ones when 0), so a restarted
            member answers at the same address.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        client_port: int = 0,
        peer_port: int = 0,
        name: str = "mission-control",
        log_file: str | Path | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        initial_cluster: str | None = None,
        keep_fds: tuple[int, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        #: ``name=peer-url,...`` of every member, for a multi-member cluster.
        self.initial_cluster = initial_cluster
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.name = name
        self.log_file = Path(log_file) if log_file else self.data_dir.parent / f"{name}.etcd.log"
        #: (server cert, server key, CA of client certificates): clients must use TLS
        #: and present a certificate signed by that CA.
        self.tls = tls
        #: descriptors the etcd process inherits (the state folder's lock)
        self.keep_fds = keep_fds
        self._proc: subprocess.Popen[bytes] | None = None
        #: The last process started, kept after it ended (its pid and exit code).
        self._last: subprocess.Popen[bytes] | None = None
        self._aborted = threading.Event()
        self._log_start = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def last_pid(self) -> int | None:
        """The pid of the last process started, also once it ended."""
        return self._last.pid if self._last is not None else None

    @property
    def exit_code(self) -> int | None:
        """How the last process started ended (negative: the signal); None while it runs."""
        return self._last.poll() if self._last is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0, wait: bool = True) -> EtcdProcess:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdUnavailable("no etcd binary on PATH: install Debian's etcd-server (make install does)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca)]
            args.append("--client-cert-auth")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self._log_start = os.fstat(log.fileno()).st_size  # what this run writes comes after
        self._proc = subprocess.Popen(
            args, stdout=log, stderr=log, start_new_session=True, pass_fds=self.keep_fds
        )
        self._last = self._proc
        log.close()
        if wait:
            self._wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://127.0.0.1:{self.client_port}/health"
        context = None
        if self.tls:
            import ssl

            cert, key, ca = self.tls
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        while time.monotonic() < deadline:
            if self._aborted.is_set():
                self.stop()
                raise EtcdUnavailable("etcd start aborted")
            if self._proc is not None and self._proc.poll() is not None:
                said = last_error(self.log_file, self._log_start)
                code = self._proc.returncode
                if said is None:
                    raise EtcdUnavailable(f"etcd exited with code {code}; see {self.log_file}")
                raise EtcdUnavailable(f"etcd exited with code {code}: {said} (more in {self.log_file})")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1, context=context) as resp,
            ):
                if b'"health":"true"' in resp.read().replace(b" ", b"") and self._serves_its_port():
                    return
            time.sleep(0.05)
        self.stop()
        raise EtcdUnavailable(f"etcd did not become healthy within {timeout}s; see {self.log_file}")

    def _serves_its_port(self) -> bool:
        """Whether this member says it serves clients on its port. A healthy answer alone may
        come from another process that took the free port first (this member then exits
        with "address already in use")."""
        said = f'"address":"127.0.0.1:{self.client_port}"'
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_start)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return False
        return any("serving client traffic" in line and said in line for line in lines)

    def abort(self) -> None:
        """Make a ``start`` waiting in another thread stop the member and give up."""
        self._aborted.set()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def last_error(log_file: Path, start: int = 0, tail: int = 64 * 1024) -> str | None:
    """The last error etcd logged in ``log_file`` after byte ``start`` (its message and
    error, e.g. "... no space left on device"), or None when it logged none."""
    try:
        with log_file.open("rb") as log:
            log.seek(max(start, log_file.stat().st_size - tail))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if line.startswith("panic: "):  # Go's own, not etcd's logger
                return line.strip()
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "dpanic", "panic", "fatal"):
            message, error = record.get("msg"), record.get("error")
            return f"{message}: {error}" if error else str(message)
    return None


class EtcdCluster:
    """Several etcd members on loopback forming one cluster (for high-availability tests)."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        self.folder, self.size = folder, size
        self._make()

    def _make(self) -> None:
        folder = self.folder
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        self.members = [
            EtcdProcess(
                folder / f"m{i}" / "data",
                client_port=client,
                peer_port=peer,
                name=f"m{i}",
                log_file=folder / f"m{i}.log",
                initial_cluster=initial,
            )
            for i, (client, peer) in enumerate(ports)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 60.0, attempts: int = 3) -> EtcdCluster:
        for attempt in range(attempts):
            try:
                for member in self.members:  # members wait for each other: start all, then wait
                    member.start(wait=False)
                for member in self.members:
                    member.wait_healthy(timeout)
                return self
            except EtcdUnavailable as err:
                # a free port picked here may be taken (e.g. as another connection's source
                # port) before etcd binds it: start over on other ports
                self.stop()
                if "address already in use" not in str(err) or attempt == attempts - 1:
                    raise
                for member in self.members:
                    shutil.rmtree(member.data_dir, ignore_errors=True)
                self._make()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
