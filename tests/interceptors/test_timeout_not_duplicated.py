"""A call that timed out in flight may have executed: without ``idempotent=True`` its
fallback does not run it a second time (guard sync and async, interceptors sync and aio)."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import OperationTimeout

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream


def _agent() -> MissionControl:
    primary = policy("storage_backend", timeout_secs=0.1, max_retries=0, fallbacks=("storage_backup",))
    backup = policy("storage_backup")
    return MissionControl("a", config={"storage_backend": primary, "storage_backup": backup})


@pytest.mark.parametrize("idempotent", [False, True])
async def test_guarded_functions(idempotent: bool) -> None:
    mc = _agent()
    effects: list[str] = []

    def backup(row: int) -> str:
        effects.append("backup")
        return "backup"

    async def abackup(row: int) -> str:
        return backup(row)

    @mc.guard("storage_backend", fallbacks={"storage_backup": abackup}, idempotent=idempotent)
    async def asave(row: int) -> str:
        effects.append("primary")  # sent: it may take effect even if cancelled later
        await asyncio.sleep(1)
        return "primary"

    @mc.guard("storage_backend", fallbacks={"storage_backup": backup}, idempotent=idempotent)
    def save(row: int) -> str:
        effects.append("primary")
        time.sleep(0.2)
        return "primary"

    for call in (lambda: asave(1), lambda: asyncio.to_thread(save, 2)):
        if idempotent:
            assert await call() == "backup"
        else:
            with pytest.raises(OperationTimeout):
                await call()
    expected = ["primary", "backup"] * 2 if idempotent else ["primary"] * 2
    assert effects == expected


@pytest.mark.parametrize("idempotent", [False, True])
async def test_interceptors(idempotent: bool, path: str) -> None:
    mc = _agent()
    with Upstream("primary") as up, Upstream("backup") as bk:
        up.set("slow", delay_secs=0.3)
        backup = {"storage_backup": grpc.insecure_channel(bk.address)}
        channel = sync_channel(
            path,
            grpc.insecure_channel(up.address),
            mc,
            service="storage_backend",
            fallback_channels=backup,
            idempotent=idempotent,
        )
        stub = pb_grpc.EchoServiceStub(channel)
        aio_backup = {"storage_backup": grpc.aio.insecure_channel(bk.address)}
        async with aio_channel(
            path,
            up.address,
            mc,
            service="storage_backend",
            fallback_channels=aio_backup,
            idempotent=idempotent,
        ) as achannel:
            aio_stub = pb_grpc.EchoServiceStub(achannel)
            for call in (
                lambda: asyncio.to_thread(stub.Echo, pb.EchoRequest(text="w")),
                lambda: aio_stub.Echo(pb.EchoRequest(text="w")),
            ):
                if idempotent:
                    assert (await call()).served_by == "backup"
                else:
                    with pytest.raises(OperationTimeout):
                        await call()
        # each call tried the primary once at most (on a busy machine a 0.1 s call may time
        # out before the primary sees it); the backup ran only for idempotent calls
        assert up.calls <= 2 and bk.calls == (2 if idempotent else 0)
