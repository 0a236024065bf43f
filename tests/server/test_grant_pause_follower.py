"""A follower replica marks ``no_grants`` what its leader marks (``server/grant_pause.py``,
``server/relayed_marks.py``), engine cases on an injected clock: what the leader says on the
link is pushed to the follower's agents at once, on the follower's own state of the breaker
(an OPEN whose wait is over included: it learns states from etcd; and a HALF_OPEN the
leader pushes CLOSED at a later generation, closed from memory while etcd is away); with no link up a mark
pushed stays, and etcd away for the follower too marks a HALF_OPEN; after a failover to the
follower the mark stays through its takeover wait; a permit relayed to an agent goes after
the mark is taken back on every stream."""

from __future__ import annotations

from types import SimpleNamespace

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.relay import LeaderRelay
from mission_control.server.relayed_marks import RelayedMarks

from .test_grant_pause import Plane
from .test_probe_permits import SERVICE, Clock, engine
from .test_probe_permits_stored import stored, trip, wait_over


class Follower(Plane):
    """A plane that follows, its link's marks in a real :class:`RelayedMarks`."""

    def __init__(self, fleet: FleetBreakers) -> None:
        super().__init__(fleet)
        self.link = RelayedMarks()
        self.link.on_change = self.pause.relayed_changed
        self.pause._relayed = self.link.get


def leader_message(state: BreakerState, marked: bool) -> pb.Breaker:
    return pb.Breaker(name=SERVICE, state=int(state), no_grants=marked)


def follower(half_open: bool = True) -> tuple[FleetBreakers, Clock, Follower]:
    """A follower that knows the breaker (from etcd) HALF_OPEN, or OPEN with its wait over."""
    fleet, clock, _ = engine()
    plane = Follower(fleet)
    trip(fleet)
    stored(fleet, 4)
    if half_open:
        wait_over(fleet, clock)
    plane.leading = False
    if not half_open:
        clock.now += fleet.get(SERVICE).open_remaining(clock.now)  # not moved: it follows
    plane.link.snapshot([])
    plane.pushed.clear()
    return fleet, clock, plane


def test_the_leaders_mark_is_pushed_to_the_followers_agents_at_once_and_taken_back() -> None:
    fleet, _, plane = follower()
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, True))
    assert plane.marks() == [True]  # at once, not at the next check: a permit may follow
    assert fleet.to_proto(SERVICE).no_grants
    assert plane.pause.check() == []
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, False))
    assert plane.marks() == [True, False]


def test_an_open_whose_wait_is_over_is_marked_on_a_follower() -> None:
    """The leader holds it HALF_OPEN from memory; the follower, learning from etcd, only
    knows the OPEN (the old code: its agents refused for the whole outage)."""
    fleet, _, plane = follower(half_open=False)
    assert fleet.get(SERVICE).state is BreakerState.OPEN
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, True)])
    assert plane.marks() == [True]


def test_an_open_with_time_left_is_not_marked() -> None:
    fleet, clock, _ = engine()
    plane = Follower(fleet)
    trip(fleet)
    plane.leading = False
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, True)])
    assert plane.pause.check() == [] and not fleet.to_proto(SERVICE).no_grants
    clock.now += fleet.get(SERVICE).open_remaining(clock.now)
    assert plane.pause.check() == [SERVICE] and plane.marks()[-1] is True


def test_a_new_links_snapshot_replaces_the_marks() -> None:
    _, _, plane = follower()
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, True)])
    plane.link.link_down()
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, False))  # no link: not taken
    assert plane.marks() == [True]
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, False)])  # a new leader
    assert plane.marks() == [True, False]


def test_with_no_link_up_a_mark_pushed_stays() -> None:
    """The leader lost mid-outage (or etcd back and a failover under way): no permit can
    come through no link; the next link's snapshot says."""
    _, _, plane = follower()
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, True))
    plane.link.link_down()
    assert plane.pause.check() == [] and plane.marks() == [True]


def test_with_no_link_and_etcd_away_the_follower_marks_by_itself() -> None:
    fleet, _, plane = follower()
    plane.link.link_down()  # lost before the leader marked anything
    assert plane.pause.check() == [] and plane.marks() == []  # a failover: ends by itself
    plane.cut = True  # and etcd is away for this replica too: no leader can be learnt
    assert plane.pause.check() == [SERVICE] and plane.marks() == [True]
    plane.cut = False
    assert plane.pause.check() == [] and fleet.to_proto(SERVICE).no_grants  # stays
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, False)])  # a leader's link
    assert plane.marks() == [True, False]


def test_after_a_failover_to_the_follower_the_mark_stays_through_its_takeover_wait() -> None:
    fleet, clock, plane = follower()
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, True))
    plane.link.link_down()
    plane.leading, plane.lease = True, True  # etcd back; the old leader's lease expired
    fleet.took_over()  # waits for an earlier leader's permits
    assert plane.pause.check() == [] and plane.marks()[-1] is True
    assert fleet.request_probe("a", SERVICE) is None
    clock.now += fleet.probe_ttl + fleet.get(SERVICE).policy.timeout_secs
    assert plane.pause.check() == [SERVICE] and plane.marks()[-1] is False
    assert fleet.request_probe("a", SERVICE) is not None


def test_a_permit_relayed_goes_to_the_agent_after_the_mark_is_taken_back() -> None:
    """Even were the leader's push taking the mark back lost before its grant."""
    fleet, _, plane = follower()
    sent: list[object] = []
    hub = SimpleNamespace(send_to_agent=lambda agent, message: sent.append(message) or True)
    leadership = SimpleNamespace(instance_id="r2")
    relay = LeaderRelay(leadership, hub)  # type: ignore[arg-type]
    relay.marks = plane.link
    relay.before_grant = plane.pause.unmark
    fleet.change_listeners.append(lambda message, *_: sent.append(message))
    relay.marks.pushed(leader_message(BreakerState.HALF_OPEN, True))
    relay.ask_probe("agent-1", SERVICE)
    relay._hand_out(pb.ProbeGrant(service=SERVICE, permits=1, generation=fleet.get(SERVICE).generation))
    kinds = [type(m).__name__ if isinstance(m, pb.Breaker) else m.WhichOneof("message") for m in sent]
    assert kinds == ["Breaker", "Breaker", "probe_grant"], kinds
    assert [m.no_grants for m in sent if isinstance(m, pb.Breaker)] == [True, False]
    assert plane.link.get(SERVICE) is False


def test_the_mark_arriving_after_a_grant_holds_the_agents_from_then() -> None:
    """A permit relayed before the leader marked: the mark follows it, and the agents hold
    for the probe TTL plus the timeout from the mark (so past the permit and its probe)."""
    fleet, _, plane = follower()
    relay = LeaderRelay(SimpleNamespace(instance_id="r2"), SimpleNamespace(send_to_agent=lambda *_: True))  # type: ignore[arg-type]
    relay.marks = plane.link
    relay.before_grant = plane.pause.unmark
    relay.ask_probe("agent-1", SERVICE)
    relay._hand_out(pb.ProbeGrant(service=SERVICE, permits=1, generation=fleet.get(SERVICE).generation))
    assert plane.marks() == []  # nothing to take back
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, True))
    assert plane.marks() == [True]


def closed_at(generation: int) -> pb.Breaker:
    return pb.Breaker(name=SERVICE, state=int(BreakerState.CLOSED), generation=generation)


def test_a_half_open_the_leader_closed_from_memory_is_marked_at_once() -> None:
    """etcd away: the leader's probes succeeded and it closed the breaker in memory; the
    follower still holds the stored HALF_OPEN, which the leader grants no permit for (the
    old code: its agents refused every call for the whole outage)."""
    fleet, _, plane = follower()
    held = fleet.get(SERVICE).generation
    plane.link.pushed(closed_at(held + 1))
    assert plane.marks() == [True]
    assert fleet.to_proto(SERVICE).no_grants and plane.pause.check() == []
    plane.link.pushed(leader_message(BreakerState.HALF_OPEN, False))  # it can grant again
    assert plane.marks() == [True, False]


def test_a_closed_the_follower_has_gone_past_is_not_marked() -> None:
    """The leader's last push is older than the follower's HALF_OPEN (etcd's watch came
    first): the leader's own push of it follows; nothing is marked meanwhile."""
    fleet, _, plane = follower()
    held = fleet.get(SERVICE).generation
    plane.link.snapshot([closed_at(held - 1)])
    plane.link.pushed(closed_at(held))
    assert plane.pause.check() == [] and plane.marks() == []
    assert not fleet.to_proto(SERVICE).no_grants


def test_a_leaders_closed_counts_only_on_the_link_it_came_on() -> None:
    fleet, _, plane = follower()
    plane.link.snapshot([closed_at(fleet.get(SERVICE).generation + 1)])
    assert plane.marks() == [True]
    plane.link.link_down()
    assert plane.link.get(SERVICE, fleet.get(SERVICE).generation) is None
    plane.link.snapshot([leader_message(BreakerState.HALF_OPEN, False)])  # a new leader's link
    assert plane.marks() == [True, False]
