"""A follower replica's link to the leader: its agents' outcomes and probe requests go up,
probe permits come back down.

The follower talks to the leader like an agent does — one Connect stream, agent id
``replica:<instance>`` — so the leader merges every replica's outcomes into its decisions
without any extra etcd traffic. Outcomes are summed while the link is down (during a
failover) and sent once a leader answers, so failures reported meanwhile still count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from mission_control.client.view import Tally
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from .control_plane import ControlPlane

_log = logging.getLogger("mission_control.server.relay")


class LeaderRelay:
    def __init__(self, plane: ControlPlane, token: str | None = None, flush_interval: float = 0.02) -> None:
        self.plane = plane
        self.agent_id = f"replica:{plane.instance_id}"
        self.flush_interval = flush_interval
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._tallies: dict[str, Tally] = {}
        self._asked: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._held: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._wake = asyncio.Event()
        self.connected = False

    # -- from this replica's agents ---------------------------------------------

    def add(self, agent_id: str, summary: pb.OutcomeSummary) -> None:
        tally = self._tallies.setdefault(summary.service, Tally())
        if summary.successes:
            tally.trailing_failures = summary.trailing_failures
        else:
            tally.trailing_failures += summary.failures
        tally.successes += summary.successes
        tally.failures += summary.failures
        tally.rejected += summary.rejected
        tally.probe_successes += summary.probe_successes
        tally.probe_failures += summary.probe_failures
        tally.probes_released += summary.probes_released
        tally.recovery_attempts += summary.recovery_attempts
        tally.recovery_successes += summary.recovery_successes
        tally.errors_by_type.update(dict(summary.errors_by_type))
        tally.errors_by_operation.update(dict(summary.errors_by_operation))
        used = summary.probe_successes + summary.probe_failures + summary.probes_released
        if used:
            held = self._held[summary.service]
            held[agent_id] = max(0, held[agent_id] - used)
        if summary.failures or summary.probe_failures or summary.rejected:
            self._wake.set()

    def ask_probe(self, agent_id: str, service: str) -> None:
        if agent_id not in self._waiting[service]:
            self._waiting[service].append(agent_id)
        self._asked.put_nowait(service)
        self._wake.set()

    def agent_left(self, agent_id: str) -> None:
        for service, held in self._held.items():
            count = held.pop(agent_id, 0)
            if count:
                self._tallies.setdefault(service, Tally()).probes_released += count
        for waiting in self._waiting.values():
            with contextlib.suppress(ValueError):
                waiting.remove(agent_id)

    # -- the stream ------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.05
        while True:
            leadership = self.plane.leadership
            address = leadership.leader_address if leadership and not leadership.leading else None
            if address is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await self._stream(address)
                backoff = 0.05
            except (grpc.RpcError, OSError) as err:
                _log.info("link to the leader at %s broke (%s)", address, type(err).__name__)
            finally:
                self.connected = False
            if leadership is not None:
                with contextlib.suppress(Exception):
                    await leadership.refresh_leader()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _stream(self, address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            call = stub.Connect(self._requests(), metadata=self._metadata)
            async for response in call:
                if response.HasField("snapshot"):
                    self.connected = True
                elif response.HasField("probe_grant"):
                    self._hand_out(response.probe_grant)
                leadership = self.plane.leadership
                if leadership is None or leadership.leading or leadership.leader_address != address:
                    call.cancel()
                    return

    async def _requests(self) -> AsyncIterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=self.agent_id, labels={"relay": "true"}))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            batch = self._batch()
            if batch is not None:
                yield batch
            while not self._asked.empty():
                service = self._asked.get_nowait()
                yield pb.ConnectRequest(probe_request=pb.ProbeRequest(service=service))

    def _batch(self) -> pb.ConnectRequest | None:
        tallies, self._tallies = self._tallies, {}
        summaries = [t.to_proto(name) for name, t in tallies.items() if not t.empty()]
        if not summaries:
            return None
        return pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=summaries))

    def drain(self) -> list[pb.OutcomeSummary]:
        """What was gathered for a leader that turned out to be this replica."""
        tallies, self._tallies = self._tallies, {}
        return [t.to_proto(name) for name, t in tallies.items() if not t.empty()]

    def _hand_out(self, grant: pb.ProbeGrant) -> None:
        waiting = self._waiting[grant.service]
        while waiting:
            agent_id = waiting.popleft()
            if self.plane.hub.send_to_agent(agent_id, pb.ConnectResponse(probe_grant=grant)):
                self._held[grant.service][agent_id] += grant.permits
                return
        # nobody here wants it any more: give it back to the fleet
        self._tallies.setdefault(grant.service, Tally()).probes_released += grant.permits
        self._wake.set()
