"""Pieces of an in-process fleet-lease run on a virtual clock: a leader
(:class:`CapacityLeaser`) and agents' :class:`LeasedBudget`\\ s wired as the control plane and
the agents' connections wire them, without gRPC (the property and scenario tests of the
lease protocol share them)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser


def leader(
    policy: ServicePolicy,
    send: Callable[[str, pb.ConnectResponse], bool],
    now: Callable[[], float],
    epoch: int,
    recorded: int,
    on_leased: Callable[[], None],
) -> CapacityLeaser:
    """A leader of ``epoch`` leasing ``policy``; ``recorded``: the last epoch that leased
    (the record it finds; 0 = none)."""
    leaser = CapacityLeaser(
        lambda: [policy],
        send,
        epoch=lambda: epoch,
        clock=now,
        wall=now,
        leased_before=lambda: recorded > 0,
        earlier_epoch=lambda: recorded,
        on_leased=on_leased,
    )
    leaser.sync_policies()
    return leaser


def deliver(budget: LeasedBudget, message: pb.ConnectResponse, now: float) -> None:
    """As an agent's connection hands a lease it received to its budget."""
    lease = message.lease
    budget.receive(
        lease.period,
        lease.units,
        lease.starts_in.ToNanoseconds() / 1e9,
        now,
        lease.period_length.ToNanoseconds() / 1e9,
        lease.agents,
        lease.fleet_units,
        lease.epoch,
    )


def demand(budget: LeasedBudget, now: float, announced: bool) -> pb.CapacityDemand | None:
    """What an agent's connection reports of ``budget`` (service "shared"), or None when it
    has nothing to say: no period's report and its limits ``announced`` to this leader."""
    reports = budget.drain_reports()
    if not reports and announced:
        return None
    told = pb.CapacityDemand(
        service="shared",
        resource="shared.requests",
        agents_known=budget.agents,
        safe_units=budget.claim(now),
        agents=1,
        held_epoch=budget.epoch,
    )
    if reports:
        last = reports[-1]
        told.period, told.wanted, told.used = last.period, last.wanted, last.used
        told.leased = last.leased
    return told


def worst_window(admitted: list[float], window: float) -> tuple[int, float]:
    """The most calls in one ``window`` of the sorted times ``admitted``, and where it ends."""
    worst, at = 0, 0.0
    for i, t in enumerate(admitted):
        count = i + 1 - bisect.bisect_right(admitted, t - window)
        if count > worst:
            worst, at = count, t
    return worst, at
