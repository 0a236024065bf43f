"""Six ways an agent calls an upstream — sync and aio interceptors, sync and aio protected
channels, sync and async guard — behind one awaitable ``echo()``, so every case runs
through each."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
from mission_control.client.agent import MissionControl
from mission_control.client.outcomes import Outcomes

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel

KINDS = ("sync-interceptor", "sync-channel", "aio-interceptor", "aio-channel", "sync-guard", "async-guard")


class Driver:
    def __init__(
        self,
        kind: str,
        mc: MissionControl,
        address: str,
        service: str,
        fallbacks: Mapping[str, str] | None = None,
        cost: Mapping[str, float] | None = None,
        outcomes: Outcomes | None = None,
    ) -> None:
        self.kind = kind
        self.mc = mc
        self.service = service
        self._closers: list[Any] = []
        fallbacks = dict(fallbacks or {})
        counts: dict[str, Any] = {}
        if outcomes is not None:
            counts = {"record": outcomes.record, "ignore": outcomes.ignore, "classify": outcomes.classify}
        self.sync = kind.startswith("sync-") and kind != "sync-guard"
        path = kind.partition("-")[2]
        if self.sync:
            fb = {n: grpc.insecure_channel(a) for n, a in fallbacks.items()}
            channel = sync_channel(
                path,
                grpc.insecure_channel(address),
                mc,
                service=service,
                fallback_channels=fb,
                outcomes=outcomes,
            )
            self._closers += [channel, *fb.values()]
            self.stub = pb_grpc.EchoServiceStub(channel)
        elif kind.startswith("aio-"):
            fb = {n: grpc.aio.insecure_channel(a) for n, a in fallbacks.items()}
            channel = aio_channel(path, address, mc, service=service, fallback_channels=fb, outcomes=outcomes)
            self._closers += [channel, *fb.values()]
            self.stub = pb_grpc.EchoServiceStub(channel)
        elif kind == "sync-guard":
            plain = grpc.insecure_channel(address)
            self._closers.append(plain)
            stub = pb_grpc.EchoServiceStub(plain)
            fb_stubs = {n: pb_grpc.EchoServiceStub(grpc.insecure_channel(a)) for n, a in fallbacks.items()}

            def backup(stub_: Any) -> Any:
                return lambda text: stub_.Echo(pb.EchoRequest(text=text), timeout=30)

            @mc.guard(
                service,
                operation="Echo",
                cost=cost,
                fallbacks={n: backup(s) for n, s in fb_stubs.items()},
                **counts,
            )
            def echo(text: str) -> pb.EchoResponse:
                return stub.Echo(pb.EchoRequest(text=text), timeout=30)

            self._sync_echo = echo
        else:
            plain_aio = grpc.aio.insecure_channel(address)
            self._closers.append(plain_aio)
            astub = pb_grpc.EchoServiceStub(plain_aio)
            fb_astubs = {
                n: pb_grpc.EchoServiceStub(grpc.aio.insecure_channel(a)) for n, a in fallbacks.items()
            }

            def abackup(stub_: Any) -> Any:
                async def call(text: str) -> Any:
                    return await stub_.Echo(pb.EchoRequest(text=text), timeout=30)

                return call

            @mc.guard(
                service,
                operation="Echo",
                cost=cost,
                fallbacks={n: abackup(s) for n, s in fb_astubs.items()},
                **counts,
            )
            async def aecho(text: str) -> pb.EchoResponse:
                return await astub.Echo(pb.EchoRequest(text=text), timeout=30)

            self._async_echo = aecho

    async def echo(self, text: str = "hi", timeout: float | None = None) -> pb.EchoResponse:
        if self.sync:
            return await asyncio.to_thread(self.stub.Echo, pb.EchoRequest(text=text), timeout=timeout)
        if self.kind.startswith("aio-"):
            return await self.stub.Echo(pb.EchoRequest(text=text), timeout=timeout)
        if self.kind == "sync-guard":
            return await asyncio.to_thread(self._sync_echo, text)
        return await self._async_echo(text)

    async def close(self) -> None:
        for closer in self._closers:
            result = closer.close()
            if asyncio.iscoroutine(result):
                await result
