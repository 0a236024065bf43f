"""A leader whose watch has not caught up with its takeover (server/takeover_read.py), on an
injected clock: a replica cut off from the store during another leader's whole term wins a
campaign before its watch reloads; what it holds then says no earlier leader recorded a
lease, and it split the whole limit at once while the agents it had not heard from spent
that term's leases (simulation seed 4097 at ``--active 40``: 46 admitted in a 2 s window
against 45). It now takes its view as known only once the store was read since it took
over: the watch reached the leader key's creation, or the record was read directly."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.lease_epoch import EpochRecord, LeaseEpochs
from mission_control.server.takeover_read import TakeoverRead

SERVICE, RESOURCE, PERIOD = "shared", "shared.requests", 0.5
UNITS = 50.0  # 200 per 2 s, leased per 0.5 s
KEY = "/p/fleet-lease-epoch"
START = 1_800_000_000.0  # wall seconds
OWN = 40  # the leader key's create revision: the takeover
EARLIER = EpochRecord(1_800_000_000_000 - 5_000, "r0", START + 2.0).encode()


class NewLeader:
    """A replica that just took over, its record follower and leaser wired as the control
    plane wires them; ``delivered`` is how far its watch got, ``stored`` what the store holds."""

    def __init__(self, delivered: int, stored: bytes | None, reachable: bool = True) -> None:
        self.clock = [START]
        self.delivered = delivered
        self.stored = stored
        self.reachable = reachable
        self.reads = 0
        self.sent: dict[str, list[pb.CapacityLease]] = {}
        self.epochs = LeaseEpochs(KEY, "r1", lambda: OWN, lambda: self.known(), self._write, wall=self.wall)
        self.known = TakeoverRead(
            lambda: OWN, lambda: OWN, lambda: True, lambda: self.delivered, self._read, self.epochs.apply
        )
        fleet = FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=10.0)
        policies = [default_policy(SERVICE, rate_limit_requests=200, rate_limit_window_secs=2.0, fleet=fleet)]
        self.leaser = CapacityLeaser(
            lambda: policies,
            lambda holder, message: self.sent.setdefault(holder, []).append(message.lease) is None,
            epoch=self.epochs.term_epoch,
            lease_epoch=self.epochs.epoch,
            clock=self.wall,
            wall=self.wall,
            leased_before=self.epochs.leased_before,
            earlier_until=self.epochs.earlier_until,
            may_lease=self.epochs.may_lease,
        )
        self.leaser.sync_policies()

    def wall(self) -> float:
        return self.clock[0]

    async def _write(self, key: str, value: bytes) -> bool:
        return True

    async def _read(self) -> bytes | None:
        self.reads += 1
        if not self.reachable:
            raise ConnectionError("etcd: no route to host")
        return self.stored

    async def run(self, seconds: float) -> None:
        """A new agent (never leased) asks for more than the fleet's limit throughout."""
        until = self.clock[0] + seconds
        while self.clock[0] < until:
            demand = pb.CapacityDemand(service=SERVICE, resource=RESOURCE, wanted=100.0, agents=1)
            self.leaser.demand("new", demand)
            self.clock[0] = round(self.clock[0] + 0.01, 6)
            self.leaser.tick()
            await asyncio.sleep(0)

    def units(self) -> list[float]:
        return [lease.units for lease in self.sent.get("new", [])]


def test_a_leader_behind_its_takeover_reads_the_record_before_it_splits() -> None:
    async def main() -> None:
        leader = NewLeader(delivered=OWN - 10, stored=EARLIER)
        await leader.run(1.0)
        # agents of the earlier term may be spending its leases: the new agent, which held
        # none, is split none of them (the code before leased it the whole limit)
        assert leader.units() and max(leader.units()) == 0
        assert leader.epochs.leased_before()
        assert leader.reads == 1

    asyncio.run(main())


def test_a_leader_that_cannot_read_yet_takes_the_fleet_for_leased() -> None:
    async def main() -> None:
        leader = NewLeader(delivered=OWN - 10, stored=EARLIER, reachable=False)
        await leader.run(1.0)
        assert max(leader.units(), default=0) == 0
        assert leader.epochs.leased_before()
        assert leader.reads > 1  # asked again

    asyncio.run(main())


@pytest.mark.parametrize("delivered", [OWN - 10, OWN])
def test_a_fresh_fleet_is_still_split_at_once(delivered: int) -> None:
    """No record in the store: read directly, or seen by a watch past the takeover."""

    async def main() -> None:
        leader = NewLeader(delivered=delivered, stored=None)
        await leader.run(1.0)
        assert leader.reads == (1 if delivered < OWN else 0)
        assert not leader.epochs.leased_before()
        assert leader.units()[-1] == pytest.approx(UNITS)

    asyncio.run(main())
