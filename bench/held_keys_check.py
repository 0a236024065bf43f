"""What the leader's check of its held keys (``server/held_keys.py``) costs: BREAKERS
breaker records (about 200 bytes each, as stored) on a private etcd, every one held at its
revision; a few checks in a row, each timed by wall clock and by this process's CPU, and the
bytes etcd answered (keys-only ranges).

    python -m bench.held_keys_check [BREAKERS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.held_keys import HeldKeysCheck
from mission_control.server.store import EtcdStore, Write

from .common import median

PREFIX = "/bench-held"
RECORD = json.dumps(
    {
        "name": "svc/endpoint-00000",
        "state": "BREAKER_STATE_CLOSED",
        "changed_at": "2026-11-30T23:19:57.372942080Z",
        "reason": "closed after 3 successful probes",
        "generation": "12",
        "run": "4",
    }
).encode()


async def _measure(endpoint: str, breakers: int, rounds: int) -> dict[str, float]:
    store = await EtcdStore([endpoint], timeout=10.0).connect()
    try:
        held: dict[str, int] = {}
        keys = [f"{PREFIX}/breakers/svc/endpoint-{n:05d}" for n in range(breakers)]
        for start in range(0, breakers, 100):  # (etcd takes at most 128 operations a transaction)
            batch = keys[start : start + 100]
            result = await store.commit([Write(key, RECORD) for key in batch])
            held.update(dict.fromkeys(batch, result.revision))
        check = HeldKeysCheck(
            store,
            [f"{PREFIX}/policies/", f"{PREFIX}/breakers/"],
            lambda: held,
            lambda: True,
            lambda: 0,
            print,
        )
        walls, cpus = [], []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            assert await check.check() is None
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        page, _ = await store.scan(f"{PREFIX}/breakers/", f"{PREFIX}/breakers0", 1000, keys_only=True)
        per_key = sum(len(e.key) + 3 * 8 for e in page) / max(1, len(page))  # key and three revisions
        return {
            "breakers": breakers,
            "wall_ms": median(walls) * 1000,
            "cpu_ms": median(cpus) * 1000,
            "bytes_read": per_key * breakers,
        }
    finally:
        await store.close()


def main() -> None:
    breakers = int(sys.argv[1]) if len(sys.argv) > 1 else 15_000
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd", log_file=Path(tmp) / "etcd.log").start()
        try:
            figures = asyncio.run(_measure(etcd.endpoint, breakers, rounds=7))
        finally:
            etcd.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
