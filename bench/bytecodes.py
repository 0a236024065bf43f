"""Python bytecodes a protected sync unary call runs over a bare one, per part.

Unlike CPU time, a count of executed bytecodes does not move with the machine's load, so it
shows a change of a few microseconds that case 1 cannot see on a shared machine. The calling
thread is traced (``sys.settrace`` with ``f_trace_opcodes``) while it makes each call; grpc's
poller and the agent's own threads are not. Every bytecode is put in one part by what the
protected channel's code called to run it:

- ``glue``: the channel's own code (``interceptors/_blocking.py``, ``_channel.py``) and what
  it calls that is neither of the next three;
- ``admission``: the route's decisions and the admission the glue asks for (``Route.admit``,
  ``Route.hedging``, ``take_plain``, ``seconds_left``, a ticket, and what they call: breaker,
  bucket, bulkhead, retry budget);
- ``recording``: counting the success and freeing the bulkhead place
  (``Executor.succeeded``, ``Executor.succeeded_plain``);
- ``grpc``: grpc's own multi-callable and what it calls, which a bare call runs too;
- ``caller``: the caller's code around the call.

``python -m bench.bytecodes [--calls N] [--detail]`` counts it against a live control plane
and upstream (the stack of case 1): an agent connected, the full policy of case 1.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

#: The modules whose frames are the protected channel's glue.
GLUE_MODULES = frozenset({"mission_control.interceptors._blocking", "mission_control.interceptors._channel"})
#: What the glue calls, by name, and the part its bytecodes belong to.
PARTS = {
    "Route.admit": "admission",
    "Route.hedging": "admission",
    "Route._state": "admission",
    "Route.target": "admission",
    "take_plain": "admission",
    "seconds_left": "admission",
    "first_ticket": "admission",
    "Executor.enter_full": "admission",
    "Executor._refused": "admission",
    "Executor.succeeded": "recording",
    "Executor.succeeded_plain": "recording",
}
ORDER = ("caller", "glue", "admission", "recording", "grpc")


def _module(frame: FrameType) -> str:
    return frame.f_globals.get("__name__", "")  # type: ignore[no-any-return]


class BytecodeCounter:
    """Counts the bytecodes this thread runs inside ``with counter:``, by part and function."""

    def __init__(self, glue_modules: Iterable[str] = GLUE_MODULES) -> None:
        self.glue_modules = frozenset(glue_modules)
        self.parts: Counter[str] = Counter()
        #: per (part, module.function) the bytecodes run in that function's own frames
        self.functions: Counter[tuple[str, str]] = Counter()

    def part_of(self, frame: FrameType) -> str:
        """The part a frame's bytecodes count in: what the innermost glue frame above it
        called, or ``caller``/``grpc`` outside the glue."""
        child, up, in_grpc = frame, frame, False
        while up is not None:
            module = _module(up)
            if module in self.glue_modules:
                if child is up:
                    return "glue"
                if _module(child).startswith("grpc"):
                    return "grpc"
                return PARTS.get(child.f_code.co_qualname, "glue")
            in_grpc = in_grpc or module.startswith("grpc")
            child, up = up, up.f_back  # type: ignore[assignment]
        return "grpc" if in_grpc else "caller"

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        part = self.part_of(frame)
        key = (part, f"{_module(frame)}.{frame.f_code.co_qualname}")
        parts, functions = self.parts, self.functions
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                parts[part] += 1
                functions[key] += 1
            return local

        return local

    def __enter__(self) -> BytecodeCounter:
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


def count(call: Callable[[], Any], calls: int, warmup: int = 50) -> BytecodeCounter:
    """The bytecodes ``calls`` runs of ``call`` execute in this thread, after ``warmup``
    untraced runs (caches filled, connections up)."""
    for _ in range(warmup):
        call()
    counter = BytecodeCounter()
    for _ in range(calls):
        with counter:
            call()
    return counter


def per_call(counter: BytecodeCounter, calls: int) -> dict[str, float]:
    """Bytecodes per call by part, with their ``total``."""
    parts = {part: counter.parts[part] / calls for part in ORDER}
    parts["total"] = sum(parts.values())
    return parts


def over_bare(protected: dict[str, float], bare: dict[str, float]) -> dict[str, float]:
    """Per part, what a protected call runs over a bare one (grpc's part: the difference)."""
    over = {part: protected[part] - bare[part] for part in ORDER}
    over["total"] = protected["total"] - bare["total"]
    return over


def _print(title: str, parts: dict[str, float]) -> None:
    cells = "  ".join(f"{part} {parts[part]:7.1f}" for part in (*ORDER, "total"))
    print(f"{title:<28}{cells}")


def _detail(counter: BytecodeCounter, calls: int) -> None:
    for (part, function), n in sorted(counter.functions.items(), key=lambda kv: (kv[0][0], -kv[1])):
        if part not in ("grpc", "caller"):
            print(f"  {part:<10} {n / calls:7.1f}  {function}")


def main() -> None:
    """``python -m bench.bytecodes [--calls N] [--detail]``."""
    import argparse

    import grpc
    from mission_control.client.agent import MissionControl
    from mission_control.interceptors import protected_channel

    from tests.support import echo_pb2_grpc as pb_grpc

    from .common import stack
    from .overhead import REQUEST, SERVICE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--detail", action="store_true", help="per function of ours, per call")
    args = parser.parse_args()
    with stack() as s:
        s.put_policy(SERVICE, rate_limit_requests=10**9, timeout_secs=30)
        mc = MissionControl("bench-bytecodes", control_plane=s.plane_address, telemetry=False).start()
        try:
            mc.wait_connected(30)
            with (
                grpc.insecure_channel(s.upstream_address) as plain,
                grpc.insecure_channel(s.upstream_address) as inner,
            ):
                bare = pb_grpc.EchoServiceStub(plain)
                protected = pb_grpc.EchoServiceStub(protected_channel(inner, mc, service=SERVICE))
                bare_count = count(lambda: bare.Echo(REQUEST, timeout=30), args.calls)
                ours = count(lambda: protected.Echo(REQUEST, timeout=30), args.calls)
        finally:
            mc.close()
    bare_parts, our_parts = per_call(bare_count, args.calls), per_call(ours, args.calls)
    print(f"Python bytecodes per sync unary call, calling thread, mean of {args.calls} calls")
    _print("bare grpcio", bare_parts)
    _print("protected channel", our_parts)
    _print("protected over bare", over_bare(our_parts, bare_parts))
    if args.detail:
        _detail(ours, args.calls)


if __name__ == "__main__":
    main()
    sys.exit(0)
