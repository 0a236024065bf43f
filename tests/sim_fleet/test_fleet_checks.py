"""The I3 and I4 checkers of the fleet simulation can fail: each broken variant of the code
under simulation is caught on some schedule."""

from __future__ import annotations

import pytest

from .schedule import FIRST_SCHEDULES, SCHEDULE_VERSION, simulate


def _caught(
    invariant: str,
    words: str = "",
    seeds: range = range(12),
    active: float = 10.0,
    version: int = SCHEDULE_VERSION,
) -> list[str]:
    """The first schedule's violations of ``invariant`` (containing ``words``): today's
    schedules, unless a check names the seeds that showed it (then theirs)."""
    for seed in seeds:
        violations = simulate(seed, active_secs=active, version=version).violations
        found = [v for v in violations if f"{invariant}:" in v and words in v and "(known:" not in v]
        if found:
            return found
    return []


def test_i3_catches_more_probes_in_flight_than_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from mission_control.client.breaker import CircuitBreaker

    monkeypatch.setattr(CircuitBreaker, "probe_limit", lambda self: 10)
    # (seed 12 shows it with the fleet's timing of today; any change of timing moves it)
    assert _caught("I3", "in flight", seeds=range(40))


def test_i3_catches_an_asking_agent_that_never_gets_a_permit(monkeypatch: pytest.MonkeyPatch) -> None:
    from mission_control.server.control_plane import ControlPlane

    monkeypatch.setattr(ControlPlane, "_on_grant", lambda self, agent, grant: None)  # grants lost
    # an agent must ask for longer than a TTL while the fleet is settled: longer schedules,
    # and few of them show it (seeds 55, 73, 95, 180 … with the fleet's timing of today; the
    # search starts near the first of them, as each schedule of 20 s costs about a second,
    # and goes on past the others, as any change of the fleet's timing moves them)
    assert _caught("I3", "without one", seeds=range(50, 260), active=20.0, version=FIRST_SCHEDULES)


def test_i3_catches_a_permit_held_past_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    from mission_control.server.engine import FleetBreakers

    init = FleetBreakers.__init__

    def long_lived(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        self.probe_ttl = 60.0

    monkeypatch.setattr(FleetBreakers, "__init__", long_lived)
    assert _caught("I3", "the longest hold")


def test_i4_catches_agents_that_spend_more_than_their_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    from mission_control.client.fleet_limits import LeasedBudget

    apply = LeasedBudget.apply

    def generous(self, period, units, *args, **kwargs):  # type: ignore[no-untyped-def]
        apply(self, period, units * 3, *args, **kwargs)

    monkeypatch.setattr(LeasedBudget, "apply", generous)
    assert _caught("I4")


def test_i4_catches_a_leader_that_ignores_the_epoch_agents_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record put ahead of the clock and then lost (``epoch_faults``): a leader that does
    not move its epoch above the one agents report leaves them ignoring its leases."""
    from mission_control.server.lease_epoch import LeaseEpochs

    monkeypatch.setattr(LeaseEpochs, "agent_holds", lambda self, held: False)
    assert _caught("I4", "holds fleet-lease epoch")


def test_i3_catches_a_cut_off_leaders_permit_for_a_breaker_etcd_has_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader grants from memory, as before ``server/stored_runs.py``: its permit for a
    HALF_OPEN etcd never had runs beside its successor's, which loaded CLOSED."""
    from mission_control.server.engine import FleetBreakers

    from . import vloop
    from . import world as world_module
    from .schedule import World, quiet_logs
    from .test_scenarios import leader_cut_off_while_a_breaker_trips

    monkeypatch.setattr(FleetBreakers, "store_holds", lambda self, name: True)
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 6.0)

    async def main() -> World:
        world = World(0)
        await leader_cut_off_while_a_breaker_trips(world)
        return world

    with quiet_logs():
        violations = vloop.run(main()).result.violations
    assert [v for v in violations if "I3:" in v and "probes of svc-a gen 2 in flight" in v], violations
