"""One recovery check asked of a target: ``grpc.health.v1.Health/Check`` or an HTTP GET.

:class:`TargetAsker` never raises: every outcome is one answer of a small set — the
health status's name (``SERVING``, ``NOT_SERVING``, ``SERVICE_UNKNOWN``, ``UNKNOWN``),
``timeout`` (no answer within the check's timeout), ``unreachable`` (refused or no
route), ``error`` (any other failure). Only ``SERVING`` is healthy. An HTTP answer is
``SERVING`` for any 2xx and ``NOT_SERVING`` for anything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.client.recovery_check import RecoveryCheck

from .check_lookups import CheckLookups

_log = logging.getLogger("mission_control.server.recovery_checks")

SERVING = "SERVING"
ANSWERS = ("SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN", "timeout", "unreachable", "error")
#: Most channels kept open at once (one per target); the least recently used goes first.
MAX_CHANNELS = 256
#: gRPC's own reconnect backoff grows to two minutes: a recovered target would be seen that
#: late. A checked target is tried again at most this long after a failed connect.
_RECONNECT_MS = 250


class TargetAsker:
    """Asks targets over channels (gRPC) or one client session (HTTP) kept between checks."""

    def __init__(self) -> None:
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._lookups: CheckLookups | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def __call__(self, check: RecoveryCheck) -> str:
        try:
            if check.is_http:
                return await asyncio.wait_for(self._http(check), check.timeout_secs)
            return await self._grpc(check)
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientConnectionError, OSError):
            return "unreachable"
        except asyncio.CancelledError:
            raise
        except Exception:  # a check's failure is an answer, never the loop's end
            _log.debug("recovery check of %s failed", check.target, exc_info=True)
            return "error"

    async def _grpc(self, check: RecoveryCheck) -> str:
        stub = health_pb2_grpc.HealthStub(self._channel(check.target))
        request = health_pb2.HealthCheckRequest(service=check.health_service)
        try:
            reply = await stub.Check(request, timeout=check.timeout_secs)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            if err.code() is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"  # the health servicer knows no such service
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                return "unreachable"
            return "error"
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name if name in ANSWERS else "UNKNOWN"

    async def _http(self, check: RecoveryCheck) -> str:
        if self._session is None or self._session.closed:
            self._lookups = self._lookups or CheckLookups()
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=self._lookups))
        async with self._session.get(check.target, allow_redirects=False) as answer:
            return SERVING if 200 <= answer.status < 300 else "NOT_SERVING"

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.pop(target, None)
        if channel is None:
            options = [
                ("grpc.initial_reconnect_backoff_ms", _RECONNECT_MS),
                ("grpc.min_reconnect_backoff_ms", _RECONNECT_MS),
                ("grpc.max_reconnect_backoff_ms", _RECONNECT_MS),
            ]
            # Named with the dns scheme: gRPC never reads the target's host as a scheme
            # (``unix:1234`` would be a local socket; the policy's check refuses such names too).
            channel = grpc.aio.insecure_channel(f"dns:///{target}", options=options)
            while len(self._channels) >= MAX_CHANNELS:
                _, oldest = self._channels.popitem(last=False)
                task = asyncio.get_running_loop().create_task(oldest.close(None))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._channels[target] = channel
        return channel

    async def close(self) -> None:
        """Close every channel and the HTTP session."""
        channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            await channel.close(None)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._lookups is not None:
            await self._lookups.close()
            self._lookups = None
