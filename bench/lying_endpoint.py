"""An endpoint that fails alone: what a recovery check about the whole service costs it.

Real parts: etcd, a control plane process, two upstream processes (endpoints ``a`` and
``b`` of ``llm_provider``), a gRPC health server, and three agents (in this process) calling
both endpoints back to back, ``a`` falling back to ``b``; the policy is the demo's LLM one
with a recovery check every 0.02 s. Endpoint ``a`` fails fast from 3 s to ``duration`` - 5 s;
the health server says SERVING about the whole service all along, and about ``a`` only
while it serves. Printed: the calls stopped while their endpoint served (false positives),
and the attempts ``a`` got while it failed.

    python -m bench.lying_endpoint                         # the check asks about the service
    python -m bench.lying_endpoint --health-service '{endpoint}'   # ... about each endpoint
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.proc import Child

SERVICE = "llm_provider"
METHOD = "/mission_control.demo.Upstream/Call"
_RAW: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
FAILS_FROM = 3.0


def _policy(check_target: str, health_service: str) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=SERVICE,
        timeout_secs=2,
        max_retries=1,
        failure_threshold=5,
        success_threshold=2,
        wait_duration_secs=2,
        max_wait_duration_secs=8,
        rate_limit_requests=100000,
        fallbacks=[f"{SERVICE}/b"],
        backoff=policy_pb2.BackoffPolicy(initial_backoff_secs=0.02),
        recovery_check=policy_pb2.RecoveryCheckPolicy(
            target=check_target, health_service=health_service, interval_secs=0.02, timeout_secs=1
        ),
    )


def _agent(
    mc: MissionControl, upstreams: dict[str, str], start: float, end: float, out: list[dict[str, Any]]
) -> None:
    stubs = {
        name: grpc.insecure_channel(address).unary_unary(METHOD, **_RAW)
        for name, address in upstreams.items()
    }

    def call(name: str) -> Callable[[str], str]:
        def send(call_id: str) -> str:
            stubs[name](call_id.encode(), timeout=2)
            return name

        return send

    guarded = {
        "a": mc.guard(SERVICE, endpoint="a", fallbacks={f"{SERVICE}/b": call("b")})(call("a")),
        "b": mc.guard(SERVICE, endpoint="b")(call("b")),
    }
    while time.time() < start:
        time.sleep(0.005)
    seq = 0
    while time.time() < end:
        for endpoint, guard in guarded.items():
            seq += 1
            t = time.time()
            try:
                served: str | None = guard(f"{mc.agent}:{seq}")
            except (MissionControlError, grpc.RpcError):
                served = None
            out.append({"t": t - start, "endpoint": endpoint, "served": served})
        time.sleep(0.03)


def run(duration: float, health_service: str) -> dict[str, Any]:
    """One run; the figures."""
    fails_until = duration - 5.0
    with tempfile.TemporaryDirectory(prefix="lying-endpoint-") as tmp:
        folder = Path(tmp)
        etcd = EtcdProcess(folder / "etcd", log_file=folder / "etcd.log").start()
        children: list[Child] = []
        checks = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        try:
            plane = Child.python(
                "mission_control.server.cli", "serve", "--listen", "127.0.0.1:0", "--etcd", etcd.endpoint,
                "--etcd-prefix", "/lying-endpoint", own_group=True,
            )  # fmt: skip
            children.append(plane)
            address = plane.wait_for("mission-control: serving on ").split()[3]
            upstreams = {}
            for name in ("a", "b"):
                script = [[FAILS_FROM, fails_until, "fail"]] if name == "a" else []
                child = Child.python(
                    "mission_control.server.demo_parts", "upstream", name, json.dumps(script),
                    str(folder / f"{name}.jsonl"), own_group=True,
                )  # fmt: skip
                children.append(child)
                upstreams[name] = f"127.0.0.1:{child.wait_for('PORT ').split()[1]}"
            statuses = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(statuses, checks)
            port = checks.add_insecure_port("127.0.0.1:0")
            checks.start()
            for name in ("", "a", "b"):
                statuses.set(name, health_pb2.HealthCheckResponse.SERVING)
            stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
            policy = _policy(f"127.0.0.1:{port}", health_service)
            stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
            agents = [
                MissionControl(
                    f"agent{i}", control_plane=address, flush_interval=0.02, telemetry=False
                ).start()
                for i in range(3)
            ]
            for mc in agents:
                mc.wait_connected(30)
            start = time.time() + 0.5
            for child in children[1:]:
                child.send(repr(start))
            calls: list[dict[str, Any]] = []
            threads = [
                threading.Thread(target=_agent, args=(mc, upstreams, start, start + duration, calls))
                for mc in agents
            ]
            for thread in threads:
                thread.start()
            while time.time() < start + FAILS_FROM:
                time.sleep(0.002)
            statuses.set("a", health_pb2.HealthCheckResponse.NOT_SERVING)
            while time.time() < start + fails_until:
                time.sleep(0.002)
            statuses.set("a", health_pb2.HealthCheckResponse.SERVING)
            for thread in threads:
                thread.join()
            for mc in agents:
                mc.close()
            logged = [json.loads(line) for line in (folder / "a.jsonl").read_text().splitlines()]
        finally:
            checks.stop(0)
            for child in children:
                child.kill()
            etcd.stop()

    def failing(t: float) -> bool:
        return FAILS_FROM <= t < fails_until

    healthy = [c for c in calls if c["endpoint"] == "b" or not failing(c["t"])]
    stopped = [c for c in healthy if c["served"] != c["endpoint"]]
    return {
        "health_service": health_service,
        "healthy_calls": len(healthy),
        "stopped": len(stopped),
        "false_positive_rate": len(stopped) / len(healthy),
        "b_stopped": sum(1 for c in stopped if c["endpoint"] == "b"),
        "a_calls_failing": sum(1 for c in calls if c["endpoint"] == "a" and failing(c["t"])),
        "a_attempts_failing": sum(1 for c in logged if failing(c["t"] - start)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds of calls (a fails from 3 s to 5 s before the end)",
    )
    parser.add_argument(
        "--health-service", default="", help="what the check asks about ('{endpoint}': each endpoint)"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.duration, args.health_service), indent=2))


if __name__ == "__main__":
    main()
