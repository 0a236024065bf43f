"""A call whose deadline has passed before it could be made: OperationTimeout, nothing
counted, no fallback tried (guard inside a guard, and timeout=0 / -1 on the interceptors)."""

from __future__ import annotations

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
    policies = (
        policy("storage_backend", failure_threshold=2, fallbacks=("storage_backup",)),
        policy("storage_backup", failure_threshold=2),
        policy("outer", timeout_secs=0.05),
    )
    return MissionControl("a", config={p.service: p for p in policies})


def _untouched(mc: MissionControl, *services: str) -> None:
    for service in services:
        tally = mc.view.get(service).tally
        assert (tally.successes, tally.failures) == (0, 0), service
        assert mc.view.get(service).bulkhead.in_flight == 0


def test_a_call_made_after_its_callers_deadline_is_not_made_nor_counted() -> None:
    mc = _agent()
    called: list[str] = []

    def backup(row: int) -> str:
        called.append("backup")
        return "backup"

    @mc.guard("storage_backend", fallbacks={"storage_backup": backup})
    def save(row: int) -> str:
        called.append("primary")
        return "primary"

    for row in range(3):
        with pytest.raises(OperationTimeout), mc.guard("outer"):
            time.sleep(0.08)  # the outer call's time runs out
            try:
                save(row)
            except OperationTimeout as inner:
                assert inner.context is not None and inner.context.service == "storage_backend"
                raise
        with pytest.raises(OperationTimeout), mc.guard("outer"):
            time.sleep(0.08)
            with mc.guard("storage_backend"):  # the context manager: never entered
                called.append("block")
    assert called == []
    _untouched(mc, "storage_backend", "storage_backup")


@pytest.mark.parametrize("timeout", [0, -1])
def test_timeout_zero_or_negative_is_not_made_nor_counted_sync(timeout: float, path: str) -> None:
    mc = _agent()
    with Upstream("primary") as up, Upstream("backup") as bk:
        fallback = {"storage_backup": grpc.insecure_channel(bk.address)}
        channel = sync_channel(
            path, grpc.insecure_channel(up.address), mc, service="storage_backend", fallback_channels=fallback
        )
        stub = pb_grpc.EchoServiceStub(channel)
        for _ in range(3):
            with pytest.raises(OperationTimeout):
                stub.Echo(pb.EchoRequest(text="x"), timeout=timeout)
            with pytest.raises(OperationTimeout):
                stub.Echo.future(pb.EchoRequest(text="x"), timeout=timeout).result()
        assert (up.calls, bk.calls) == (0, 0)
    _untouched(mc, "storage_backend", "storage_backup")


@pytest.mark.parametrize("timeout", [0, -1])
async def test_timeout_zero_or_negative_is_not_made_nor_counted_aio(timeout: float, path: str) -> None:
    mc = _agent()
    with Upstream("primary") as up, Upstream("backup") as bk:
        fallback = {"storage_backup": grpc.aio.insecure_channel(bk.address)}
        async with aio_channel(
            path, up.address, mc, service="storage_backend", fallback_channels=fallback
        ) as channel:
            stub = pb_grpc.EchoServiceStub(channel)
            for _ in range(3):
                with pytest.raises(OperationTimeout):
                    await stub.Echo(pb.EchoRequest(text="x"), timeout=timeout)
        assert (up.calls, bk.calls) == (0, 0)
    _untouched(mc, "storage_backend", "storage_backup")
