"""Which HALF_OPENs a control plane marks ``no_grants`` (``server/grant_pause.py``), engine
cases on an injected clock: one whose lease or stored run is not known to hold is marked
and pushed again when that changes; a mark stays through the takeover wait that follows
etcd's return; a wait of its own after a takeover is not marked; a grant is always pushed
after the mark is taken back."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.grant_pause import GrantPause

from .test_probe_permits import SERVICE, Clock, engine
from .test_probe_permits_stored import stored, trip, wait_over


class Plane:
    """What the control plane tells the pause: whether it leads, what the leader says on a
    follower's link (``relayed``: None, no link up), whether etcd is away for it (``cut``);
    and the lease, as ``lead_check``."""

    def __init__(self, fleet: FleetBreakers) -> None:
        self.leading, self.lease, self.cut = True, True, False
        self.relayed: dict[str, bool] | None = None
        fleet.lead_check = lambda: self.leading and self.lease
        self.pushed: list[pb.Breaker | pb.ProbeGrant] = []
        fleet.change_listeners.append(lambda message, *_: self.pushed.append(message))
        fleet.grant_listeners.append(lambda agent, grant: self.pushed.append(grant))
        self.pause = GrantPause(fleet, lambda: self.leading, self._relayed, lambda: self.cut)

    def _relayed(self, name: str, generation: int = 0) -> bool | None:
        return None if self.relayed is None else self.relayed.get(name, False)

    def marks(self) -> list[bool]:
        return [m.no_grants for m in self.pushed if isinstance(m, pb.Breaker)]


def half_open() -> tuple[FleetBreakers, Clock, Plane]:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    trip(fleet)
    stored(fleet, 4)
    wait_over(fleet, clock)
    return fleet, clock, plane


def test_a_half_open_is_marked_while_the_lease_is_not_known_to_hold() -> None:
    fleet, _, plane = half_open()
    assert plane.marks()[-1] is False
    plane.lease = False  # etcd away: the lease can no longer be known to hold
    assert plane.pause.check() == [SERVICE]
    assert plane.marks()[-1] is True
    assert plane.pause.check() == []  # pushed once
    assert fleet.to_proto(SERVICE).no_grants  # a snapshot says so too
    assert not fleet.record_of(fleet.get(SERVICE)).count(b"no_grants")  # never stored


def test_a_half_open_whose_run_is_not_stored_is_marked_until_it_is() -> None:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    trip(fleet)  # the OPEN's write cannot land
    wait_over(fleet, clock)
    assert plane.marks()[-1] is True  # pushed marked as it was decided
    fleet.request_probe("a", SERVICE)
    stored(fleet, 4)  # lands: "a", asking, is granted at once, after the mark is taken back
    grant = next(i for i, m in enumerate(plane.pushed) if isinstance(m, pb.ProbeGrant))
    assert [m.no_grants for m in plane.pushed[:grant] if isinstance(m, pb.Breaker)][-1] is False


def test_the_mark_stays_through_the_takeover_wait_after_etcd_returns() -> None:
    fleet, clock, plane = half_open()
    plane.lease = False
    plane.pause.check()
    plane.leading = False  # etcd back: the lease had expired
    fleet.stepped_down()
    assert plane.pause.check() == [] and plane.marks()[-1] is True
    plane.leading, plane.lease = True, True
    fleet.took_over()  # waits for an earlier leader's permits
    assert plane.pause.check() == [] and plane.marks()[-1] is True
    assert fleet.request_probe("a", SERVICE) is None
    clock.now += fleet.probe_ttl + fleet.get(SERVICE).policy.timeout_secs
    assert plane.pause.check() == [SERVICE] and plane.marks()[-1] is False
    assert fleet.request_probe("a", SERVICE) is not None


def test_a_takeover_wait_of_its_own_is_not_marked() -> None:
    """After a failover the wait ends by itself within the probe TTL plus the timeout,
    as an agent's hold would: its agents keep the HALF_OPEN, as before."""
    fleet, _, plane = half_open()
    fleet.took_over()
    assert fleet.request_probe("a", SERVICE) is None
    assert plane.pause.check() == [] and plane.marks()[-1] is False


def test_a_follower_marks_nothing_it_did_not_mark_while_leading() -> None:
    fleet, _, plane = half_open()
    plane.leading = False
    assert plane.pause.check() == [] and not fleet.to_proto(SERVICE).no_grants


def test_only_a_half_open_is_marked() -> None:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    plane.lease = False
    trip(fleet)
    assert fleet.get(SERVICE).state is BreakerState.OPEN
    assert plane.marks() == [False]
    wait_over(fleet, clock)
    assert plane.marks()[-1] is True


def test_a_half_open_a_leader_loads_from_the_store_is_not_pushed_marked() -> None:
    """Read from the store, its run is held there. The old code pushed it marked (its run
    not known yet at the push), and the mark then stayed through the takeover's whole wait:
    its agents went by their own breakers after a failover with etcd never away."""
    earlier, clock, _ = engine()
    trip(earlier)
    stored(earlier, 4)
    wait_over(earlier, clock)
    fleet, _, _ = engine()
    plane = Plane(fleet)
    fleet.took_over()
    fleet.adopt(SERVICE, earlier.to_record(SERVICE), 5)
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN
    assert plane.marks() == [False]
    assert plane.pause.check() == []


def test_a_followers_open_whose_wait_ends_unpushed_is_marked_among_many_closed() -> None:
    """A follower does not tick: nothing is pushed when an OPEN's wait ends, and the check,
    which looks only at what was last pushed OPEN or HALF_OPEN or told a mark (not at the
    whole fleet), still finds it; the CLOSED ones around it are not pushed again."""
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    for i in range(50):
        fleet.record("a", pb.OutcomeSummary(service=f"other-{i:02d}", successes=1))
    trip(fleet)
    plane.leading, plane.cut = False, True
    assert plane.pause.check() == []  # its wait is not over
    clock.now += fleet.get(SERVICE).open_remaining(clock.now)
    assert fleet.get(SERVICE).state is BreakerState.OPEN
    pushed = len(plane.pushed)
    assert plane.pause.check() == [SERVICE]
    assert [m.name for m in plane.pushed[pushed:]] == [SERVICE] and plane.marks()[-1] is True
    assert plane.pause.check() == []  # pushed once
    plane.cut = False  # etcd answers: the mark stays until a leader's link says otherwise
    assert plane.pause.check() == []
