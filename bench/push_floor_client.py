"""Clients of the push-floor case: many server-streaming calls from one process.

    python -m bench.push_floor_client FLOOR_ADDRESS OURS_ADDRESS STREAMS TAG KIND,...

Opens STREAMS calls of each KIND (bench/push_floor_server.py's variants; 100 per HTTP/2
connection, as a few hosts' agents would), and records when each pushed message arrives
(``time.time()``: the server's clock too, one machine). Commands on stdin: ``report``
prints one JSON line, the arrival times by variant and round; ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb

#: Streams per HTTP/2 connection.
STREAMS_PER_CHANNEL = 100


def _identity(item: bytes) -> bytes:
    return item


async def _read(call: Any, kind: str, seen: dict[str, dict[int, list[float]]]) -> None:
    rounds = seen[kind]
    try:
        async for message in call:
            rounds.setdefault(message.breaker.changed_at.ToNanoseconds(), []).append(time.time())
    except grpc.aio.AioRpcError as err:
        seen.setdefault("errors", {}).setdefault(err.code().value[0], []).append(time.time())


def _calls(address: str, kind: str, streams: int, tag: str) -> tuple[list[grpc.aio.Channel], list[Any]]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(-(-streams // STREAMS_PER_CHANNEL))]
    calls = []
    for i in range(streams):
        channel = channels[i // STREAMS_PER_CHANNEL]
        if kind.startswith("floor"):
            method = channel.unary_stream(
                f"/bench.Floor/{kind}",
                request_serializer=_identity,
                response_deserializer=pb.ConnectResponse.FromString,
            )
            calls.append(method(b""))
        else:
            method = channel.unary_stream(
                f"/bench.Hub/{kind}",
                request_serializer=pb.AgentHello.SerializeToString,
                response_deserializer=pb.ConnectResponse.FromString,
            )
            calls.append(method(pb.AgentHello(agent_id=f"{tag}-{i}", services=["scale_llm"])))
    return channels, calls


async def main() -> None:
    floor, ours, streams, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    kinds = sys.argv[5].split(",")
    seen: dict[str, dict[int, list[float]]] = {kind: {} for kind in kinds}
    channels, tasks = [], []
    for kind in kinds:
        address = floor if kind.startswith("floor") else ours
        opened, calls = _calls(address, kind, streams, tag)
        channels += opened
        tasks += [asyncio.create_task(_read(call, kind, seen)) for call in calls]
    print(json.dumps({"opened": len(tasks)}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not words or words[0] == "quit":
            break
        if words[0] == "report":
            print(json.dumps(seen), flush=True)
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close(None)


if __name__ == "__main__":
    asyncio.run(main())
