"""What the outcome ledger refused to count, shown by ``stats`` (the RPC and the CLI) and the
dashboard's JSON: batches resent after they were counted, batches too far behind their
session's newest, and the sessions held."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.app import RunningControlPlane
from mission_control.server.outcome_ledger import WINDOW

from tests.server.test_dashboard import plane, state  # noqa: F401  (plane: the fixture)
from tests.server.test_operator_errors import run
from tests.support.agents import RawAgent


async def test_stats_show_the_batches_not_counted_again(plane: RunningControlPlane) -> None:  # noqa: F811
    address = f"127.0.0.1:{plane.port}"
    async with RawAgent(address, "agent-l", ("ledger_svc",), series="l1") as agent:
        await agent.report_numbered(1, "ledger_svc", failures=1)
        agent.received.clear()
        await agent.report_numbered(1, "ledger_svc", failures=1)  # its ack was lost: sent again
        await agent.report_numbered(WINDOW + 10, "ledger_svc", failures=1)
        await agent.report_numbered(2, "ledger_svc", failures=1)  # too far behind to tell
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stats = (await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)).statistics
    assert (stats.outcome_batches_resent, stats.outcome_batches_too_old) == (1, 1)
    assert stats.outcome_sessions_held == 1
    assert stats.errors_by_service["ledger_svc"] == 2

    shown = await asyncio.to_thread(run, "stats", "--server", address)
    assert "batches not recounted  1 resent, 1 too old (1 sessions held)\n" in shown.stdout, shown.stdout
    # the dashboard's picture is built again when older than 0.5 s: one asked for while the
    # batches came may not hold them yet
    deadline = asyncio.get_running_loop().time() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            statistics = (await state(session, plane))["statistics"]
            if statistics["outcome_batches_resent"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    assert statistics["outcome_batches_resent"] == 1 and statistics["outcome_batches_too_old"] == 1
    assert statistics["outcome_sessions_held"] == 1
