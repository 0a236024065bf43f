"""A fleet-lease leader that just took over, on a clock of its own: the capacity tests give
it a policy, an epoch and what it knows of the earlier leaders, report agents back with the
leases they hold, and read what it leased (tests/server/test_capacity_*.py)."""

from __future__ import annotations

from typing import Any

from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser

START = 5000.0


def earlier(recorded: int) -> dict[str, Any]:
    """What the store tells a leader taking over of the earlier leaders when its record
    names epoch ``recorded`` (0: none, a new fleet): they leased until 2 s past the start."""
    return {
        "leased_before": recorded > 0,
        "earlier_until": START + 2.0 if recorded else None,
        "earlier_epoch": recorded,
    }


class TakingLeader:
    """Leases ``policy``'s shared rate in ``epoch``; ``leased_before``, ``earlier_until`` and
    ``earlier_epoch`` are what the store told it of the earlier leaders (0 / None: nothing)."""

    def __init__(
        self,
        policy: ServicePolicy,
        epoch: int,
        *,
        wanted: float,
        leased_before: bool,
        earlier_until: float | None = None,
        earlier_epoch: int = 0,
    ) -> None:
        self.now = START
        self.wanted = wanted
        self.resource = f"{policy.service}.requests"
        self.sent: dict[str, list[pb.CapacityLease]] = {}
        self.leaser = CapacityLeaser(
            lambda: [policy],
            self._send,
            epoch=lambda: epoch,
            clock=lambda: self.now,
            wall=lambda: self.now,
            leased_before=lambda: leased_before,
            earlier_until=lambda: earlier_until,
            earlier_epoch=lambda: earlier_epoch,
        )
        self.leaser.sync_policies()

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        self.sent.setdefault(holder, []).append(message.lease)
        return True

    def back(self, holder: str, held_epoch: int, agents_known: int, safe_units: float) -> None:
        """``holder`` reports the lease it holds: of ``held_epoch``, for ``agents_known``."""
        demand = pb.CapacityDemand(
            service=self.resource.partition(".")[0],
            resource=self.resource,
            wanted=self.wanted,
            agents=1,
            agents_known=agents_known,
            safe_units=safe_units,
            held_epoch=held_epoch,
        )
        self.leaser.demand(holder, demand)

    def run(self, until: float) -> None:
        """Tick every 10 ms until ``until`` (seconds on its clock)."""
        while self.now < until:
            self.now = round(self.now + 0.01, 6)
            self.leaser.tick()
