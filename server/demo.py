"""``mission-control demo``: the seed's KPIs, measured on a live fleet scenario.

Real processes: a control plane on etcd, three agents (research, proof-of-concept,
documentation) making LLM, storage and agent-to-agent calls, and upstream servers that
follow a script — healthy, a hard outage of the primary LLM (a backup LLM stays up), storage
answering too slowly, storage flapping, recovery — plus a policy change in the middle. The
terminal shows breakers, calls, rejections and fallbacks as it goes; the run ends with the
KPI table computed from the upstreams' call logs and the agents' results (server/kpis.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from . import kpis
from .demo_checks import with_recovery_checks
from .demo_scenario import AGENTS, NEW_LLM_TIMEOUT, POLICIES, UPSTREAM_OF, schedule, script
from .demo_scenario import collect as _collect
from .demo_show import Watcher, show, table
from .demo_show import policies_note as _policies_note
from .etcd_process import EtcdProcess
from .proc import Child

__all__ = ["AGENTS", "NEW_LLM_TIMEOUT", "POLICIES", "UPSTREAM_OF", "_collect", "_policies_note", "run_demo"]


def run_demo(
    duration: float = 60.0,
    seed: int = 1,
    *,
    etcd: str | None = None,
    live: bool = True,
    out: TextIO = sys.stdout,
    http: str = "127.0.0.1:0",
) -> dict[str, Any]:
    """Run the scenario; returns the KPIs (and prints the table)."""
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        folder = Path(tmp)
        children: list[Child] = []
        etcd_proc = None
        try:
            if etcd is None:
                etcd_proc = EtcdProcess(folder / "etcd", log_file=folder / "etcd.log").start()
                etcd = etcd_proc.endpoint
            plane = Child.python(
                "mission_control.server.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                etcd,
                "--etcd-prefix",
                f"/demo-{seed}-{int(time.time())}",
                "--http",
                http,
                own_group=True,
            )
            children.append(plane)
            address = plane.wait_for("mission-control: serving on ").split()[3]
            dashboard = plane.wait_for("mission-control: dashboard at ").split()[-1]
            print(f"dashboard: {dashboard}  (open it to watch the fleet live)", file=out, flush=True)
            stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
            # phases relative to the start, which is set once every process is up (a busy
            # machine may take seconds to start them: no fixed lead)
            relative = schedule(0.0, duration, seed)
            peers = {}
            for name in ("llm-primary", "llm-backup", "storage"):
                child = Child.python(
                    "mission_control.server.demo_parts",
                    "upstream",
                    name,
                    script(relative, name),
                    str(folder / f"{name}.jsonl"),
                    own_group=True,
                )
                children.append(child)
                peers[name] = f"127.0.0.1:{child.wait_for('PORT ').split()[1]}"
            policies = with_recovery_checks(POLICIES, peers)  # the checks ask the upstreams
            for policy in policies:
                stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
            agents = []
            for name in AGENTS:
                child = Child.python(
                    "mission_control.server.demo_parts",
                    "agent",
                    name,
                    address,
                    json.dumps(peers),
                    str(folder / f"{name}.jsonl"),
                    "0",
                    str(duration),
                    own_group=True,
                )
                children.append(child)
                agents.append((name, child, f"127.0.0.1:{child.wait_for('PORT ').split()[1]}"))
            for i, (_, child, _) in enumerate(agents):
                child.send(agents[(i + 1) % len(agents)][2])
            for _, child, _ in agents:
                child.wait_for("READY", timeout=60)
            t0 = time.time() + 1.0
            end = t0 + duration
            phases = [dataclasses.replace(p, start=t0 + p.start, end=t0 + p.end) for p in relative]
            for child in children[1:]:
                child.send(repr(t0))
            watcher = Watcher(address)
            watcher.start()
            change_at = t0 + duration * 0.5
            changes: list[float] = []
            while time.time() < end + 1.0:
                now = time.time()
                if not changes and now >= change_at:
                    changed = policy_pb2.ServicePolicy()
                    changed.CopyFrom(policies[0])
                    changed.timeout_secs = NEW_LLM_TIMEOUT
                    changes.append(time.time())
                    stub.PutPolicy(pb.PutPolicyRequest(policy=changed), timeout=10)
                if live:
                    show(out, now - t0, duration, phases, watcher, folder)
                time.sleep(1.0)
            for _, child, _ in agents:
                child.wait_for("DONE", timeout=30)
            watcher.stop()
            run = _collect(folder, phases, watcher.transitions, changes)
        finally:
            # the control plane first: it then logs nothing about the agents going away
            for child in children:
                child.kill()
            if etcd_proc is not None:
                etcd_proc.stop()
    results = kpis.compute(run, "llm_provider")
    table(out, results, duration, seed)
    return results
