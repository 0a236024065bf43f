"""Real etcd for tests: free ports, a temporary data directory."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from mission_control.server.etcd_process import EtcdProcess, EtcdUnavailable
from mission_control.server.store import EtcdStore


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


def start_etcd(tmp: Path, name: str = "etcd", attempts: int = 3) -> EtcdProcess:
    """An etcd of its own on free ports, started and healthy. A free port may be taken by
    another process before etcd binds it (many test runs share the machine): then it starts
    again on other ports."""
    for attempt in range(1, attempts + 1):
        try:
            return EtcdProcess(tmp / name / "data", log_file=tmp / name / "etcd.log").start()
        except EtcdUnavailable as err:
            if "address already in use" not in str(err) or attempt == attempts:
                raise
            shutil.rmtree(tmp / name / "data", ignore_errors=True)
    raise AssertionError("unreachable")


def write_history(endpoint: str, key: str, writes: int) -> None:
    """``writes`` puts of one key: the store's revision moves well past where a fresh
    store (after a wipe) will be during the test."""

    async def put_all() -> None:
        store = await EtcdStore([endpoint]).connect()
        try:
            for n in range(writes):
                await store.put(key, str(n).encode())
        finally:
            await store.close()

    asyncio.run(put_all())
