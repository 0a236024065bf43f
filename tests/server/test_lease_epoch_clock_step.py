"""A leader whose wall clock steps back, however far, keeps leasing: its epoch and the record
of it are bounded on a wall clock that never goes back (server/capacity_grid.py
``ForwardWall``), not on the wall clock itself. The real record follower and leaser, wired
as the control plane wires them (``may_lease`` included), on injected clocks: monotonic
``t``, wall ``t`` plus ``offset``. The code before refused to record its own epoch ("out of
range") once a step back exceeded 300 s plus the time since the takeover, or after any step
when an agent's claim had put the epoch near the bound, and leased nothing until its clock
caught up."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.capacity_grid import ForwardWall
from mission_control.server.lease_epoch import EPOCH_SKEW_MS, LeaseEpochs, parse_record

SERVICE, RESOURCE, PERIOD = "shared", "shared.requests", 0.5
START = 1_800_000_000.0
AFTER = 20.0  # seconds watched after the step
DEMAND = pb.CapacityDemand(service=SERVICE, resource=RESOURCE, wanted=100.0, agents=1, agents_known=1)


class Leader:
    """Epoch 7's record follower and leaser; one agent asking 100 calls a second."""

    def __init__(self) -> None:
        self.t, self.offset = 0.0, 0.0
        self.sent: list[pb.CapacityLease] = []
        self.written: list[bytes] = []
        key = "/p/fleet-lease-epoch"
        self.epochs = LeaseEpochs(
            key, "r1", lambda: 7, lambda: True, self._write, wall=self.wall, clock=self.mono
        )
        fleet = FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=10.0)
        policies = [default_policy(SERVICE, rate_limit_requests=200, rate_limit_window_secs=2.0, fleet=fleet)]
        self.leaser = CapacityLeaser(
            lambda: policies,
            self._send,
            epoch=self.epochs.term_epoch,
            lease_epoch=self.epochs.epoch,
            clock=self.mono,
            wall=self.wall,
            leased_before=self.epochs.leased_before,
            earlier_until=self.epochs.earlier_until,
            may_lease=self.epochs.may_lease,
        )
        self.leaser.sync_policies()

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        self.sent.append(message.lease)
        return True

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return START + self.t + self.offset

    async def _write(self, key: str, value: bytes) -> bool:
        self.written.append(value)
        return True

    async def run(self, until: float) -> None:
        n = 0
        while self.t < until:
            self.t = round(self.t + 0.01, 6)
            if n % 5 == 0:
                self.leaser.demand("a", DEMAND)
            n += 1
            self.leaser.tick()
            await asyncio.sleep(0)  # a record asked for is stored


def leases_after_a_step(step: float, claim_ahead_ms: int | None = None) -> tuple[Leader, int]:
    async def main() -> tuple[Leader, int]:
        leader = Leader()
        await leader.run(2.0)
        if claim_ahead_ms is not None:  # an agent holds an epoch near the bound (a record put ahead, lost)
            assert leader.epochs.agent_holds(round(leader.wall() * 1000) + claim_ahead_ms)
        await leader.run(5.0)
        before = len(leader.sent)
        leader.offset = step
        await leader.run(5.0 + AFTER)
        return leader, len(leader.sent) - before

    return asyncio.run(main())


@pytest.mark.parametrize("step", [-2.0, -30.0, -299.0, -301.0, -600.0, -86_400.0])
def test_a_leader_keeps_leasing_after_its_clock_steps_back(step: float) -> None:
    leader, after = leases_after_a_step(step)
    # a lease every period (one may fall at the step, when the grid's next period was leased)
    assert after >= AFTER / PERIOD - 2
    assert {lease.epoch for lease in leader.sent} == {leader.epochs.epoch()}
    # the records written after the step are ones every replica takes (its clock not
    # stepped) and this one takes too
    last = leader.written[-1]
    assert parse_record(last, START + leader.t).epoch == leader.epochs.epoch()
    assert parse_record(last, leader.epochs.now()).epoch == leader.epochs.epoch()


@pytest.mark.parametrize("step", [-1.0, -30.0])
def test_an_epoch_moved_near_the_bound_is_still_recorded_after_a_step_back(step: float) -> None:
    """An agent's claim put the epoch 1 s below the bound; then the wall clock stepped back."""
    leader, after = leases_after_a_step(step, claim_ahead_ms=EPOCH_SKEW_MS - 1_000)
    assert leader.epochs.moved == 1
    assert after >= AFTER / PERIOD - 2
    assert leader.sent[-1].epoch == leader.epochs.epoch()


def test_the_forward_wall_never_goes_back() -> None:
    t, offset = [0.0], [0.0]
    now = ForwardWall(lambda: t[0], lambda: 100.0 + t[0] + offset[0])
    assert now() == 100.0
    t[0], offset[0] = 1.0, -50.0
    assert now() == 101.0  # the monotonic time since the highest reading
    t[0], offset[0] = 2.0, 5.0
    assert now() == 107.0  # a step forward is followed
