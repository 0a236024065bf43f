"""The processes of the demo scenario: scripted upstream servers and agents.

    python -m mission_control.server.demo_parts upstream NAME SCRIPT LOG
    python -m mission_control.server.demo_parts agent NAME CONTROL_PLANE PEERS LOG START END

An upstream is a gRPC service (raw bytes: the request is the caller's call id) that follows
its script — a JSON list of [start, end, mode] in wall seconds, mode ok, fail, slow or flap —
and logs every call it receives; it serves grpc.health.v1 honestly (see demo_checks). An
agent makes LLM calls (guard, with a backup LLM as fallback), storage calls (guard, with a
write spool) and calls to the next agent (our client interceptor), and logs every result,
plus the moment it enforced each new LLM timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.client.spool import Spooled
from mission_control.interceptors import client_interceptor

from .demo_checks import serve_health

METHOD = "/mission_control.demo.Upstream/Call"
_RAW = {"request_serializer": None, "response_deserializer": None}


class _Log:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at exit
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()


def _mode(script: list[list[Any]], now: float) -> str:
    for start, end, mode in script:
        if start <= now < end:
            return str(mode)
    return "ok"


def upstream(name: str, script_json: str, log_path: str) -> None:
    relative = json.loads(script_json)
    script: list[list[Any]] = []  # healthy until the orchestrator says when the scenario starts
    log = _Log(log_path)
    flap = {"n": 0}
    lock = threading.Lock()

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        now = time.time()
        mode = _mode(script, now)
        call_id = request.decode(errors="replace")
        ok = True
        if mode == "fail":
            ok = False
        elif mode == "flap":
            with lock:
                flap["n"] += 1
                ok = flap["n"] % 2 == 0
        elif mode.startswith("slow"):
            time.sleep(float(mode.split(":")[1]))
        log.write({"t": now, "id": call_id, "ok": ok and not mode.startswith("slow"), "mode": mode})
        if not ok:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is down")
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    handler = grpc.method_handlers_generic_handler(
        "mission_control.demo.Upstream", {"Call": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server.add_generic_rpc_handlers((handler,))
    serve_health(server, lambda: _mode(script, time.time()))  # answered as its calls are
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    t0 = float(sys.stdin.readline())  # the scenario's start, once every process is up
    script[:] = [[t0 + start, t0 + end, mode] for start, end, mode in relative]
    server.wait_for_termination()


def agent(name: str, control_plane: str, peers_json: str, log_path: str, start: float, end: float) -> None:
    peers = json.loads(peers_json)
    log = _Log(log_path)
    mc = MissionControl(name, control_plane=control_plane, flush_interval=0.02, telemetry=False).start()
    # this agent's own small service, which the previous agent in the ring calls
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "mission_control.demo.Upstream",
        {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    next_agent = sys.stdin.readline().strip()  # the orchestrator tells us our peer's address
    mc.wait_connected(30)
    print("READY", flush=True)
    t0 = float(sys.stdin.readline())  # the scenario's start, once every process is up
    start, end = t0 + start, t0 + end

    def raw(address: str) -> Any:
        return grpc.insecure_channel(address).unary_unary(METHOD, **_RAW)

    primary, backup, storage = raw(peers["llm-primary"]), raw(peers["llm-backup"]), raw(peers["storage"])
    ring = grpc.intercept_channel(
        grpc.insecure_channel(next_agent), client_interceptor(mc, service="agent_communication")
    ).unary_unary(METHOD, **_RAW)

    def ask_backup(call_id: str) -> str:
        backup(call_id.encode(), timeout=5)
        return "fallback"

    @mc.guard("llm_provider", operation="generate", fallbacks={"llm_backup": ask_backup})
    def generate(call_id: str) -> str:
        primary(call_id.encode(), timeout=mc.policy("llm_provider").timeout_secs)
        return "primary"

    # a write the storage cannot take now is kept in a spool and made when it serves again;
    # each write is its own record (its call id), so their order does not matter to storage:
    # the spool replays 8 at a time, and a new write never waits for it to drain
    @mc.guard("storage_backend", operation="write", spool=f"{log_path}.spool", spool_replay_parallel=8)
    def write(call_id: str) -> str:
        storage(call_id.encode(), timeout=mc.policy("storage_backend").timeout_secs)
        return "primary"

    def policy_watch() -> None:
        seen = None
        while time.time() < end + 2:
            timeout = mc.policy("llm_provider").timeout_secs
            if timeout != seen:
                seen = timeout
                log.write({"t": time.time(), "policy_timeout": timeout})
            time.sleep(0.005)

    threading.Thread(target=policy_watch, daemon=True).start()
    while time.time() < start:
        time.sleep(0.01)
    seq = 0
    while time.time() < end:

        def talk(call_id: str) -> str:
            ring(call_id.encode(), timeout=5)
            return "primary"

        for service, call in (
            ("llm_provider", generate),
            ("storage_backend", write),
            ("agent_communication", talk),
        ):
            seq += 1
            call_id = f"{name}:{seq}"
            t = time.time()
            record: dict[str, Any] = {"t": t, "service": service, "id": call_id}
            try:
                served = call(call_id)
                # spooled: whether it was made is read from the upstream's log afterwards
                record.update(
                    ok=True, error=None, served_by="spool" if isinstance(served, Spooled) else served
                )
            except MissionControlError as err:
                record.update(ok=False, error=err.error_type, served_by=None)
            except grpc.RpcError as err:
                record.update(ok=False, error=err.code().name, served_by=None)
            record["t_end"] = time.time()
            log.write(record)
        time.sleep(0.03)
    mc.close()
    print("DONE", flush=True)


def _quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    # the demo stops its parts itself; a part told to stop by a signal just ends
    os._exit(128 + signum)


if __name__ == "__main__":
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _quiet_interrupt)
    role = sys.argv[1]
    if role == "upstream":
        upstream(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        agent(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]), float(sys.argv[7]))
