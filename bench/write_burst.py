"""How a burst of breaker transitions reaches etcd: N breakers opened at once (a mass outage)
in a control plane on a real etcd of its own, their writes (each with its audit record) made
by the one writer; the wall time until all are stored and how many transactions it took
(distinct revisions among the breakers' keys). Works against a writer without batches too
(the old code: one transaction per breaker), for a before/after.

    python -m bench.write_burst [N]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.store import EtcdStore

from tests.support.etcd import start_etcd


async def burst(endpoint: str, n: int) -> dict[str, float]:
    store = EtcdStore([endpoint], timeout=10)
    await store.connect()
    plane = ControlPlane(store, prefix="/bench-burst")
    writer = asyncio.create_task(plane.writer.run())
    try:
        for i in range(n):
            summary = pb.OutcomeSummary(service=f"svc-{i:05d}", failures=5, trailing_failures=5)
            plane.breakers.record("agent", summary)
        started = time.perf_counter()
        stored = await plane.flush(timeout=600)
        took = time.perf_counter() - started
        entries, _ = await store.get_prefix("/bench-burst/breakers/")
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await store.close()
    return {
        "n": n,
        "all_stored": float(stored),
        "stored_s": took,
        "transactions": len({e.mod_revision for e in entries}),
        "per_breaker_ms": took / n * 1000,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        etcd = start_etcd(Path(tmp))
        try:
            result = asyncio.run(burst(etcd.endpoint, n))
        finally:
            etcd.stop()
    for key, value in result.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
