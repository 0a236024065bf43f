"""What a follower tells its agents of a breaker the leader pushed on its link
(``server/leader_states.py``), on an injected clock: the leader's state where it differs from
the follower's own — at once, and on every later push — until the follower's own agrees; an
older state the follower reads meanwhile does not take its agents back, nor does a view from
before a wipe it has not seen hold them (another etcd history, or one not known); within one
history the later revision is told with etcd away too (an operator's write through the
follower, never seen by a leader cut off from etcd, holds); a leader that has not read etcd
is not heard; a new link's snapshot replaces what an earlier leader said; with no link up it
stays while etcd is away (marked ``no_grants`` where a permit would be needed), and goes
once etcd answers or the follower leads."""

from __future__ import annotations

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.leader_states import LeaderStates

NAME = "svc"
HALF_OPEN, CLOSED, OPEN = pb.BREAKER_STATE_HALF_OPEN, pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN


def breaker(
    state: int, generation: int, revision: int, *, marked: bool = False, left: float = 0.0
) -> pb.Breaker:
    message = pb.Breaker(name=NAME, state=state, generation=generation, revision=revision, no_grants=marked)
    if state == OPEN:
        message.open_remaining.FromNanoseconds(int(left * 1e9))
    return message


class Follower:
    """The follower's side: its own breaker (as etcd last said), etcd away or not, leading."""

    def __init__(self) -> None:
        self.own = breaker(HALF_OPEN, 4, 10, marked=True)
        self.cut_off = True
        self.leading = False
        self.now = 100.0
        #: The etcd history the follower's own state rests on ("": not known).
        self.history = ""
        self.changed: list[str] = []
        self.states = LeaderStates(
            self._own,
            lambda: [NAME],
            lambda: self.cut_off,
            lambda: self.leading,
            lambda: self.now,
            history=lambda: self.history,
        )
        self.states.on_change = self.changed.append
        self.states.snapshot([self.own])  # the link is up, the leader agreeing so far

    def _own(self, name: str) -> tuple[int, int, int] | None:
        return (self.own.revision, self.own.generation, self.own.state) if name == NAME else None

    def told(self) -> pb.Breaker:
        return self.states.in_force(self.own)


def test_the_leaders_closed_from_memory_is_told_at_once_and_until_the_followers_own_catches_up() -> None:
    f = Follower()
    assert f.told() is f.own and len(f.states) == 0  # the leader agreed: nothing held
    f.states.pushed(breaker(CLOSED, 5, 10))  # closed from memory: the same stored basis
    assert f.changed == [NAME]  # pushed at once
    assert (f.told().state, f.told().generation) == (CLOSED, 5)
    f.own = breaker(HALF_OPEN, 4, 10)  # the same old state read again (a reload)
    assert f.told().state == CLOSED
    f.own = breaker(CLOSED, 5, 11)  # etcd answers: the leader's write comes back
    assert f.told() is f.own and len(f.states) == 0


def test_a_leader_push_the_followers_own_agrees_with_is_not_told() -> None:
    f = Follower()
    f.own = breaker(OPEN, 5, 12, left=10)  # the leader's write, read before its push came
    f.states.pushed(breaker(OPEN, 5, 11, left=10))
    assert f.changed == [] and f.told() is f.own


def test_a_write_the_follower_read_that_the_leader_has_not_seen_keeps_its_own_while_etcd_answers() -> None:
    f = Follower()
    f.cut_off = False
    f.own = breaker(CLOSED, 5, 12)  # an operator's, the leader cut off from etcd
    f.states.pushed(breaker(OPEN, 5, 10, left=10))
    assert f.changed == [] and f.told() is f.own


def test_a_decision_the_follower_made_while_it_led_and_never_stored_gives_way_to_the_leader() -> None:
    f = Follower()
    f.own = breaker(OPEN, 5, 10, left=10)  # decided from memory, fenced: never stored
    f.states.snapshot([breaker(HALF_OPEN, 4, 10)])  # the leader now holds what etcd holds
    assert f.told().state == HALF_OPEN and f.told().generation == 4


def test_an_open_from_memory_counts_down_from_when_it_came() -> None:
    f = Follower()
    f.states.pushed(breaker(OPEN, 5, 10, left=3.0))
    f.now += 1.0
    assert f.told().open_remaining.ToNanoseconds() == 2_000_000_000


def test_with_no_link_up_what_was_passed_on_stays_while_etcd_is_away_marked_where_a_permit_is_needed() -> (
    None
):
    f = Follower()
    f.states.pushed(breaker(OPEN, 5, 10, left=2.0))
    assert not f.told().no_grants
    f.changed.clear()
    f.states.link_down()
    assert f.changed == [] and f.told().state == OPEN and not f.told().no_grants
    f.now += 2.5  # the wait is over: no permit can come for the HALF_OPEN agents go to
    f.states.due()
    assert f.changed == [NAME] and f.told().no_grants
    f.states.pushed(breaker(CLOSED, 6, 10))  # no link up: nothing is heard
    assert f.told().state == OPEN
    f.changed.clear()
    f.cut_off = False  # etcd answers: the follower's own view is in force again (I2)
    f.states.due()
    assert f.changed == [NAME] and f.told() is f.own and len(f.states) == 0


def test_a_half_open_from_memory_is_marked_once_the_link_is_gone() -> None:
    f = Follower()
    f.own = breaker(OPEN, 4, 10, left=0.0)  # the follower's OPEN whose wait is over
    f.states.pushed(breaker(HALF_OPEN, 5, 10, marked=False))
    assert not f.told().no_grants  # the leader's word while the link is up
    f.states.link_down()
    f.states.due()
    assert f.told().no_grants


def test_a_new_links_snapshot_replaces_what_a_deposed_leader_said() -> None:
    f = Follower()
    f.states.pushed(breaker(CLOSED, 5, 10))  # the old leader, from memory
    f.states.link_down()
    assert f.told().state == CLOSED  # etcd away: kept
    f.changed.clear()
    f.states.snapshot([breaker(HALF_OPEN, 4, 10, marked=True)])  # the new leader: what etcd holds
    assert f.changed == [NAME] and f.told() is f.own


def test_a_follower_that_leads_lets_everything_go() -> None:
    f = Follower()
    f.states.pushed(breaker(CLOSED, 5, 10))
    assert f.told().state == CLOSED
    f.leading = True
    f.changed.clear()
    f.states.due()
    assert f.changed == [NAME] and f.told() is f.own and len(f.states) == 0


def test_a_view_from_before_a_wipe_the_follower_has_not_seen_gives_way_to_the_leaders_with_etcd_away() -> (
    None
):
    """etcd was wiped while the follower did not see it: its own state rests on a revision
    of the history before, above any the leader's rests on now."""
    f = Follower()
    f.cut_off = False
    f.states.due()  # (looked at on every turn of the control plane's timer)
    f.own = breaker(HALF_OPEN, 4, 50, marked=True)
    f.states.pushed(breaker(CLOSED, 1, 3))
    assert f.changed == [] and f.told() is f.own  # etcd answers: the follower's read catches up
    f.cut_off = True  # etcd away for the follower too: the leader's word
    f.states.due()
    assert f.changed == [NAME] and f.told().state == CLOSED
    f.changed.clear()
    f.cut_off = False
    f.states.due()
    assert f.changed == [NAME] and f.told() is f.own


def test_a_leader_that_has_not_read_etcd_is_not_heard() -> None:
    f = Follower()
    f.states.snapshot([breaker(CLOSED, 0, 0)], partial=True)
    assert f.changed == [] and f.told() is f.own
    f.states.pushed(breaker(CLOSED, 5, 10))
    assert f.told() is f.own
    f.states.snapshot([breaker(CLOSED, 5, 10)])  # read: a complete snapshot follows
    assert f.changed == [NAME] and f.told().state == CLOSED


def test_a_breaker_the_leaders_snapshot_does_not_list_is_closed() -> None:
    f = Follower()
    f.states.snapshot([])  # a leader that holds none of it (etcd wiped, not seen here)
    assert f.changed == [NAME] and f.told().state == CLOSED  # (etcd away here)
    f.changed.clear()
    f.cut_off = False  # etcd answers: the follower's own rests on a stored state
    f.states.due()
    assert f.changed == [NAME] and f.told() is f.own


def test_a_breaker_the_follower_does_not_hold_is_added_to_its_snapshot() -> None:
    f = Follower()
    other = pb.Breaker(name="new", state=OPEN, generation=1)
    other.open_remaining.FromNanoseconds(5_000_000_000)
    f.states.pushed(other)
    shown, passed_on = f.states.over([f.own])
    assert [(b.name, b.state) for b in shown] == [(NAME, HALF_OPEN), ("new", OPEN)]
    assert passed_on == {"new"}


FORCED_OPEN = pb.BREAKER_STATE_FORCED_OPEN


HISTORY = "5f1c0e9a2b7d4c36"  # the etcd history both replicas read


@pytest.mark.parametrize(
    ("leaders", "operators"), [(CLOSED, FORCED_OPEN), (FORCED_OPEN, CLOSED)], ids=["force-open", "reset"]
)
def test_an_operators_write_the_follower_read_later_is_not_overturned_when_etcd_goes_away(
    leaders: int, operators: int
) -> None:
    """With real processes (leader cut from etcd, `breakers force-open` through the follower,
    the follower cut from etcd 1–2 s later), before: the follower's agents were told the
    leader's old CLOSED ~2.5 s after the cut and called the upstream for the whole outage
    (9 of 9 runs) while `breakers get` on the follower said FORCED_OPEN; the mirror case
    (`breakers reset` through the follower over a leader's FORCED_OPEN) rejected 35 of 40.
    Both rest on revisions of one etcd history: the later revision is told (see
    ``tests/server/test_operator_write_cut_off.py`` for the processes)."""
    f = Follower()
    f.cut_off, f.history = False, HISTORY
    f.states.snapshot([breaker(leaders, 2, 10)], history=HISTORY)  # the leader, cut off, saw 10
    f.own = breaker(operators, 3, 11)  # the operator's write, through this replica
    assert f.told().state == operators  # etcd answers here: the later revision is told
    f.states.due()
    f.changed.clear()
    f.cut_off = True  # then etcd goes away for this replica too
    f.states.due()
    assert f.changed == [] and f.told().state == operators
    f.states.link_down()  # (the leader's lease lapses: its link goes too)
    f.states.due()
    assert f.told().state == operators and len(f.states) == 0
    f.states.snapshot([breaker(leaders, 2, 10)], history=HISTORY)  # its link again
    assert f.told().state == operators


def test_a_write_the_leader_has_not_seen_of_a_breaker_it_does_not_hold_is_kept_in_one_history() -> None:
    f = Follower()
    f.history = HISTORY
    f.states.snapshot([], history=HISTORY)  # the leader holds none of it (it was never stored)
    f.own = breaker(FORCED_OPEN, 1, 11)  # forced through this replica after the leader's cut
    f.states.due()
    assert f.told() is f.own
    f.own = breaker(HALF_OPEN, 4, 0)  # held here, never stored: the leader's CLOSED
    assert f.told().state == CLOSED


@pytest.mark.parametrize("listed", [True, False], ids=["held-unread", "not-listed"])
def test_a_state_the_follower_read_before_the_leaders_reading_gives_way_with_etcd_away(listed: bool) -> None:
    """A leader restarted after the follower's read: it read etcd through revision 40 and
    found the breaker absent (or its record garbled: held CLOSED, resting on no record).
    The follower's OPEN rests on revision 12, which that reading passed: older, not told
    (fleet simulation, seeds 26 and 83 at --active 80)."""
    f = Follower()
    f.history = HISTORY
    f.own = breaker(OPEN, 1, 12, left=60)
    held = [breaker(CLOSED, 0, 0)] if listed else []
    f.states.snapshot(held, history=HISTORY, read=40)
    f.states.due()
    assert f.told().state == CLOSED
    f.own = breaker(FORCED_OPEN, 2, 41)  # a write the leader has not read: kept
    assert f.told() is f.own


def test_a_read_revision_of_another_history_is_not_compared() -> None:
    f = Follower()
    f.history = HISTORY
    f.own = breaker(FORCED_OPEN, 2, 41)
    f.cut_off = False  # etcd answers: revisions of another history are not compared
    f.states.snapshot([breaker(FORCED_OPEN, 2, 41)], history="0d9e8a7b6c5f4e3d", read=90)
    assert f.told() is f.own


def test_the_later_revision_of_the_leader_is_told_in_one_history_with_etcd_away() -> None:
    f = Follower()
    f.history = HISTORY
    f.states.snapshot([breaker(OPEN, 5, 12, left=10)], history=HISTORY)  # written, not read here
    assert f.told().state == OPEN
    f.states.pushed(breaker(CLOSED, 6, 12))  # and closed from memory since
    assert f.told().state == CLOSED


@pytest.mark.parametrize("leaders", ["", "0d9e8a7b6c5f4e3d"], ids=["not-known", "another"])
def test_a_view_from_another_history_gives_way_to_the_leaders_with_etcd_away(leaders: str) -> None:
    """etcd was wiped and the follower did not see it: the leader, which did, says another
    history (or none yet); the follower's own rests on the one lost, above the new one."""
    f = Follower()
    f.history = HISTORY
    f.own = breaker(FORCED_OPEN, 4, 50)
    f.states.snapshot([breaker(CLOSED, 1, 3)], history=leaders)
    assert f.changed == [NAME] and f.told().state == CLOSED
    f.changed.clear()
    f.states.snapshot([], history=leaders)  # (a leader that holds none of it)
    assert f.told().state == CLOSED


def test_a_follower_that_finds_etcd_lost_its_data_takes_the_leaders_word_again() -> None:
    f = Follower()
    f.history = HISTORY
    f.own = breaker(FORCED_OPEN, 3, 11)
    f.states.snapshot([breaker(CLOSED, 2, 10)], history=HISTORY)
    f.states.due()
    assert f.told() is f.own
    f.history = ""  # its revisions are of the data lost
    f.states.due()
    assert f.changed == [NAME] and f.told().state == CLOSED
    f.changed.clear()
    f.history = HISTORY
    f.states.due()
    assert f.changed == [NAME] and f.told() is f.own


def test_an_answer_to_one_agent_that_ends_the_leaders_state_is_pushed_to_all() -> None:
    """Seed 60302: a follower passed on the leader's HALF_OPEN (from memory, never stored)
    while etcd was away; the leader crashed and the follower led. The first word of its own
    state (CLOSED) went to one agent asking for a permit, which ended what was told of the
    leader's; nothing was left for :meth:`due` to push, and the follower's other agents held
    HALF_OPEN for good."""
    follower = Follower()
    follower.own = breaker(CLOSED, 0, 0)
    follower.states.snapshot([breaker(HALF_OPEN, 2, 0, marked=True)], history="h", read=5)
    assert follower.told().state == HALF_OPEN
    follower.states.link_down()  # the leader crashed, etcd still away: what was told stays
    follower.leading = True
    follower.changed.clear()
    answered = follower.states.in_force(follower.own, to_all=False)
    assert answered.state == CLOSED
    assert follower.changed == [NAME]  # every agent hears it
