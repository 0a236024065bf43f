"""Shared benchmark plumbing: real processes (etcd, control plane, upstreams), timing, stats."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import Proc, control_plane, python

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Stack:
    """etcd, a control plane and an upstream echo server, each its own process."""

    etcd: EtcdProcess
    plane: Proc
    plane_address: str
    upstream: Proc
    upstream_address: str

    def put_policy(self, service: str, **fields: object) -> None:
        with grpc.insecure_channel(self.plane_address) as channel:
            pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(
                pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service=service, **fields)),  # type: ignore[arg-type]
                timeout=10,
            )

    def put_shadow_policy(self, service: str, **fields: object) -> None:
        with grpc.insecure_channel(self.plane_address) as channel:
            pb_grpc.ControlPlaneServiceStub(channel).PutShadowPolicy(
                pb.PutShadowPolicyRequest(policy=policy_pb2.ServicePolicy(service=service, **fields)),  # type: ignore[arg-type]
                timeout=10,
            )

    def pid(self) -> int:
        return self.plane.popen.pid


@contextlib.contextmanager
def stack(extra_upstreams: int = 0) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd", log_file=Path(tmp) / "etcd.log").start()
        procs: list[Proc] = []
        try:
            # Every simulated agent connects from this one host: lift the per-address bound.
            plane, address = control_plane(
                etcd.endpoint, "/mission-control/v1", "--max-agents-per-peer", "100000"
            )
            procs.append(plane)
            upstream = python("tests.support.upstream", "upstream")
            procs.append(upstream)
            up_address = f"127.0.0.1:{upstream.port()}"
            yield Stack(etcd, plane, address, upstream, up_address)
        finally:
            for proc in procs:
                proc.kill()
            etcd.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def machine() -> dict[str, object]:
    import platform

    import grpc as grpc_mod

    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "grpcio": grpc_mod.__version__,
        "platform": platform.platform(),
    }
