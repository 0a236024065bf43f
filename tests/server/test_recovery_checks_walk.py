"""With thousands of breakers OPEN whose policy names no recovery check, the checks' turn
(every 20 ms) does not look at each of them: they are set aside and looked at again at a
policy change (one may name a check now) or once a second. Injected clock; what is counted
is the breakers a turn looks up, never how long it takes."""

from __future__ import annotations

import pytest
from mission_control.client.policy import ServicePolicy
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.recovery_checks import RecoveryChecks

OPEN = 2000
CHECK = RecoveryCheck("127.0.0.1:9", interval_secs=0.25, timeout_secs=0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_turn_does_not_look_at_open_breakers_no_check_may_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    policies = {
        "checked": ServicePolicy("checked", failure_threshold=2, wait_duration_secs=60, recovery_check=CHECK)
    }

    def policy_of(service: str) -> ServicePolicy:
        return policies.setdefault(
            service, ServicePolicy(service, failure_threshold=2, wait_duration_secs=60)
        )

    breakers = FleetBreakers(policy_of, clock=clock)
    asked: list[str] = []

    async def ask(check: RecoveryCheck) -> str:
        asked.append(check.target)
        return "NOT_SERVING"

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    for i in range(OPEN):
        breakers.record("agent", pb.OutcomeSummary(service=f"s-{i:04d}", failures=2, trailing_failures=2))
    breakers.record("agent", pb.OutcomeSummary(service="checked", failures=2, trailing_failures=2))
    looked: list[str] = []
    find = FleetBreakers.find

    def counting(self: FleetBreakers, name: str) -> object:
        looked.append(name)
        return find(self, name)

    monkeypatch.setattr(FleetBreakers, "find", counting)
    turns = 0
    first = clock.now
    while clock.now < first + 3.0:
        before = len(looked)
        checks.due(clock.now)
        turns += 1
        if len(looked) - before > OPEN / 2:
            assert turns == 1 or clock.now >= first + 1.0  # the first, then once a second
        clock.now += 0.02
    assert len(looked) < 5 * (OPEN + 1) + 2 * turns  # not every OPEN breaker every turn
    assert any(key[0] == "checked" for key in checks.due(clock.now))  # the one a check may end
    # a policy change that names a check is taken at the next turn, not a second later
    policies["s-0007"] = ServicePolicy(
        "s-0007", failure_threshold=2, wait_duration_secs=60, recovery_check=CHECK
    )
    breakers.get("s-0007").update_policy(policies["s-0007"])
    checks.policy_changed()
    assert any(key[0] == "s-0007" for key in checks.due(clock.now))
