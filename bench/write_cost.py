"""The loop CPU of writing one message to many grpc.aio streams: a message object that grpc
serializes per stream, against bytes serialized once and passed through by the response
serializer. Half the streams take each; the variants alternate, round by round.

    python -m bench.write_cost [STREAMS]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import grpc
import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .common import median


def _passthrough(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[no-any-return]


def _lease() -> pb.ConnectResponse:
    message = pb.ConnectResponse()
    lease = message.lease
    lease.service, lease.resource = "scale_llm", "scale_llm.requests"
    lease.units, lease.period, lease.epoch = 3, 1764430000000, 7
    lease.agents, lease.fleet_units = 10_000, 33_333
    lease.starts_in.FromNanoseconds(900_000_000)
    lease.period_length.FromNanoseconds(2_000_000_000)
    return message


class _Streams:
    def __init__(self) -> None:
        self.queues: dict[str, list[asyncio.Queue[Any]]] = {"object": [], "bytes": []}
        self.left = 0
        self.done = asyncio.Event()

    def handler(self, kind: str) -> Any:
        async def stream(_requests: Any, _context: Any) -> Any:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self.queues[kind].append(queue)
            while True:
                yield await queue.get()
                self.left -= 1
                if not self.left:
                    self.done.set()

        return stream


async def _serve(streams: int, rounds: int) -> dict[str, Any]:
    s = _Streams()
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 10 * streams)])
    handlers = {
        "Object": grpc.stream_stream_rpc_method_handler(
            s.handler("object"), response_serializer=pb.ConnectResponse.SerializeToString
        ),
        "Bytes": grpc.stream_stream_rpc_method_handler(s.handler("bytes"), response_serializer=_passthrough),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Write", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = subprocess.Popen([sys.executable, "-m", "bench.write_cost", "client", str(port), str(streams)])
    try:
        while sum(len(q) for q in s.queues.values()) < streams:
            await asyncio.sleep(0.1)
        message, cost = _lease(), {"object": [], "bytes": []}
        for r in range(rounds):
            for kind in ("object", "bytes") if r % 2 == 0 else ("bytes", "object"):
                queues = s.queues[kind]
                s.left = len(queues)
                s.done.clear()
                started = time.thread_time()
                item = message if kind == "object" else message.SerializeToString()
                for queue in queues:
                    queue.put_nowait(item)
                await s.done.wait()
                cost[kind].append((time.thread_time() - started) / len(queues) * 1e6)
                await asyncio.sleep(0.2)
        load = os.getloadavg()[0]
    finally:
        client.kill()
        client.wait()
        await server.stop(None)
    return {"streams": streams, "load_1m": load} | {f"{k}_us_per_stream": median(v) for k, v in cost.items()}


async def _client(address: str, streams: int) -> None:
    channel = grpc.aio.insecure_channel(address)

    async def one(method: str) -> None:
        async for _ in channel.stream_stream(method)(iter([b""])):
            pass

    methods = ("/bench.Write/Object", "/bench.Write/Bytes")
    await asyncio.gather(*(one(methods[i % 2]) for i in range(streams)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        asyncio.run(_client(f"127.0.0.1:{sys.argv[2]}", int(sys.argv[3])))
    else:
        print(json.dumps(asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, rounds=8))))
