"""Shadow mode's figures: the candidate's breaker rule (pure, on an injected clock), what a
hostile agent may claim, and the dashboard's side-by-side table on a real control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_from_proto
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane, start_control_plane
from mission_control.server.auth import AccessPolicy
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.operator_shadow import read_candidate
from mission_control.server.shadow import ShadowTrials
from mission_control.server.shadow_ops import clear_candidate, put_candidate
from mission_control.server.store import EtcdStore, Write

from tests.support.agents import RawAgent

SERVICE = "llm_provider"
WINDOW = 36000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_candidates_breaker_opens_waits_and_closes_over_the_same_outcomes() -> None:
    clock = Clock()
    trials = ShadowTrials(lambda service: BreakerState.CLOSED, clock)
    candidate = ServicePolicy(SERVICE, failure_threshold=3, wait_duration_secs=10, success_threshold=2)
    trials.candidate_changed(SERVICE, candidate)

    def report(**counts: int) -> pb.ShadowServiceStatistics:
        trials.record("a", pb.OutcomeSummary(service=SERVICE, **counts))
        return trials.to_proto()[0]

    assert report(failures=2, trailing_failures=2).shadow_breaker_state == pb.BREAKER_STATE_CLOSED
    row = report(failures=1, trailing_failures=1)
    assert (row.shadow_breaker_state, row.shadow_breaker_opens) == (pb.BREAKER_STATE_OPEN, 1)
    assert row.shadow_breaker_reason == "3 consecutive failures"
    row = report(successes=4)  # open: all four would have been stopped
    assert row.shadow_rejected_by_reason == {"breaker": 4}
    clock.now += 10
    assert trials.to_proto()[0].shadow_breaker_state == pb.BREAKER_STATE_HALF_OPEN
    row = report(successes=5)  # two probes close it; the other three would have waited
    assert (row.shadow_breaker_state, row.shadow_breaker_closes) == (pb.BREAKER_STATE_CLOSED, 1)
    assert row.shadow_rejected_by_reason == {"breaker": 7}
    assert row.breaker_state == pb.BREAKER_STATE_CLOSED
    trials.candidate_changed(SERVICE, None)
    assert trials.to_proto() == []


def test_a_candidate_is_read_from_json_text_or_a_json_or_toml_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("rate_limit_requests = 10\nfailure_threshold = 3\n")
    (tmp_path / "c.json").write_text('{"rate_limit_requests": 10, "failure_threshold": 3}')
    texts = [
        '{"rate_limit_requests": 10, "failure_threshold": 3}',
        *(str(tmp_path / f) for f in ("c.toml", "c.json")),
    ]
    read = [policy_from_proto(read_candidate(SERVICE, text).policy) for text in texts]
    assert all(
        p.rate_limit_requests == 10 and p.failure_threshold == 3 and p.service == SERVICE for p in read
    )
    with pytest.raises(ConfigurationError) as bad:
        read_candidate(SERVICE, '{"rate_limit_requests": -1, "max_retries": "many", "wait_duration_secs": 0}')
    assert {f for f, _ in bad.value.violations} == {
        "rate_limit_requests",
        "max_retries",
        "wait_duration_secs",
    }
    with pytest.raises(ConfigurationError):
        read_candidate(SERVICE, '{"service": "storage_backend"}')  # another service's policy
    for not_a_table in ("[1, 2]", "null", "7"):  # JSON, but not an object: said so, not "no such file"
        with pytest.raises(ConfigurationError, match="must be a table"):
            read_candidate(SERVICE, not_a_table)


@pytest.fixture
async def plane(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[RunningControlPlane]:
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http="127.0.0.1:0"
    )
    yield running
    await running.stop(grace=0.5)


async def until(check: Any, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return value


async def test_an_agent_cannot_invent_gates_or_swamp_the_figures(plane: RunningControlPlane) -> None:
    await put_candidate(plane.plane, ServicePolicy(SERVICE, rate_limit_requests=1))
    async with RawAgent(f"127.0.0.1:{plane.port}", "agent-r", (SERVICE,)) as agent:
        claimed = {"rate_limit": 10**6, "made-up": 7, "breaker": 5}
        await agent.report(
            SERVICE, successes=2, shadow_calls=10**9, shadow_rejected_by_reason=claimed, shadow_retries=50
        )

        async def row() -> Any:
            rows = plane.plane.trials.to_proto()
            return rows and rows[0].calls and rows[0]

        shown = await until(row)
    assert shown.calls <= 2 + 1024  # the calls reported, and at most a batch's worth in flight
    assert dict(shown.shadow_rejected_by_reason) == {"rate_limit": shown.calls}
    assert shown.shadow_retries == 0  # no failure was reported: nothing to retry


async def test_the_dashboard_shows_enforced_and_shadow_side_by_side(plane: RunningControlPlane) -> None:
    await plane.plane.put_policy(
        ServicePolicy(SERVICE, rate_limit_requests=100, rate_limit_window_secs=WINDOW)
    )
    await put_candidate(
        plane.plane, ServicePolicy(SERVICE, rate_limit_requests=2, rate_limit_window_secs=WINDOW)
    )
    mc = MissionControl("agent-d", control_plane=f"127.0.0.1:{plane.port}", flush_interval=0.02).start()
    try:
        assert await asyncio.to_thread(mc.wait_connected, 30)
        assert mc.view.shadow_of(SERVICE) is not None

        @mc.guard(SERVICE)
        async def generate() -> str:
            return "ok"

        assert [await generate() for _ in range(5)] == ["ok"] * 5
        assert plane.dashboard is not None
        url = f"http://{plane.dashboard.address}"
        async with aiohttp.ClientSession() as session:

            async def shadow_row() -> Any:
                async with session.get(f"{url}/api/state") as reply:
                    rows = (await reply.json())["shadow"]
                return rows and rows[0]["calls"] == 5 and rows[0]

            row = await until(shadow_row)
            assert row["shadow_rejected_by_reason"] == {"rate_limit": 3}
            assert row["rejected_by_reason"] == {}
            assert (row["breaker_state"], row["shadow_breaker_state"]) == ("CLOSED", "CLOSED")
            async with session.get(f"{url}/") as reply:
                assert 'id="shadow"' in await reply.text()
            assert await clear_candidate(plane.plane, SERVICE)

            async def cleared() -> bool:
                async with session.get(f"{url}/api/state") as reply:
                    return (await reply.json())["shadow"] == [] and mc.view.get(SERVICE).shadow is None

            await until(cleared)
    finally:
        await asyncio.to_thread(mc.close)


async def test_a_bad_candidate_put_in_etcd_is_refused_and_shown_and_the_last_good_one_stays(
    plane: RunningControlPlane,
) -> None:
    good = ServicePolicy(SERVICE, rate_limit_requests=7)
    await put_candidate(plane.plane, good)
    key = plane.plane.shadows.key(SERVICE)
    assert (await plane.plane.writer.commit([Write(key, b'{"rate_limit_requests": -3}')])).ok

    async def shown() -> bool:
        return any(e.key == key for e in plane.plane.policies.errors)

    await until(shown)
    assert plane.plane.shadows.stored(SERVICE)[0].rate_limit_requests == 7  # type: ignore[index]
    assert plane.plane.snapshot().shadow_policies[0].rate_limit_requests == 7


async def test_publishing_clearing_and_promoting_need_an_admin(
    etcd_server: EtcdProcess, prefix: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "admins"
    tokens.write_text("shadow-admin-token-0123456789\n")
    access = AccessPolicy.build(listen="127.0.0.1:0", admin_tokens_file=tokens)
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, access=access
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            candidate = policy_pb2.ServicePolicy(service=SERVICE, rate_limit_requests=1)
            calls = [
                stub.PutShadowPolicy(pb.PutShadowPolicyRequest(policy=candidate)),
                stub.DeleteShadowPolicy(pb.DeleteShadowPolicyRequest(service=SERVICE)),
                stub.PromoteShadowPolicy(pb.PromoteShadowPolicyRequest(service=SERVICE)),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert not (await stub.ListShadowPolicies(pb.ListShadowPoliciesRequest())).policies
            admin = (("authorization", "Bearer shadow-admin-token-0123456789"),)
            await stub.PutShadowPolicy(pb.PutShadowPolicyRequest(policy=candidate), metadata=admin)
            listed = await stub.ListShadowPolicies(pb.ListShadowPoliciesRequest())
            assert [p.rate_limit_requests for p in listed.policies] == [1]
    finally:
        await running.stop(grace=0.5)


async def test_the_leader_counts_what_a_followers_agents_report(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    """Two replicas on one etcd: an agent of the follower reports; the leader's figures and
    shadow breaker include it (the follower relays outcomes to the leader)."""
    replicas = [
        await start_control_plane(
            EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, instance_id=name
        )
        for name in ("shadow-a", "shadow-b")
    ]
    try:

        async def settled() -> bool:
            leaders = [r for r in replicas if r.plane.leading]
            return len(leaders) == 1 and all(
                r.plane.leading or r.plane.leadership.leader_id  # type: ignore[union-attr]
                for r in replicas
            )

        await until(settled)
        leader = next(r for r in replicas if r.plane.leading)
        follower = next(r for r in replicas if not r.plane.leading)
        await put_candidate(leader.plane, ServicePolicy(SERVICE, failure_threshold=3, wait_duration_secs=600))

        async def followed() -> bool:
            return follower.plane.shadows.stored(SERVICE) is not None

        await until(followed)
        async with RawAgent(f"127.0.0.1:{follower.port}", "agent-f", (SERVICE,)) as agent:
            await agent.report(
                SERVICE,
                failures=3,
                trailing_failures=3,
                shadow_calls=3,
                shadow_rejected_by_reason={"quota": 1},
            )

            async def counted() -> Any:
                rows = leader.plane.trials.to_proto()
                return rows and rows[0].calls == 3 and rows[0]

            row = await until(counted)
        assert row.shadow_rejected_by_reason == {"quota": 1}
        assert (row.shadow_breaker_state, row.shadow_breaker_opens) == (pb.BREAKER_STATE_OPEN, 1)
        assert row.breaker_state == pb.BREAKER_STATE_CLOSED  # the seed's threshold is 5
    finally:
        for running in replicas:
            await running.stop(grace=0.5)
