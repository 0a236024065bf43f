"""How fast a write spool drains once its storage upstream is back: writes are spooled
while a real gRPC upstream (its own process) fails, then it answers again after a fixed
delay and the replayed writes per second are timed at the upstream (first replayed write
to the last), with the fsyncs the agent made per replayed write (a count the machine's load
does not change).

    python -m bench.spool_replay [WRITES]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from mission_control.client import MissionControl
from mission_control.client.policy import Backoff, ServicePolicy
from mission_control.client.spool import current_write_id

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.procs import python

#: A policy that lets the replay go as fast as the upstream answers (no rate limit in the
#: way) and probes again soon after an outage.
POLICY = ServicePolicy(
    service="storage_backend",
    timeout_secs=5,
    max_retries=0,
    failure_threshold=2,
    success_threshold=1,
    wait_duration_secs=0.2,
    rate_limit_requests=1_000_000,
    rate_limit_window_secs=1,
    backoff=Backoff(initial_secs=0.01, jitter=0),
)


def _stats(address: str, reset: bool = False) -> pb.GetStatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.EchoServiceStub(channel).GetStats(pb.GetStatsRequest(reset=reset), timeout=10)


def _set(address: str, **mode: Any) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.EchoServiceStub(channel).SetMode(pb.SetModeRequest(**mode), timeout=10)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _rate(address: str, n: int) -> float:
    """Replayed writes per second as the upstream saw them arrive."""
    arrivals = list(_stats(address).arrivals)[-n:]
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")


class _Fsyncs:
    """Counts this process's fsyncs while in the block."""

    def __init__(self) -> None:
        self.count = 0
        self._real: Callable[[Any], None] = os.fsync

    def _fsync(self, fd: Any) -> None:
        self.count += 1
        self._real(fd)

    def __enter__(self) -> _Fsyncs:
        os.fsync = self._fsync
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real  # type: ignore[assignment]


def sync_case(address: str, n: int, delay: float, **options: Any) -> tuple[float, float]:
    """Replay writes/s of a sync guard's spool, and fsyncs per replayed write."""
    stub = pb_grpc.EchoServiceStub(grpc.insecure_channel(address))
    with tempfile.TemporaryDirectory(prefix="mc-spool-bench-") as tmp:
        _set(address, mode="fail", code="UNAVAILABLE")
        with MissionControl("spool-bench", config={"storage_backend": POLICY}) as mc:

            @mc.guard("storage_backend", spool=Path(tmp) / "spool", **options)
            def save(key: str) -> str:
                return stub.Echo(pb.EchoRequest(text=current_write_id() or key), timeout=5).text  # type: ignore[no-any-return]

            for i in range(n):
                save(f"k{i}")
            _stats(address, reset=True)
            with _Fsyncs() as fsyncs:
                _set(address, mode="slow", delay_secs=delay)
                assert _wait(lambda: not len(save.spool), 300), "the spool did not drain"  # type: ignore[attr-defined]
    return _rate(address, n), fsyncs.count / n


def async_case(address: str, n: int, delay: float, **options: Any) -> tuple[float, float]:
    """Replay writes/s of an async guard's spool (a grpc.aio stub), and fsyncs per write."""

    async def spool_and_drain(directory: Path) -> _Fsyncs:
        stub = pb_grpc.EchoServiceStub(grpc.aio.insecure_channel(address))
        with MissionControl("spool-bench", config={"storage_backend": POLICY}) as mc:

            @mc.guard("storage_backend", spool=directory, **options)
            async def save(key: str) -> str:
                answer = await stub.Echo(pb.EchoRequest(text=current_write_id() or key), timeout=5)
                return answer.text  # type: ignore[no-any-return]

            for i in range(n):
                await save(f"k{i}")
            await asyncio.to_thread(_stats, address, True)
            with _Fsyncs() as fsyncs:
                await asyncio.to_thread(_set, address, mode="slow", delay_secs=delay)
                drained = await asyncio.to_thread(_wait, lambda: not len(save.spool), 300)  # type: ignore[attr-defined]
                assert drained, "the spool did not drain"
            return fsyncs

    with tempfile.TemporaryDirectory(prefix="mc-spool-bench-") as tmp:
        _set(address, mode="fail", code="UNAVAILABLE")
        fsyncs = asyncio.run(spool_and_drain(Path(tmp) / "spool"))
    return _rate(address, n), fsyncs.count / n


CASES: list[tuple[str, Callable[..., tuple[float, float]], dict[str, Any]]] = [
    ("sync guard, in order", sync_case, {}),
    ("async guard, in order", async_case, {}),
    ("sync guard, 8 in flight", sync_case, {"spool_replay_parallel": 8}),
    ("async guard, 8 in flight", async_case, {"spool_replay_parallel": 8}),
]


def run(n: int = 300, delay: float = 0.02) -> list[dict[str, object]]:
    """Every case against one upstream answering at once and after ``delay``."""
    upstream = python("tests.support.upstream", "storage")
    rows: list[dict[str, object]] = []
    try:
        address = f"127.0.0.1:{upstream.port()}"
        for upstream_ms in (0.0, delay * 1000):
            for variant, case, options in CASES:
                rate, fsyncs = case(address, n, upstream_ms / 1000, **options)
                rows.append({"variant": variant, "writes": n, "upstream_ms": upstream_ms,
                             "writes_per_s": rate, "fsyncs_per_write": fsyncs})  # fmt: skip
    finally:
        upstream.kill()
    return rows


if __name__ == "__main__":
    for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
        print(row)
