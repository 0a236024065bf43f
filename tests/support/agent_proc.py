"""An agent in its own process, driven line by line from stdin, answering JSON on stdout.

    python -m tests.support.agent_proc AGENT_ID CONTROL_PLANE UPSTREAM SERVICE [PATH]

(PATH: "channel", the default, or "interceptor": see tests.support.channels.)

Commands: ``call N`` (N calls, one after another), ``pace SECONDS INTERVAL`` (start a
call every INTERVAL for SECONDS, concurrently), ``until_open`` (call every millisecond until
the breaker stops a call), ``until_fails_fast`` (watch the view, then make one call),
``until_state STATE``, ``state`` (the service's breaker as this agent sees it, with the
seconds its OPEN has left), ``policy``, ``shadow`` (its candidate policy in shadow mode),
``stats`` (the connection's counters), ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.interceptors import protected_channel

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import sync_channel


def _one(stub: pb_grpc.EchoServiceStub) -> str:
    try:
        stub.Echo(pb.EchoRequest(text="x"), timeout=10)
        return "ok"
    except MissionControlError as err:
        return err.error_type
    except grpc.RpcError as err:
        return str(err.code().name)


def _application_work() -> None:
    while True:  # pure Python: holds the GIL but for the interpreter's switches
        sum(range(10_000))


def _bench_knobs() -> None:
    """Environment knobs for ``bench.propagation_gil``: the interpreter's switch interval
    (seconds), and a thread of application work competing for the GIL."""
    if "MC_AGENT_SWITCH_INTERVAL" in os.environ:
        sys.setswitchinterval(float(os.environ["MC_AGENT_SWITCH_INTERVAL"]))
    if os.environ.get("MC_AGENT_BUSY_THREAD"):
        threading.Thread(target=_application_work, daemon=True).start()


def main() -> None:
    _bench_knobs()
    agent_id, control_plane, upstream, service = sys.argv[1:5]
    path = sys.argv[5] if len(sys.argv) > 5 else "channel"
    mc = MissionControl(agent_id, control_plane=control_plane.split(","), flush_interval=0.02)
    mc.start()
    # with OpenTelemetry's interceptor around ours when telemetry is on
    if path == "channel":
        channel = protected_channel(grpc.insecure_channel(upstream), mc, service=service)
    else:
        channel = sync_channel(path, grpc.insecure_channel(upstream), mc, service=service)
    stub = pb_grpc.EchoServiceStub(channel)
    print(json.dumps({"ready": mc.wait_connected(30)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "call":
            outcomes: Counter[str] = Counter()
            first_rejection = None
            last_error = None  # the message of the last error a call raised
            for _ in range(int(words[1])):
                try:
                    stub.Echo(pb.EchoRequest(text="x"), timeout=10)
                    outcomes["ok"] += 1
                except MissionControlError as err:
                    outcomes[err.error_type] += 1
                    last_error = str(err)
                    if err.error_type == "CircuitBreakerOpen" and first_rejection is None:
                        first_rejection = time.time()
                except grpc.RpcError as err:
                    outcomes[err.code().name] += 1
            answer = {"outcomes": outcomes, "first_rejection": first_rejection, "t_last": time.time()}
            print(json.dumps({**answer, "last_error": last_error}), flush=True)
        elif words[0] == "until_open":
            # call every millisecond until the breaker stops a call (at most 30 s)
            end = time.monotonic() + 30
            seen = None
            made: Counter[str] = Counter()
            while time.monotonic() < end:
                outcome = _one(stub)
                made[outcome] += 1
                if outcome == "CircuitBreakerOpen":
                    seen = time.time()
                    break
                time.sleep(0.001)
            print(json.dumps({"first_rejection": seen, "outcomes": made}), flush=True)
        elif words[0] == "until_fails_fast":
            # no traffic of its own (its successes would mask the other agent's failures):
            # watch the local view, then prove the next call fails fast
            end = time.monotonic() + 30
            seen, outcome = None, None
            while time.monotonic() < end:
                fleet = mc.view.get(service).fleet
                if fleet is not None and fleet.state.rejects:
                    outcome = _one(stub)
                    seen = time.time()
                    break
                time.sleep(0.0005)
            print(json.dumps({"first_rejection": seen, "outcome": outcome}), flush=True)
        elif words[0] == "until_state":
            end = time.monotonic() + 30
            while time.monotonic() < end:
                fleet = mc.view.get(service).fleet
                if fleet is not None and fleet.state.name == words[1]:
                    break
                time.sleep(0.001)
            print(json.dumps({"state": fleet.state.name if fleet else None}), flush=True)
        elif words[0] == "pace":
            seconds, interval = float(words[1]), float(words[2])
            with ThreadPoolExecutor(max_workers=64) as pool:
                futures = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    futures.append(pool.submit(_one, stub))
                    time.sleep(interval)
                paced = Counter(f.result() for f in futures)
            print(json.dumps({"outcomes": paced}), flush=True)
        elif words[0] == "state":
            fleet = mc.view.get(service).fleet
            print(
                json.dumps(
                    {
                        "connected": mc.connected,
                        "state": fleet.state.name if fleet else None,
                        "generation": fleet.generation if fleet else None,
                        # seconds this agent still refuses calls for (the pushed expiry)
                        "open_left": max(0.0, fleet.open_until - mc.view.clock()) if fleet else None,
                    }
                ),
                flush=True,
            )
        elif words[0] == "policy":
            policy = mc.policy(service)
            print(
                json.dumps(
                    {
                        "timeout_secs": policy.timeout_secs,
                        "max_retries": policy.max_retries,
                        "rate_limit_requests": policy.rate_limit_requests,
                    }
                ),
                flush=True,
            )
        elif words[0] == "shadow":
            candidate = mc.view.shadow_of(service)
            held = mc.view.get(service).shadow is not None
            limit = candidate.rate_limit_requests if candidate is not None else None
            print(json.dumps({"rate_limit_requests": limit, "held": held}), flush=True)
        elif words[0] == "stats":
            conn = mc.connection
            assert conn is not None
            print(
                json.dumps(
                    {
                        "streams_opened": conn.streams_opened,
                        "batches_sent": conn.batches_sent,
                        "connected": mc.connected,
                    }
                ),
                flush=True,
            )
        elif words[0] == "quit":
            break
    mc.close()


if __name__ == "__main__":
    main()
