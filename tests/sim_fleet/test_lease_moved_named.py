"""I4 for an agent that leaves the leader for a follower while it spends its last lease: the
leader keeps its share aside until the follower's demand names it as one whose demand (and
what it may spend unleased) it includes. The follower's relay names the agent's process in a
hello as soon as its stream opens there, a few milliseconds before the agent's first demand
reaches the follower; a demand the follower reports in between does not count the agent.
A follower that names nobody (an older one) releases nothing: the share stays aside until
the agent's horizon.

The follower here is a scripted relay stream to the real servicer, so that the report in
between comes every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mission_control.resilience.v1 import control_plane_pb2 as pb

from . import vloop
from .lease_fleet import SERVICE, budgets, drive, fleet_policy
from .net import RELAY_TOKEN
from .schedule import World, quiet_logs
from .test_scenarios import _until
from .world import PREFIX, Agent

RESOURCE = f"{SERVICE}.requests"


class ScriptedRelay:
    """A follower's relay stream to the leader, sending what the test queues."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()

    async def requests(self) -> AsyncIterator[pb.ConnectRequest]:
        while True:
            yield await self.queue.get()

    def hello(self, agents: list[str]) -> None:
        hello = pb.AgentHello(
            agent_id="replica.cpx",
            session_id="cpx",
            labels={"relay": "true"},
            outcome_series="cpx",
            relayed_agents=agents,
        )
        self.queue.put_nowait(pb.ConnectRequest(hello=hello))

    def demand(self, wants: dict[str, float], safe_units: float, counted: list[str] | None) -> None:
        demand = pb.CapacityDemand(
            service=SERVICE,
            resource=RESOURCE,
            wanted=sum(wants.values()),
            agents=len(wants),
            agents_wanted=list(wants.values()),
            safe_units=safe_units,
            leased=True,
            counted=counted or [],
        )
        report = pb.CapacityDemandReport(demands=[demand])
        self.queue.put_nowait(pb.ConnectRequest(demand=report))


def test_the_leader_keeps_a_moved_agents_share_until_a_follower_names_it() -> None:
    async def main() -> None:
        world = World(0)
        world.calling = False  # the calls here are the driver's
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", fleet_policy())
        leader = await world.start_replica("cp0")
        await _until(world, lambda: leader.plane.leading, "cp0 leads")
        agents = [Agent(world, name, (SERVICE,)) for name in ("l", "m")]
        world.agents.extend(agents)
        admitted: list[float] = []
        driver = asyncio.get_running_loop().create_task(drive(world, agents, admitted))
        leased = lambda: all(b is not None and b.leased for b in budgets(agents))  # noqa: E731
        await _until(world, leased, "every agent leased")
        await asyncio.sleep(4.0)
        limit = leader.plane.capacity.limits[(SERVICE, RESOURCE)]

        world.partitions.add(frozenset(("m", "cp0")))
        agents[1].break_link()  # m leaves the leader, spending its last lease
        await _until(world, lambda: "m" in limit.absent, "m kept aside")
        share = limit.absent["m"][0]
        assert share > 0

        relay = ScriptedRelay()
        metadata = (("authorization", f"Bearer {RELAY_TOKEN}"),)
        link = leader.serve("relay:cpx.1", relay.requests(), metadata, sender="relay:cpx.1")
        relay.hello(["m", "z"])  # m's stream opened at the follower (and z's before)
        relay.demand({"z": 5.0}, 0.0, ["z"])  # its report before m's demand reached it
        await _until(world, lambda: "replica.cpx" in limit.holders, "the follower's demand taken")
        await asyncio.sleep(1.0)
        assert limit.absent.get("m", (0.0,))[0] == share  # not counted there yet: kept here

        relay.demand({"z": 5.0, "m": 20.0}, share, ["m", "z"])  # m's demand, with its share
        await _until(world, lambda: "m" not in limit.absent, "m released: counted there")
        assert limit.holders["replica.cpx"].safe_units >= share
        driver.cancel()
        link.break_()

    with quiet_logs():
        vloop.run(main())


def test_a_follower_that_names_nobody_leaves_the_share_aside_until_the_horizon() -> None:
    async def main() -> None:
        world = World(0)
        world.calling = False
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", fleet_policy())
        leader = await world.start_replica("cp0")
        await _until(world, lambda: leader.plane.leading, "cp0 leads")
        agents = [Agent(world, name, (SERVICE,)) for name in ("l", "m")]
        world.agents.extend(agents)
        admitted: list[float] = []
        driver = asyncio.get_running_loop().create_task(drive(world, agents, admitted))
        await _until(world, lambda: all(b is not None and b.leased for b in budgets(agents)), "leased")
        await asyncio.sleep(4.0)
        limit = leader.plane.capacity.limits[(SERVICE, RESOURCE)]
        world.partitions.add(frozenset(("m", "cp0")))
        agents[1].break_link()
        await _until(world, lambda: "m" in limit.absent, "m kept aside")
        share, until = limit.absent["m"]

        relay = ScriptedRelay()
        metadata = (("authorization", f"Bearer {RELAY_TOKEN}"),)
        link = leader.serve("relay:cpx.1", relay.requests(), metadata, sender="relay:cpx.1")
        relay.hello(["m", "z"])
        relay.demand({"z": 5.0, "m": 20.0}, share, None)  # an older follower: names nobody
        await _until(world, lambda: "replica.cpx" in limit.holders, "the follower's demand taken")
        await asyncio.sleep(2.0)
        assert limit.absent.get("m") == (share, until)  # kept until its horizon, as before
        driver.cancel()
        link.break_()

    with quiet_logs():
        vloop.run(main())
