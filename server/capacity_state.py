"""What the leader keeps per fleet-shared limit: its holders, what it keeps aside for agents
that may be spending without a lease, the horizons they may hold — and how that survives
a change of the limit's policy (:meth:`LeasedLimit.rebuilt`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mission_control.client.policy import UNLEASED_SECS, ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .unleased_claims import RECENT_LEASES

#: Holders past their horizon are shown this long (and at most this many).
LAPSED_SHOWN_SECS = 600.0
LAPSED_SHOWN = 10_000


@dataclass
class Holder:
    """An agent, or a follower replica speaking for its agents, that shares a limit."""

    wanted: float = 0.0  # what it wants now, from what it asked in its last periods
    #: what each agent it speaks for asked in each of them (newest last)
    asked: tuple[tuple[float, ...], ...] = ()
    used: float = 0.0
    agents: int = 1
    #: what each agent it speaks for wants (a follower relays its agents' demands)
    wants: tuple[float, ...] = ()
    agents_known: int = 0
    #: what it says it spends in a period without a lease, and what of that is believed
    claimed: float = 0.0
    safe_units: float = 0.0
    sent: float = 0.0  # the last lease sent
    recent: tuple[float, ...] = ()  # the last few leases sent, newest last
    leased: bool = False  # this leader sent it a lease
    earlier: int = 0  # agents an earlier leader counted, as reported before this one leased
    #: of the agents it speaks for, those holding that leader's lease (reported with ``earlier``)
    counted: int = 0
    #: the epoch of the earlier lease it holds, as reported with ``earlier`` (0: not said)
    earlier_epoch: int = 0
    #: what it may spend of an earlier leader's leases, as reported before this one leased
    earlier_units: float = 0.0
    #: a follower replica (speaks for its agents, and for those gone from it that it keeps)
    replica: bool = False
    #: what was kept aside for it when its stream broke before this one, (units, until):
    #: its agents may still spend that until leases sent on this stream replace it
    carried: tuple[float, float] | None = None
    #: a follower's: the agent processes connected to it its last demand included, and
    #: when each of those its demands named lately was last named (it may keep one gone)
    names: frozenset[str] = frozenset()
    named_at: dict[str, float] = field(default_factory=dict)

    def still_carried(self, now: float) -> float:
        """What it carries from its last break that its agents may still spend (0: none):
        until its horizon, or until it was sent as many leases since as a claim is believed
        on (then its agents hold one of those, as any holder that stays connected does)."""
        if self.carried is None:
            return 0.0
        units, until = self.carried
        if until <= now or len(self.recent) >= RECENT_LEASES:
            self.carried = None
            return 0.0
        return units


@dataclass
class LeasedLimit:
    """One fleet-shared limit (service, resource) as the leader leases it."""

    service: str
    resource: str
    fleet_units: float
    period_secs: float
    allocated: int = -1  # the last period index leased out
    holders: dict[str, Holder] = field(default_factory=dict)
    #: holder -> (safe units it may be spending a period, until when): gone without a goodbye
    absent: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: holder -> when its reservation ended: if alive and still cut off, it refuses now
    lapsed: dict[str, float] = field(default_factory=dict)
    #: how long an agent spends without a lease (the policy's fleet.unleased_secs)
    unleased_secs: float = UNLEASED_SECS
    #: what an agent spends without a lease when the policy sets a safe_share
    safe_share_units: float | None = None
    #: earlier horizons an agent cut off may still hold: (horizon, until when, monotonic)
    held_horizons: list[tuple[float, float]] = field(default_factory=list)
    #: units the last split kept aside for agents absent or not back yet
    kept_aside: float = 0.0
    leased: float = 0.0
    demanded: float = 0.0
    used: float = 0.0
    warm: bool = True  # the leader is new: agents may still spend an earlier leader's leases
    expected: int = 0  # while warm: the most agents any agent back heard of
    #: the longest horizon an earlier leader recorded for this limit (this replica may have
    #: started after it was lowered: it never saw it in a policy)
    recorded: Callable[[], float] = field(default=lambda: 0.0, repr=False, compare=False)
    #: A fleet retry budget's retries: their units follow the fleet's calls (this policy's).
    retries_of: ServicePolicy | None = None
    #: A fleet retry budget's calls: metered (agents report them), never leased.
    metered: bool = False
    #: A fleet retry budget's retries: the fleet's last period with attempts failed at most
    #: half of them (the minimum is leased only then).
    retries_healthy: bool = True

    @classmethod
    def rebuilt(
        cls, old: LeasedLimit, fleet_units: float, period_secs: float, *, holders: bool
    ) -> LeasedLimit:
        """The limit under a changed policy, carrying over what must survive it.

        An agent cut off before it heard of the change spends its last lease, of the old
        period, until the horizon it knew: what is kept aside for it (per period of the
        new length, at least a whole old lease: it may spend one at once) and the horizons
        it may hold survive; so does the leader's warm-up, which is its term's, not the
        policy's. Periods leased are kept unless their length changed (a new grid).

        Args:
            old: the limit before the change.
            holders: whether the holders carry over (False for a limit put aside when its
                policy was deleted: who is still connected says so again).
        """
        scale = max(1.0, period_secs / old.period_secs)
        return cls(
            old.service,
            old.resource,
            fleet_units,
            period_secs,
            allocated=old.allocated if period_secs == old.period_secs else -1,
            holders=old.holders if holders else {},
            absent={h: (units * scale, until) for h, (units, until) in old.absent.items()},
            lapsed=old.lapsed,
            unleased_secs=old.unleased_secs,
            held_horizons=old.held_horizons,
            recorded=old.recorded,
            warm=old.warm,
            expected=old.expected,
        )

    def usage(self) -> pb.FleetLimitUsage:
        """Its figures for ``stats``: the last split's, and the holders past their horizon."""
        return pb.FleetLimitUsage(
            service=self.service,
            resource=self.resource,
            fleet_units=self.fleet_units,
            leased=self.leased,
            demanded=self.demanded,
            used=self.used,
            agents=sum(e.agents for e in self.holders.values()),
            period_secs=self.period_secs,
            kept_aside=self.kept_aside,
            past_horizon=len(self.lapsed),
        )

    def horizon(self, now: float) -> float:
        """The longest horizon an agent may still hold: the policy's, an earlier one, or one
        an earlier leader recorded (this replica may have started after it was lowered)."""
        self.held_horizons = [(h, until) for h, until in self.held_horizons if until > now]
        return max([self.unleased_secs, self.recorded(), *(h for h, _ in self.held_horizons)])

    def lapse(self, now: float) -> None:
        """Reservations past their horizon end (a holder still cut off refuses by now)."""
        for holder in [h for h, (_, until) in self.absent.items() if until <= now]:
            del self.absent[holder]
            self.lapsed[holder] = now
        for holder in [h for h, at in self.lapsed.items() if at <= now - LAPSED_SHOWN_SECS]:
            del self.lapsed[holder]
        while len(self.lapsed) > LAPSED_SHOWN:
            del self.lapsed[next(iter(self.lapsed))]
