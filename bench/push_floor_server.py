"""The server of the push-floor case: two grpc.aio servers on one event loop, in one process.

    python -m bench.push_floor_server

Prints ``PORTS FLOOR_PORT OURS_PORT`` once serving. Both hold server-streaming calls open,
a set of streams per variant:

- **floor** (``/bench.Floor/floor``): a bare handler per stream that awaits one future shared
  by every stream and yields the bytes it was given (the response serializer passes bytes
  through: serialised once for all). No per-stream Python work but the wake and the write.
  ``floor_write``: the same with ``await context.write(...)`` instead of ``yield``.
- **ours** (``/bench.Hub/ours``, request: an AgentHello): the control plane's push path:
  a real :class:`Hub` holding a :class:`Subscriber` per stream, ``Hub.broadcast`` of one
  ``ConnectResponse``, each stream's handler the Connect servicer's own send loop and
  Connect's serializer (:class:`SerializeOnce`), served through the control plane's aio
  interceptor and with its server options. ``ours_before``: serialised once per stream, as
  before; ``ours_write``: ``await context.write(...)`` instead of ``yield``.

Commands on stdin, one JSON line back each: ``streams``; ``push KIND ROUND`` (one message to
every stream of that variant; answers once the last write is done, or after 60 s); ``quit``.
A write is issued when grpc serialises it (just before it starts the send), and done when
grpc resumes the handler after its ``yield`` (the send completed). The CPU figures run from
the push to the last write issued, and to the last write done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from mission_control.interceptors import aio_server_interceptor
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import server_options
from mission_control.server.gc_tuning import tune_gc
from mission_control.server.hub import Hub
from mission_control.server.inbound import peer_host
from mission_control.server.serialize_once import SerializeOnce
from mission_control.server.service import Limits

#: The message pushed: a breaker change, as the control plane sends one.
SERVICE = "scale_llm"


def message(round_id: int) -> pb.ConnectResponse:
    breaker = pb.Breaker(name=SERVICE, state=pb.BREAKER_STATE_FORCED_OPEN, failures=3)
    breaker.changed_at.FromNanoseconds(round_id)
    return pb.ConnectResponse(breaker=breaker)


@dataclass
class _Round:
    """One push: when it began (three clocks) and the writes done so far."""

    expected: int
    wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)
    loop_cpu: float = field(default_factory=time.thread_time)
    issued: int = 0
    written: int = 0
    first_s: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: dict[str, Any] = field(default_factory=dict)

    def issue(self) -> None:
        self.issued += 1
        if self.issued == self.expected:
            self.result |= {
                "issue_cpu_s": time.process_time() - self.cpu,
                "issue_loop_cpu_s": time.thread_time() - self.loop_cpu,
                "last_issue_s": time.perf_counter() - self.started,
            }

    def wrote(self) -> None:
        now = time.perf_counter()
        if self.first_s is None:
            self.first_s = now - self.started
        self.written += 1
        if self.written == self.expected:
            self.result |= {
                "cpu_s": time.process_time() - self.cpu,
                "loop_cpu_s": time.thread_time() - self.loop_cpu,
                "last_write_s": now - self.started,
            }
            self.done.set()


#: The variants: floor ones on a bare server, ours on one set up as the control plane's.
FLOOR = ("floor", "floor_write")
OURS = ("ours", "ours_before", "ours_write")
KINDS = FLOOR + OURS


class PushServer:
    """Every variant's streams, and the round being pushed."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.boards: dict[str, asyncio.Future[bytes]] = {k: loop.create_future() for k in FLOOR}
        self.floor_streams = dict.fromkeys(FLOOR, 0)
        self.hubs = {k: Hub() for k in OURS}
        self.round: _Round | None = None

    def passthrough(self, item: bytes) -> bytes:
        """The floor's serializer: the bytes as given (and the write counted as issued)."""
        if self.round is not None:
            self.round.issue()
        return item

    def serializer(self, kind: str) -> Any:
        """Connect's serializer for a variant (and the write counted as issued): once per
        message as the control plane serialises, or once per stream as it did before."""
        once = pb.ConnectResponse.SerializeToString if kind == "ours_before" else SerializeOnce()

        def serialize(item: pb.ConnectResponse) -> bytes:
            if self.round is not None:
                self.round.issue()
            return once(item)

        return serialize

    def _wrote(self) -> None:
        if self.round is not None:
            self.round.wrote()

    async def floor(self, _request: bytes, _context: grpc.aio.ServicerContext) -> Any:
        self.floor_streams["floor"] += 1
        try:
            while True:
                yield await self.boards["floor"]
                self._wrote()
        finally:
            self.floor_streams["floor"] -= 1

    async def floor_write(self, _request: bytes, context: grpc.aio.ServicerContext) -> None:
        self.floor_streams["floor_write"] += 1
        try:
            while True:
                await context.write(await self.boards["floor_write"])
                self._wrote()
        finally:
            self.floor_streams["floor_write"] -= 1

    def ours(self, kind: str) -> Any:
        """The handler of a variant on a hub: the Connect servicer's send loop
        (server/service.py)."""
        hub = self.hubs[kind]

        async def connect(hello: pb.AgentHello, context: grpc.aio.ServicerContext) -> Any:
            sub = hub.connect(hello, peer_host(context.peer() or ""))
            try:
                while True:
                    item = await sub.next()
                    if item is None:
                        break
                    yield item
                    self._wrote()
            finally:
                hub.disconnect(sub)

        return connect

    async def ours_write(self, hello: pb.AgentHello, context: grpc.aio.ServicerContext) -> None:
        hub = self.hubs["ours_write"]
        sub = hub.connect(hello, peer_host(context.peer() or ""))
        try:
            while True:
                item = await sub.next()
                if item is None:
                    break
                await context.write(item)
                self._wrote()
        finally:
            hub.disconnect(sub)

    def streams(self) -> dict[str, int]:
        return self.floor_streams | {k: len(hub.agents) for k, hub in self.hubs.items()}

    async def push(self, kind: str, round_id: int) -> dict[str, Any]:
        expected = self.streams()[kind]
        self.round = round_ = _Round(expected)
        if kind in FLOOR:
            board, self.boards[kind] = self.boards[kind], asyncio.get_running_loop().create_future()
            board.set_result(message(round_id).SerializeToString())
        else:
            self.hubs[kind].broadcast(message(round_id))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(round_.done.wait(), 60)
        self.round = None
        return {"kind": kind, "streams": expected, "written": round_.written, "wall": round_.wall,
                "first_write_s": round_.first_s} | round_.result  # fmt: skip


async def _servers(push: PushServer) -> tuple[list[grpc.aio.Server], list[int]]:
    options = server_options(Limits(max_agents=20_000))
    floor = grpc.aio.server(options=options)
    floor.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Floor", {
        kind: grpc.unary_stream_rpc_method_handler(getattr(push, kind), response_serializer=push.passthrough)
        for kind in FLOOR
    })])  # fmt: skip
    ours = grpc.aio.server(interceptors=[aio_server_interceptor(agent="mission-control")], options=options)
    ours.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Hub", {
        kind: grpc.unary_stream_rpc_method_handler(
            push.ours_write if kind == "ours_write" else push.ours(kind),
            request_deserializer=pb.AgentHello.FromString,
            response_serializer=push.serializer(kind),
        )
        for kind in OURS
    })])  # fmt: skip
    servers = [floor, ours]
    ports = [s.add_insecure_port("127.0.0.1:0") for s in servers]
    for server in servers:
        await server.start()
    return servers, ports


async def main() -> None:
    push = PushServer()
    servers, ports = await _servers(push)
    tune_gc()  # as mission-control serve does
    print("PORTS " + " ".join(map(str, ports)), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not words or words[0] == "quit":
            break
        if words[0] == "streams":
            answer: dict[str, Any] = push.streams()
        else:
            answer = await push.push(words[1], int(words[2]))
        print(json.dumps(answer), flush=True)
    for server in servers:
        await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
