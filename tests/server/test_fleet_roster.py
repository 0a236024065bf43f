"""The fleet's roster: each replica publishes its agents on its own lease, in bounded shards,
batched; every replica follows all of them and ignores (and counts) malformed values."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.fleet_roster import FleetAgent, FleetRoster, decode_shard, roster_prefix
from mission_control.server.hub import Hub
from mission_control.server.policies import PolicyBook
from mission_control.server.roster_publish import MAX_SHARDS, SHARD_AGENTS, SHARD_BYTES, RosterPublisher, pack
from mission_control.server.store import EtcdStore
from mission_control.server.writes import StateWriter

from tests.support.etcd import etcdctl


def crowd(n: int, replica: str = "rep-a") -> list[FleetAgent]:
    return [
        FleetAgent(f"agent-{i:05d}", replica, f"s{i}", ("llm_provider", "db"), 2, (("team", "x"),), 1.5)
        for i in range(n)
    ]


def test_a_thousand_agents_fit_in_bounded_shards() -> None:
    values = pack("rep-a", crowd(1000))
    assert 1000 / SHARD_AGENTS <= len(values) <= MAX_SHARDS
    agents = []
    for value in values:
        assert len(value) <= SHARD_BYTES + 512
        listed, omitted = decode_shard("rep-a", value)
        assert omitted == 0 and len(listed) <= SHARD_AGENTS
        agents += listed
    assert agents == crowd(1000)


def test_a_thousand_agents_as_the_readme_describes_them_take_nine_keys() -> None:
    services, labels = (
        ("llm_provider", "vector_db", "storage_backend", "web_search"),
        (("team", "x"), ("zone", "y")),
    )
    agents = [
        FleetAgent(
            f"research-agent-{i:04d}", "cp-0123456789ab", "0f" * 16, services, 4, labels, 1.8e9, 1, 10**6
        )
        for i in range(1000)
    ]
    assert len(pack("cp-0123456789ab", agents)) <= 9


def test_agents_beyond_the_last_shard_are_counted_not_listed() -> None:
    values = pack("rep-a", crowd(MAX_SHARDS * SHARD_AGENTS + 7))
    assert len(values) == MAX_SHARDS
    listed = sum(len(decode_shard("rep-a", v)[0]) for v in values)
    assert decode_shard("rep-a", values[0])[1] == MAX_SHARDS * SHARD_AGENTS + 7 - listed > 0


def test_an_agent_declaring_much_publishes_little() -> None:
    services = tuple(f"s{i}" for i in range(900))
    many = FleetAgent("a", "r", services=services, labels=(("k" * 200, "v" * 200),) * 3)
    stored = json.loads(pack("r", [many])[0])["agents"][0]
    assert len(stored["services"]) == 16 and stored["services_total"] == 900
    assert stored["labels"] == {"k" * 64: "v" * 64}


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[]",
        b'{"replica": "other", "shard": 0, "omitted": 0, "agents": []}',
        b'{"replica": "rep-x", "shard": 0, "omitted": -1, "agents": []}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 1000001, "agents": []}',
        b'{"replica": "rep-x", "shard": 3, "omitted": 0, "agents": []}',
        b'{"replica": "rep-x", "omitted": 0, "agents": []}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": ""}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "calls": "many"}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "services": [1]}]}',
        b"[" * 100_000,
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "no spaces"}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "since": NaN}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "since": Infinity}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "since": -1e999}]}',
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "since": 1%s}]}'
        % (b"0" * 400),
        b'{"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a", "zone": NaN}]}',
        json.dumps({"replica": "rep-x", "shard": 0, "omitted": 0, "agents": [{"id": "a"}] * 251}).encode(),
    ],
)
def test_a_malformed_value_is_ignored_and_counted_once(value: bytes) -> None:
    roster = FleetRoster(None, "/p")  # type: ignore[arg-type]
    good = pack("rep-x", crowd(2, "rep-x"))[0]
    roster.apply("/p/fleet-agents/rep-x/0", good, 5, 7)
    roster.apply("/p/fleet-agents/rep-x/0", value, 6, 7)
    roster.apply("/p/fleet-agents/rep-x/0", value, 6, 7)  # the same revision again (a reload)
    assert roster.agents() == [] and roster.malformed == 1
    assert roster.problem.startswith("/p/fleet-agents/rep-x/0: ")


def test_a_key_not_of_the_form_replica_shard_is_ignored() -> None:
    roster = FleetRoster(None, "/p")  # type: ignore[arg-type]
    value = pack("rep-x", crowd(1, "rep-x"))[0]
    for shard in ("zero", "32", "00", "01", "\u0660", "+0", " 0"):  # \u0660: an Arabic-Indic zero
        roster.apply(f"/p/fleet-agents/rep-x/{shard}", value, 3, 7)
    roster.apply("/p/fleet-agents/rep x/0", pack("rep x", crowd(1, "rep x"))[0], 3, 7)
    assert roster.agents() == [] and roster.malformed == 8


def test_a_value_must_repeat_its_keys_shard_and_be_bound_to_a_lease() -> None:
    roster = FleetRoster(None, "/p")  # type: ignore[arg-type]
    roster.apply("/p/fleet-agents/rep-x/1", pack("rep-x", crowd(1, "rep-x"))[0], 3, 7)  # says shard 0
    roster.apply("/p/fleet-agents/rep-x/0", pack("rep-x", crowd(1, "rep-x"))[0], 4, 0)  # no lease
    assert roster.agents() == [] and roster.malformed == 2
    assert "not bound to a lease" in roster.problem
    roster.apply("/p/fleet-agents/rep-x/0", pack("rep-x", crowd(1, "rep-x"))[0], 5, 7)
    assert [a.id for a in roster.agents()] == ["agent-00000"]


@pytest.fixture
async def store(etcd_server: EtcdProcess) -> AsyncIterator[EtcdStore]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    yield store
    await store.close()


def publisher(store: EtcdStore, prefix: str, hub: Hub, replica: str) -> RosterPublisher:
    policies = PolicyBook(prefix)
    breakers = FleetBreakers(policies.policy_of)
    writer = StateWriter(store, lambda n: f"{prefix}/breakers/{n}", breakers, policies)
    return RosterPublisher(store, writer, hub, prefix, replica, ttl=2)


async def until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_published_on_change_only_and_withdrawn_with_the_lease(store: EtcdStore, prefix: str) -> None:
    hub = Hub()
    for i in range(1000):
        hub.connect(pb.AgentHello(agent_id=f"agent-{i}", session_id="s", services=["llm_provider"]))
    roster = FleetRoster(store, prefix)
    following = asyncio.create_task(roster.run())
    mine = publisher(store, prefix, hub, "rep-a")
    try:
        await mine.publish()
        await mine.publish()  # nothing changed: nothing written
        assert mine.writes == 1
        await until(lambda: roster.per_replica()["rep-a"] == 1000)
        for sub in list(hub.agents.values())[:990]:
            hub.disconnect(sub)
        await mine.publish()
        assert mine.writes == 2
        await until(lambda: [a.id for a in roster.agents()] == sorted(f"agent-{i}" for i in range(990, 1000)))
        keys = etcdctl(store.endpoints[0], "get", "--prefix", "--keys-only", roster_prefix(prefix)).split()
        assert keys == [f"{roster_prefix(prefix)}rep-a/0"]  # the emptied shards were deleted
        mine.lease = 0  # as if the process died: nobody revokes, the lease runs out
        await until(lambda: roster.agents() == [], timeout=20)
    finally:
        following.cancel()


async def test_a_key_that_is_not_utf8_is_skipped_and_reported_by_load_and_watch(
    store: EtcdStore, prefix: str
) -> None:
    bad: list[tuple[str, int]] = []
    store.on_bad_key = lambda key, revision: bad.append((key, revision))
    etcdctl(store.endpoints[0], "put", f"{prefix}/fleet-agents/evil\udcff/0", "{}")
    etcdctl(store.endpoints[0], "put", f"{prefix}/fleet-agents/good/0", "{}")
    entries, revision = await store.get_prefix(prefix)
    assert [e.key for e in entries] == [f"{prefix}/fleet-agents/good/0"]
    assert [key for key, _ in bad] == [f"{prefix}/fleet-agents/evil\\xff/0"]
    seen: list[str] = []

    async def follow() -> None:
        async for events in store.watch(prefix, revision - 1):  # both puts, replayed
            seen.extend(e.key for e in events)
            if seen:
                return

    await asyncio.wait_for(follow(), 15)
    assert seen == [f"{prefix}/fleet-agents/good/0"] and len(bad) == 2


async def test_a_revoked_lease_is_taken_again_not_reported_as_etcd_unreachable(
    store: EtcdStore, prefix: str
) -> None:
    hub = Hub()
    hub.connect(pb.AgentHello(agent_id="agent-0", session_id="s", services=["llm_provider"]))
    mine = publisher(store, prefix, hub, "rep-a")
    outages: list[bool] = []
    mine.writer.on_unavailable = lambda: outages.append(True)
    await mine.publish()
    revoked = mine.lease
    etcdctl(store.endpoints[0], "lease", "revoke", format(revoked, "x"))  # etcdctl lease revoke
    hub.connect(pb.AgentHello(agent_id="agent-1", session_id="s", services=["llm_provider"]))
    await mine.publish()  # on the revoked lease: etcd refuses the write
    assert outages == [] and mine.lease not in (0, revoked)
    stored = etcdctl(store.endpoints[0], "get", f"{roster_prefix(prefix)}rep-a/0", "--print-value-only")
    assert [a["id"] for a in json.loads(stored)["agents"]] == ["agent-0", "agent-1"]
