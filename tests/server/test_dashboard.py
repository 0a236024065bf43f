"""The control plane over HTTP: the fleet picture, live events, operator actions under the
gRPC writes' rules, /metrics and the HTTP health probes — a real control plane on a real etcd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mission_control.client.config import policy_from_proto
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane, start_control_plane
from mission_control.server.auth import AccessPolicy
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.fleet_roster import FleetAgent
from mission_control.server.fleet_view import MAX_AGENT_ROWS
from mission_control.server.roster_publish import pack
from mission_control.server.store import EtcdStore, Write

from tests.support.agents import RawAgent

TOKEN = "dashboard-admin-token-0123456789"
POLICY = policy_pb2.ServicePolicy(
    service="llm_provider", failure_threshold=3, success_threshold=2, wait_duration_secs=30
)


@pytest.fixture
async def plane(etcd_server: EtcdProcess, prefix: str, tmp_path: Path) -> AsyncIterator[RunningControlPlane]:
    tokens = tmp_path / "admins"
    tokens.write_text(f"{TOKEN}\n")
    access = AccessPolicy.build(listen="127.0.0.1:0", admin_tokens_file=tokens)
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, access=access, http="127.0.0.1:0"
    )
    yield running
    await running.stop(grace=0.5)


def base(running: RunningControlPlane) -> str:
    assert running.dashboard is not None
    return f"http://{running.dashboard.address}"


async def state(session: aiohttp.ClientSession, running: RunningControlPlane) -> dict[str, Any]:
    async with session.get(f"{base(running)}/api/state") as reply:
        assert reply.status == 200
        return await reply.json()  # type: ignore[no-any-return]


async def stored(running: RunningControlPlane, name: str) -> dict[str, Any] | None:
    entry = await running.plane.store.get(running.plane.breaker_key(name))
    return None if entry is None else json.loads(entry.value)


async def test_the_picture_follows_a_trip_live(plane: RunningControlPlane) -> None:
    await plane.plane.put_policy(policy_from_proto(POLICY))
    address = f"127.0.0.1:{plane.port}"
    async with aiohttp.ClientSession() as session, RawAgent(address, "agent-a", ("llm_provider",)) as agent:
        async with session.get(f"{base(plane)}/api/events") as events:
            assert events.headers["Content-Type"].startswith("text/event-stream")
            await agent.report(
                "llm_provider", failures=3, trailing_failures=3, errors_by_type={"LLMProviderUnavailable": 3}
            )
            seen = await asyncio.wait_for(_first_picture(events, "OPEN"), 30)
        (breaker,) = seen["breakers"]
        assert breaker["name"] == "llm_provider" and breaker["consecutive_failures"] in (0, 3)
        assert 0 < breaker["open_remaining"] <= 30
        assert seen["timeline"][0]["breaker"] == "llm_provider" and seen["timeline"][0]["to"] == "OPEN"
        picture = await state(session, plane)
        assert picture["statistics"]["total_errors"] == 3  # numbers, not protobuf's strings
        assert picture["statistics"]["errors_by_type"] == {"LLMProviderUnavailable": 3}
        assert picture["by_agent"]["agent-a"]["failures"] == 3
        assert picture["by_service"]["llm_provider"]["errors_by_type"] == {"LLMProviderUnavailable": 3}
        assert [a["id"] for a in picture["agents"]] == ["agent-a"]
        assert [p["service"] for p in picture["policies"]] == ["llm_provider"]
        assert picture["leading"] and picture["store_ok"]


async def test_actions_need_an_admin_and_same_origin_and_change_nothing_otherwise(
    plane: RunningControlPlane,
) -> None:
    await plane.plane.put_policy(policy_from_proto(policy_pb2.ServicePolicy(service="storage_backend")))
    url = f"{base(plane)}/api/breakers/storage_backend/force-open"
    body = {"reason": "disk maintenance"}
    json_type = {"Content-Type": "application/json"}
    refused = [
        ({**json_type}, 401),  # no token
        ({**json_type, "Authorization": "Bearer not-the-token"}, 403),
        ({**json_type, "Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}, 403),
        ({**json_type, "Authorization": f"Bearer {TOKEN}", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {TOKEN}"}, 415),
    ]
    async with aiohttp.ClientSession() as session:
        for headers, status in refused:
            async with session.post(url, data=json.dumps(body), headers=headers) as reply:
                assert reply.status == status, (headers, await reply.text())
                assert "error" in await reply.json()
        assert await stored(plane, "storage_backend") is None
        assert "storage_backend" not in plane.plane.breakers.names()
        async with RawAgent(f"127.0.0.1:{plane.port}", "agent-b", ("storage_backend",)) as agent:
            same_origin = {**json_type, "Authorization": f"Bearer {TOKEN}", "Origin": base(plane)}
            async with session.post(url, data=json.dumps({"reason": " "}), headers=same_origin) as reply:
                assert reply.status == 400 and "reason is required" in await reply.text()
            async with session.post(url, data=json.dumps(body), headers=same_origin) as reply:
                assert reply.status == 200, await reply.text()
                assert (await reply.json())["state"] == "FORCED_OPEN"
            # audited as every write: who (the token's fingerprint, never the token) and why
            page = await plane.plane.audit.page(kinds=("breaker",), name="storage_backend")
            [record] = page.records
            assert (record.action, record.reason) == ("breaker.forced_open", "disk maintenance")
            assert record.identity.startswith("token:sha256:") and TOKEN not in record.identity
            # exactly as the CLI's write: stored in etcd with the reason, pushed to agents
            record = await stored(plane, "storage_backend")
            text = json.dumps(record)
            assert "FORCED_OPEN" in text and "disk maintenance" in text
            await agent.wait_for(lambda: agent.state("storage_backend") == pb.BREAKER_STATE_FORCED_OPEN)
            bad = f"{base(plane)}/api/breakers/storage_backend/explode"
            async with session.post(bad, data="{}", headers=same_origin) as reply:
                assert reply.status == 404
            too_long = json.dumps({"reason": "x" * 600})
            reset = url.replace("force-open", "reset")
            async with session.post(reset, data=too_long, headers=same_origin) as reply:
                assert reply.status == 400
            assert agent.state("storage_backend") == pb.BREAKER_STATE_FORCED_OPEN


async def test_without_admins_only_a_loopback_dashboard_takes_writes(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http="127.0.0.1:0"
    )
    try:
        assert running.dashboard is not None and running.dashboard.open_writes
        await running.plane.put_policy(policy_from_proto(policy_pb2.ServicePolicy(service="object_storage")))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base(running)}/api/breakers/object_storage/disable",
                json={"reason": "local test"},
            ) as reply,
        ):
            assert reply.status == 200, await reply.text()
        assert running.plane.breakers.find("object_storage") is not None
    finally:
        await running.stop(grace=0.5)
    # the same rule on every interface: writes refused, reads served
    everywhere = AccessPolicy.build(listen="0.0.0.0:0")
    assert not everywhere.open_writes


async def test_metrics_and_http_health(plane: RunningControlPlane) -> None:
    await plane.plane.put_policy(policy_from_proto(POLICY))
    async with RawAgent(f"127.0.0.1:{plane.port}", "agent-m", ("llm_provider",)) as agent:
        failures = {"StorageFailure": 3}
        await agent.report("llm_provider", failures=3, trailing_failures=3, errors_by_type=failures)
        await agent.wait_for(lambda: agent.state("llm_provider") == pb.BREAKER_STATE_OPEN)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base(plane)}/metrics") as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await reply.text()
            async with session.get(f"{base(plane)}/healthz") as reply:
                assert reply.status == 200
            async with session.get(f"{base(plane)}/readyz") as reply:
                assert reply.status == 200 and (await reply.json())["etcd"] == "reachable"
    samples = _samples(text)
    assert samples['mission_control_breaker_state{breaker="llm_provider",state="OPEN"}'] == 1
    assert samples['mission_control_breaker_state{breaker="llm_provider",state="CLOSED"}'] == 0
    assert samples["mission_control_errors_total"] == 3
    assert samples['mission_control_errors_by_type_total{error_type="StorageFailure"}'] == 3
    assert samples['mission_control_errors_by_agent_total{agent="agent-m"}'] == 3
    assert samples["mission_control_circuit_breaker_opens_total"] == 1
    assert samples["mission_control_agents_connected"] == 1
    assert samples["mission_control_leader"] == 1 and samples["mission_control_store_up"] == 1
    assert 0 < samples['mission_control_breaker_open_remaining_seconds{breaker="llm_provider"}'] <= 30


async def test_readyz_follows_etcd(plane: RunningControlPlane) -> None:
    plane.plane._set_store_ok(False)  # what the health loop does when etcd stops answering
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{base(plane)}/readyz") as reply:
            assert reply.status == 503 and (await reply.json())["etcd"] == "unreachable"
    finally:
        plane.plane._set_store_ok(True)


async def test_a_background_task_that_dies_is_logged_and_readyz_mirrors_grpc_health(
    plane: RunningControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    roster = plane.plane.roster
    assert roster is not None

    def broken(*args: object) -> None:
        raise RuntimeError("a defect in the roster")

    roster.apply = broken  # type: ignore[method-assign]
    await plane.plane.store.commit([Write(f"{roster.prefix}rep-z/0", b"{}")])  # type: ignore[attr-defined]
    for _ in range(500):
        if plane.plane.failed_tasks:
            break
        await asyncio.sleep(0.02)
    assert plane.plane.failed_tasks == ["roster.follow"] and not plane.plane.healthy
    assert "background task roster.follow ended" in caplog.text
    async with aiohttp.ClientSession() as session, session.get(f"{base(plane)}/readyz") as reply:
        body = await reply.json()
        assert reply.status == 503 and body == {
            "status": "NOT_SERVING", "etcd": "reachable", "failed_tasks": ["roster.follow"],
        }  # fmt: skip
    plane.plane.failed_tasks.clear()  # the fixture's stop expects a healthy plane


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_an_http_port_in_use_is_a_clear_error(etcd_server: EtcdProcess, prefix: str) -> None:
    first = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http="127.0.0.1:0"
    )
    try:
        assert first.dashboard is not None
        with pytest.raises(OSError):
            await start_control_plane(
                EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http=first.dashboard.address
            )
    finally:
        await first.stop(grace=0.5)


async def _first_picture(events: aiohttp.ClientResponse, state: str) -> dict[str, Any]:
    """The first pushed picture with a breaker in ``state`` (the stream itself never ends)."""
    async for line in events.content:
        if line.startswith(b"data: "):
            picture: dict[str, Any] = json.loads(line[6:])
            if any(b["state"] == state for b in picture["breakers"]):
                return picture
    raise AssertionError("the event stream ended")


async def test_any_replica_shows_the_fleet(etcd_server: EtcdProcess, prefix: str) -> None:
    """Two replicas on one etcd: an agent of the follower trips a breaker the leader decides,
    and the follower's page shows it, with its own agent and who leads."""
    replicas = []
    for name in ("rep-a", "rep-b"):
        replicas.append(
            await start_control_plane(
                EtcdStore([etcd_server.endpoint]),
                "127.0.0.1:0",
                prefix=prefix,
                instance_id=name,
                http="127.0.0.1:0",
            )
        )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any(r.plane.leading for r in replicas) or not all(
            r.plane.leading or r.plane.leadership.leader_id
            for r in replicas  # type: ignore[union-attr]
        ):
            assert loop.time() < deadline, "no leader"
            await asyncio.sleep(0.05)
        leader = next(r for r in replicas if r.plane.leading)
        follower = next(r for r in replicas if not r.plane.leading)
        await leader.plane.put_policy(policy_from_proto(POLICY))
        async with (
            aiohttp.ClientSession() as session,
            RawAgent(f"127.0.0.1:{follower.port}", "agent-f", ("llm_provider",)) as agent,
        ):
            await agent.report("llm_provider", failures=3, trailing_failures=3)
            await agent.wait_for(lambda: agent.state("llm_provider") == pb.BREAKER_STATE_OPEN)
            async with session.get(f"{base(follower)}/api/events") as events:
                picture = await asyncio.wait_for(_first_picture(events, "OPEN"), 30)
        assert not picture["leading"] and picture["leader"] == leader.plane.instance_id
        assert picture["instance"] == follower.plane.instance_id
        assert [a["id"] for a in picture["agents"]] == ["agent-f"]
        assert picture["breakers"][0]["name"] == "llm_provider"
    finally:
        for running in replicas:
            await running.stop(grace=0.5)


async def test_a_loopback_dashboard_answers_only_loopback_names(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 is "same
    origin" with the dashboard as far as the browser knows; the Host header tells."""
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http="127.0.0.1:0"
    )
    try:
        assert running.dashboard is not None and running.dashboard.open_writes
        await running.plane.put_policy(policy_from_proto(policy_pb2.ServicePolicy(service="storage_backend")))
        url = f"{base(running)}/api/breakers/storage_backend/force-open"
        port = running.dashboard.address.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"reason": "x"}, headers=rebound) as reply:
                assert reply.status == 421
            for path in ("/api/state", "/metrics", "/"):
                async with session.get(
                    base(running) + path, headers={"Host": f"evil.example:{port}"}
                ) as reply:
                    assert reply.status == 421, path
            # an Origin of another loopback port is another site too
            other = {"Origin": "http://127.0.0.1:1"}
            async with session.post(url, json={"reason": "x"}, headers=other) as reply:
                assert reply.status == 403
            for origin in ("null", "file://", "chrome-extension://abc"):
                async with session.post(url, json={"reason": "x"}, headers={"Origin": origin}) as reply:
                    assert reply.status == 403, origin
            assert running.plane.breakers.find("storage_backend") is None
            async with session.get(
                base(running) + "/api/state", headers={"Host": f"localhost:{port}"}
            ) as reply:
                assert reply.status == 200
            same = {"Origin": base(running)}
            async with session.post(url, json={"reason": "x"}, headers=same) as reply:
                assert reply.status == 200
    finally:
        await running.stop(grace=0.5)


async def test_hostile_bodies_and_reasons_are_refused(plane: RunningControlPlane) -> None:
    url = f"{base(plane)}/api/breakers/storage_backend/force-open"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    nested = "[" * 20_000 + "]" * 20_000
    async with aiohttp.ClientSession() as session:
        for body in (nested, '{"reason": "two\\nlines"}', '{"reason": "\\u001b[2J"}', "[]", "{bad"):
            async with session.post(url, data=body, headers=headers) as reply:
                assert reply.status in (400, 413), (body[:20], reply.status)
    assert plane.plane.breakers.find("storage_backend") is None


async def test_slow_and_excess_connections_and_pages_are_bounded(plane: RunningControlPlane) -> None:
    dashboard = plane.dashboard
    assert dashboard is not None and dashboard.gate is not None
    host, port = dashboard.address.rsplit(":", 1)
    gate = dashboard.gate
    gate.first_request_secs = 0.3
    # a client that never finishes its first request is closed
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no end of headers
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    assert gate.timed_out >= 1
    # beyond the connection limit, connections are closed at once; the dashboard still serves
    gate.limit = len(gate.open) + 3
    held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    extra_reader, extra_writer = await asyncio.open_connection(host, int(port))
    assert await asyncio.wait_for(extra_reader.read(), 10) == b""
    extra_writer.close()
    assert gate.refused >= 1
    for _, w in held:
        w.close()
    gate.limit = 256
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(gate.open) > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    # event streams are bounded too
    from mission_control.server import web as web_module

    web_module_max = web_module.MAX_WATCHERS
    web_module.MAX_WATCHERS = 2
    try:
        async with aiohttp.ClientSession() as session:
            first = await session.get(f"{base(plane)}/api/events")
            second = await session.get(f"{base(plane)}/api/events")
            async with session.get(f"{base(plane)}/api/events") as third:
                assert third.status == 429
            first.close()
            second.close()
    finally:
        web_module.MAX_WATCHERS = web_module_max


async def test_invented_error_types_fill_one_bucket(plane: RunningControlPlane) -> None:
    dashboard = plane.dashboard
    assert dashboard is not None
    for i in range(100):
        summary = pb.OutcomeSummary(service="llm_provider", failures=1, errors_by_type={f"Made{i}": 1})
        dashboard.activity.record("agent-x", summary)
    row = dashboard.activity.rows[("agent-x", "llm_provider")]
    assert len(row.errors_by_type) <= 17 and row.errors_by_type["other"] == 100 - 16
    assert len(dashboard.activity.by(1)["llm_provider"]["errors_by_type"]) <= 17


async def test_rejections_by_gate_and_fallbacks_reach_the_page_and_metrics(
    plane: RunningControlPlane,
) -> None:
    """A real agent: its primary fails until the breaker opens, a backup serves, the
    breaker then refuses calls; the page and /metrics say which gate refused and how often
    the backup served."""
    from mission_control.client.agent import MissionControl
    from mission_control.client.errors import LLMProviderUnavailable

    primary = policy_from_proto(POLICY).replace(fallbacks=("llm_backup",), max_retries=0)
    await plane.plane.put_policy(primary)
    mc = MissionControl("agent-fb", control_plane=f"127.0.0.1:{plane.port}", flush_interval=0.02).start()
    try:
        assert await asyncio.to_thread(mc.wait_connected, 30)

        async def backup() -> str:
            return "from the backup"

        @mc.guard("llm_provider", fallbacks={"llm_backup": backup})
        async def generate() -> str:
            raise LLMProviderUnavailable("primary", "down")

        served = [await generate() for _ in range(6)]  # 3 failures trip it, then it refuses
        assert served == ["from the backup"] * 6
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                row = (await state(session, plane))["by_service"].get("llm_provider", {})
                if row.get("fallbacks_served") == 6 and row.get("rejected_by_reason", {}).get("breaker") == 3:
                    break
                assert loop.time() < deadline, row
                await asyncio.sleep(0.05)
            assert row["failures"] == 3 and row["rejected"] == 3
            async with session.get(f"{base(plane)}/metrics") as reply:
                samples = _samples(await reply.text())
        assert samples['mission_control_calls_rejected_by_reason_total{reason="breaker"}'] == 3
        assert samples['mission_control_fallbacks_total{result="served"}'] == 6
    finally:
        await asyncio.to_thread(mc.close)


async def test_invented_rejection_gates_are_not_counted(plane: RunningControlPlane) -> None:
    async with RawAgent(f"127.0.0.1:{plane.port}", "agent-r", ("llm_provider",)) as agent:
        reasons = {"breaker": 5, "made-up": 7, "x" * 200: 1}
        await agent.report("llm_provider", rejected=3, rejected_by_reason=reasons, fallbacks_served=10**6)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while plane.plane.stats.rejected < 3:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
    assert dict(plane.plane.stats.rejected_by_reason) == {"breaker": 3}
    assert plane.plane.stats.fallbacks_served == 3


async def test_the_picture_lists_a_bounded_number_of_agents_and_counts_the_rest(
    plane: RunningControlPlane,
) -> None:
    roster = plane.plane.roster
    assert roster is not None
    await asyncio.wait_for(roster.loaded.wait(), 10)  # a load replaces what is applied before it
    crowd = [FleetAgent(f"agent-{i:05d}", "rep-x") for i in range(MAX_AGENT_ROWS + 500)]
    for n, value in enumerate(pack("rep-x", crowd)):
        roster.apply(f"{roster.prefix}rep-x/{n}", value, 1, 1)
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # a picture is built again when older than half a second
            picture = await state(session, plane)
            if picture["agents"]:
                break
            await asyncio.sleep(0.1)
    assert len(picture["agents"]) == MAX_AGENT_ROWS and picture["agents_total"] == MAX_AGENT_ROWS + 500
    assert {r["id"]: r["agents"] for r in picture["replicas"]}["rep-x"] == MAX_AGENT_ROWS + 500
