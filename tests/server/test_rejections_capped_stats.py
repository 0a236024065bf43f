"""Calls an agent refused locally beyond what a report may count (``rejections_capped``)
show in ``GetErrorStatistics``, in ``mission-control stats`` (text and JSON) and on
``/metrics``: a live control plane, a raw agent on a Connect stream, the CLI as a process."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc.aio
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.app import RunningControlPlane

from tests.server.test_dashboard import base, plane  # noqa: F401  (plane: the fixture)
from tests.server.test_operator_errors import run
from tests.support.agents import RawAgent

SERVICE = "capped_svc"
#: What one report may count of locally refused calls on a fresh bucket: the rate limit
#: (100) times two windows times ten.
COUNTED = 100 * 2 * 10


async def statistics(address: str, **request: object) -> pb.GetErrorStatisticsResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(**request), timeout=5)  # type: ignore[arg-type]


async def test_rejections_beyond_the_cap_show_in_stats_cli_and_metrics(plane: RunningControlPlane) -> None:  # noqa: F811
    await plane.plane.put_policy(ServicePolicy(SERVICE, rate_limit_requests=100, rate_limit_window_secs=60))
    address = f"127.0.0.1:{plane.port}"
    async with RawAgent(address, "fast-refuser", (SERVICE,), series="r1") as agent:
        await agent.report_numbered(1, SERVICE, rejected=1_000_000)
    async with RawAgent(address, "quiet", (SERVICE,), series="q1") as agent:
        await agent.report_numbered(1, SERVICE, rejected=10)

    stats = (await statistics(address)).statistics
    assert dict(stats.rejections_capped) == {"fast-refuser": 1_000_000 - COUNTED}
    assert stats.calls_rejected == COUNTED + 10
    assert dict(stats.reports_refused) == {}  # refusing fast is no misbehaviour

    shown = await asyncio.to_thread(run, "stats", "--server", address)
    assert shown.returncode == 0, shown.stderr
    assert f"rejections capped      {1_000_000 - COUNTED} " in shown.stdout, shown.stdout
    assert "rejections capped, by agent:\n  fast-refuser" in shown.stdout, shown.stdout
    as_json = await asyncio.to_thread(run, "stats", "--json", "--server", address)
    assert json.loads(as_json.stdout)["rejections_capped"] == {"fast-refuser": 1_000_000 - COUNTED}

    async with aiohttp.ClientSession() as session, session.get(f"{base(plane)}/metrics") as reply:
        text = await reply.text()
    assert f"mission_control_rejections_capped_total {float(1_000_000 - COUNTED)}" in text, text


async def test_the_capped_counts_page_with_the_other_keyed_counts(plane: RunningControlPlane) -> None:  # noqa: F811
    await plane.plane.put_policy(ServicePolicy(SERVICE, rate_limit_requests=100, rate_limit_window_secs=60))
    address = f"127.0.0.1:{plane.port}"
    for n, name in enumerate(("a1", "a2", "a3")):
        async with RawAgent(address, name, (SERVICE,), series=name) as agent:
            await agent.report_numbered(1, SERVICE, rejected=COUNTED + 100 * (n + 1))
    first = await statistics(address, page_size=2)
    assert dict(first.statistics.rejections_capped) == {"a3": 300, "a2": 200}
    assert first.next_page_token
    second = await statistics(address, page_size=2, page_token=first.next_page_token)
    assert dict(second.statistics.rejections_capped) == {"a1": 100}
    assert not second.next_page_token
