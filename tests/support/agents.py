"""A bare agent speaking the Connect protocol directly, to test the control plane alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc


class RawAgent:
    """Opens a Connect stream, records every message the control plane sends."""

    def __init__(
        self,
        address: str,
        agent_id: str,
        services: tuple[str, ...] = (),
        series: str = "",
        instance: str = "",
    ) -> None:
        self.address = address
        self.agent_id = agent_id
        #: The hello's instance (an agent process's random id; "" as older agents).
        self.instance = instance
        self.services = services
        #: The hello's outcome_series: batches numbered under it are counted once.
        self.series = series
        self.received: list[pb.ConnectResponse] = []
        self.breakers: dict[str, pb.Breaker] = {}
        self.policies: dict[str, pb.ServicePolicy | None] = {}
        self.grants: list[pb.ProbeGrant] = []
        self._outbox: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.error: grpc.RpcError | None = None

    async def __aenter__(self) -> RawAgent:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = pb_grpc.ControlPlaneServiceStub(self.channel)
        self._task = asyncio.create_task(self._run())
        await self.wait_for(lambda: any(r.HasField("snapshot") for r in self.received))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._outbox.put(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.channel.close()

    async def _requests(self):  # type: ignore[no-untyped-def]
        yield pb.ConnectRequest(
            hello=pb.AgentHello(
                agent_id=self.agent_id,
                session_id="s",
                services=self.services,
                outcome_series=self.series,
                instance=self.instance,
            )
        )
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            yield item

    async def _run(self) -> None:
        try:
            async for response in self.stub.Connect(self._requests()):
                self._apply(response)
                async with self._changed:
                    self.received.append(response)
                    self._changed.notify_all()
        except grpc.RpcError as err:
            self.error = err
            async with self._changed:
                self._changed.notify_all()

    def _apply(self, response: pb.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "snapshot":
            for b in response.snapshot.breakers:
                self.breakers[b.name] = b
            for p in response.snapshot.policies:
                self.policies[p.service] = p
        elif kind == "breaker":
            self.breakers[response.breaker.name] = response.breaker
        elif kind == "policy":
            update = response.policy
            self.policies[update.service] = None if update.deleted else update.policy
        elif kind == "probe_grant":
            self.grants.append(response.probe_grant)

    def state(self, name: str) -> int:
        b = self.breakers.get(name)
        return b.state if b is not None else pb.BREAKER_STATE_UNSPECIFIED

    async def send(self, request: pb.ConnectRequest) -> None:
        await self._outbox.put(request)

    async def report(self, service: str, **counts: int) -> None:
        summary = pb.OutcomeSummary(service=service, **counts)
        await self.send(pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=[summary])))

    async def report_numbered(self, sequence: int, service: str, **counts: int) -> None:
        """Report batch ``sequence`` and wait for its acknowledgement."""
        await self.send_numbered(sequence, service, **counts)
        await self.wait_for(lambda: any(r.outcome_ack.sequence == sequence for r in self.received))

    async def send_numbered(self, sequence: int, service: str, **counts: int) -> None:
        """Report batch ``sequence`` without waiting for its acknowledgement."""
        summary = pb.OutcomeSummary(service=service, **counts)
        await self.send(pb.ConnectRequest(outcomes=pb.OutcomeBatch(sequence=sequence, summaries=[summary])))

    def acknowledged(self) -> int:
        """The highest sequence acknowledged (acknowledgements are cumulative)."""
        return max((r.outcome_ack.sequence for r in self.received if r.HasField("outcome_ack")), default=0)

    async def ask_probe(self, service: str) -> None:
        await self.send(pb.ConnectRequest(probe_request=pb.ProbeRequest(service=service)))

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: check() or self.error is not None)

        await asyncio.wait_for(until(), timeout)
        if not check():
            raise AssertionError(f"{self.agent_id}: stream ended: {self.error}")
