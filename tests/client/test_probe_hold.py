"""A probe under a permit ends by the granter's hold (``ProbeGrant.hold_until``), and a
permit with too little of its hold left goes back unused: a grant that reached the agent
late, or a granter told a shorter timeout than the agent, cannot leave a probe running
once the granter may grant the permit again (I3). Injected monotonic and wall clocks."""

from __future__ import annotations

import math

import pytest
from mission_control.client.admission import Admission, Admitted
from mission_control.client.admit_fast import new_ticket
from mission_control.client.breaker import BreakerState
from mission_control.client.executor import Executor
from mission_control.client.policy import ServicePolicy
from mission_control.client.probes import HOLD_SKEW_SECS, USE_MARGIN_SECS, FleetProbe, hold_end, last_use
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

SERVICE = "dep"
TTL = 5.0
EPOCH = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


def view_with(timeout: float, wall_ahead: float = 0.0) -> tuple[LocalView, Clock]:
    """A connected agent at a HALF_OPEN (generation 3) whose policy times calls out after
    ``timeout``; its wall clock is ``wall_ahead`` ahead of the granter's."""
    clock = Clock()
    view = LocalView({SERVICE: ServicePolicy(SERVICE, timeout_secs=timeout)}, clock=clock)
    view.wall = lambda: clock.wall() + wall_ahead
    view.apply_snapshot({}, [pb.Breaker(name=SERVICE, state=int(BreakerState.HALF_OPEN), generation=3)])
    view.connected = True
    return view, clock


def grant(made_at: float | None, granter_timeout: float = 0.0, ttl: float = TTL) -> pb.ProbeGrant:
    """A grant made at ``made_at`` (the granter's monotonic time, on its wall clock EPOCH +
    it), held for ``ttl`` + ``granter_timeout``; None: an older granter, no hold said."""
    message = pb.ProbeGrant(service=SERVICE, permits=1, generation=3, number=9, series=1)
    message.ttl.FromNanoseconds(int(ttl * 1e9))
    if made_at is not None:
        message.hold_until.FromNanoseconds(int((EPOCH + made_at + ttl + granter_timeout) * 1e9))
    return message


def probe_of(view: LocalView, clock: Clock) -> str | None:
    verdict = Admission(view, None).breaker(view.get(SERVICE), clock())
    return verdict.probe if isinstance(verdict, Admitted) else None


def released(view: LocalView, clock: Clock) -> int:
    tally = view.get(SERVICE).drain(clock())
    return tally.probes_released if tally is not None else 0


def test_the_hold_is_read_on_this_clock_less_the_skew_margin() -> None:
    assert hold_end(10.0, EPOCH, EPOCH + 8.0) == 10.0 + 8.0 - HOLD_SKEW_SECS
    assert last_use(10.0, TTL, None, 3.0) == 10.0 + TTL - USE_MARGIN_SECS  # no hold said: as before
    assert last_use(10.0, TTL, 12.0, 3.0) == 12.0 - 1.5  # half the timeout left of the hold


def test_a_probe_call_is_cut_to_end_by_the_granters_hold() -> None:
    """The granter was told a 1-s timeout (held 5 + 1 s), this agent still 10 s."""
    view, clock = view_with(timeout=10.0)
    view.grant(grant(clock.now, granter_timeout=1.0))
    probe = probe_of(view, clock)
    assert probe == "fleet"
    ticket = new_ticket(view.get(SERVICE), "op", None, None, None, clock(), probe)
    assert ticket.deadline == pytest.approx(clock.now + TTL + 1.0 - HOLD_SKEW_SECS)  # old: now + 10
    assert ticket.timeout == pytest.approx(TTL + 1.0 - HOLD_SKEW_SECS)


def test_the_executor_gives_the_probe_call_only_the_hold_left() -> None:
    view, clock = view_with(timeout=10.0)
    view.grant(grant(clock.now, granter_timeout=1.0))
    clock.now += 0.2
    seen: list[float] = []
    Executor(view, sleep=lambda _: None).run(SERVICE, seen.append)
    assert seen == [pytest.approx(TTL + 1.0 - HOLD_SKEW_SECS - 0.2)]  # old: [10.0]


def test_a_late_grant_with_too_little_hold_left_goes_back_unused() -> None:
    """Made 7 s before it arrived (stalled links), held 5 + 3 s: 0.5 s are left of the hold
    (less the margin), not half of the 3-s timeout."""
    view, clock = view_with(timeout=3.0)
    view.grant(grant(clock.now - 7.0, granter_timeout=3.0))
    assert probe_of(view, clock) is None  # old: "fleet", a probe running 3 s past the hold
    assert released(view, clock) == 1


def test_a_late_grant_is_used_while_half_the_timeout_is_left_of_its_hold() -> None:
    """Made 2 s before it arrived, held 5 + 3 s: the hold ends 5.5 s after arrival (less the
    margin), so the permit is used no later than 4 s after (old: 4.5 s, the TTL less the
    margin from arrival), and its probe ends by the hold."""
    view, clock = view_with(timeout=3.0)
    arrived = clock.now
    view.grant(grant(arrived - 2.0, granter_timeout=3.0))
    clock.now = arrived + 4.0 - 0.01
    probe = probe_of(view, clock)
    assert probe == "fleet"
    ticket = new_ticket(view.get(SERVICE), "op", None, None, None, clock(), probe)
    assert ticket.deadline == pytest.approx(arrived + 6.0 - HOLD_SKEW_SECS)  # old: now + 3
    late, clock = view_with(timeout=3.0)
    late.grant(grant(clock.now - 2.0, granter_timeout=3.0))
    clock.now += 4.0 + 0.01
    assert probe_of(late, clock) is None  # old: "fleet"
    assert released(late, clock) == 1


def test_an_agent_clock_ahead_counts_the_hold_as_shorter() -> None:
    """The margin covers clocks apart by up to HOLD_SKEW_SECS: an agent whose wall clock is
    ahead sees less of the hold left, never more."""
    view, clock = view_with(timeout=10.0, wall_ahead=0.4)
    view.grant(grant(clock.now, granter_timeout=1.0))
    probe = probe_of(view, clock)
    assert isinstance(probe, FleetProbe)
    assert probe.hold_end == pytest.approx(clock.now + TTL + 1.0 - 0.4 - HOLD_SKEW_SECS)


def test_a_grant_without_a_hold_is_counted_from_its_arrival_as_before() -> None:
    view, clock = view_with(timeout=10.0)
    view.grant(grant(None))
    probe = probe_of(view, clock)
    assert isinstance(probe, FleetProbe) and probe.hold_end == math.inf
    ticket = new_ticket(view.get(SERVICE), "op", None, None, None, clock(), probe)
    assert ticket.timeout == 10.0
    view.grant(_numbered(None, 10))
    clock.now += TTL - USE_MARGIN_SECS + 0.01
    assert probe_of(view, clock) is None  # lapsed at the TTL less the margin, from arrival


def _numbered(made_at: float | None, number: int) -> pb.ProbeGrant:
    message = grant(made_at)
    message.number = number
    return message


def test_a_relayed_grant_with_little_ttl_left_does_not_shorten_the_probe_ttl_the_agent_keeps() -> None:
    """The probe TTL the view keeps bounds how long a HALF_OPEN stays in force after the
    link drops: a relay's cut TTL (only what is left of it) must not shorten it."""
    view, clock = view_with(timeout=3.0)
    view.grant(grant(clock.now - 3.5, granter_timeout=3.0, ttl=TTL - 3.5))
    assert view.probe_ttl == TTL
