"""Fleet-shared limits, leased out: the leader splits each period's capacity among the
agents (and follower replicas) that use it, by the demand each reported, and sends every
holder its lease for the next period half a period ahead.

Periods of ``lease_secs`` follow each other without gaps and a lease is valid for exactly
one period, so over any window of W seconds the fleet admits at most the limit plus one
period's share — without a network call per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mission_control.client.fleet_limits import fair_share
from mission_control.resilience.v1 import control_plane_pb2 as pb

if TYPE_CHECKING:
    from .control_plane import ControlPlane

_log = logging.getLogger("mission_control.server.capacity")


@dataclass
class _Holder:
    wanted: float = 0.0
    used: float = 0.0


@dataclass
class _Limit:
    service: str
    resource: str
    fleet_units: float
    period_secs: float
    period_start: float
    period: int = 0
    allocated: int = -1
    holders: dict[str, _Holder] = field(default_factory=dict)
    leased: float = 0.0
    demanded: float = 0.0
    used: float = 0.0


class CapacityLeaser:
    def __init__(self, plane: ControlPlane, clock: Callable[[], float] = time.monotonic) -> None:
        self.plane = plane
        self.clock = clock
        self.limits: dict[tuple[str, str], _Limit] = {}

    def sync_policies(self) -> None:
        """Follow the policies: which resources are fleet-shared, and how much of each."""
        now = self.clock()
        wanted: dict[tuple[str, str], tuple[float, float]] = {}
        for policy in self.plane.policies.all():
            if policy.fleet is None:
                continue
            for resource, (limit, window) in policy.fleet_resources().items():
                period = policy.fleet.lease_secs
                wanted[(policy.service, resource)] = (limit * period / window, period)
        for key in [k for k in self.limits if k not in wanted]:
            del self.limits[key]
        for key, (units, period) in wanted.items():
            found = self.limits.get(key)
            if found is None:
                self.limits[key] = _Limit(key[0], key[1], units, period, now)
            else:
                found.fleet_units, found.period_secs = units, period

    def demand(self, holder: str, demand: pb.CapacityDemand) -> None:
        limit = self.limits.get((demand.service, demand.resource))
        if limit is None:
            return
        entry = limit.holders.setdefault(holder, _Holder())
        entry.wanted, entry.used = max(0.0, demand.wanted), max(0.0, demand.used)

    def forget(self, holder: str) -> None:
        for limit in self.limits.values():
            limit.holders.pop(holder, None)

    def tick(self) -> None:
        now = self.clock()
        for limit in list(self.limits.values()):
            while now >= limit.period_start + limit.period_secs:
                limit.period += 1
                limit.period_start += limit.period_secs
            if limit.allocated < limit.period:  # nothing leased for this period yet
                self._allocate(limit, limit.period, now)
            if limit.allocated <= limit.period and now >= limit.period_start + limit.period_secs / 2:
                self._allocate(limit, limit.period + 1, now)

    def _allocate(self, limit: _Limit, period: int, now: float) -> None:
        limit.allocated = period
        if not limit.holders:
            return
        demand = {h: e.wanted for h, e in limit.holders.items()}
        limit.demanded = sum(demand.values())
        limit.used = sum(e.used for e in limit.holders.values())
        shares = fair_share(limit.fleet_units, demand)
        limit.leased = sum(shares.values())
        start = limit.period_start + (period - limit.period) * limit.period_secs
        gone = []
        for holder, units in shares.items():
            lease = pb.CapacityLease(
                service=limit.service,
                resource=limit.resource,
                units=units,
                period=period,
                agents=len(shares),
                fleet_units=limit.fleet_units,
            )
            lease.starts_in.FromNanoseconds(int(max(0.0, start - now) * 1e9))
            lease.period_length.FromNanoseconds(int(limit.period_secs * 1e9))
            if not self.plane.hub.send_to_agent(holder, pb.ConnectResponse(lease=lease)):
                gone.append(holder)
        for holder in gone:
            limit.holders.pop(holder, None)

    def usage(self) -> list[pb.FleetLimitUsage]:
        return [
            pb.FleetLimitUsage(
                service=limit.service,
                resource=limit.resource,
                fleet_units=limit.fleet_units,
                leased=limit.leased,
                demanded=limit.demanded,
                used=limit.used,
                agents=len(limit.holders),
                period_secs=limit.period_secs,
            )
            for limit in self.limits.values()
        ]
