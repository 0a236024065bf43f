"""Calls past the endpoint cap at an agent: looking for idle endpoints to make room is a
pass over every endpoint, so it runs at most every tenth of ``endpoint_idle_secs`` (within
0.05..1 s), not on every call; and ``max_endpoints = 0`` means no endpoint breakers at all
(the service's breaker decides, nothing is counted as over the cap). Injected clock."""

from __future__ import annotations

from mission_control.client.policy import ServicePolicy
from mission_control.client.view import LocalView

SERVICE = "svc"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(view: LocalView) -> list[float]:
    runs: list[float] = []
    original = view.forget_idle

    def forget_idle(now: float, parent=None) -> int:  # type: ignore[no-untyped-def]
        runs.append(now)
        return original(now, parent)

    view.forget_idle = forget_idle  # type: ignore[method-assign]
    return runs


def test_calls_past_the_cap_look_for_idle_endpoints_at_most_every_tenth_of_the_idle_time() -> None:
    clock = Clock()
    view = LocalView({SERVICE: ServicePolicy(SERVICE, max_endpoints=2, endpoint_idle_secs=5.0)}, clock=clock)
    runs = counting(view)
    assert view.endpoint(SERVICE, "a").name == f"{SERVICE}/a"
    assert view.endpoint(SERVICE, "b").name == f"{SERVICE}/b"
    parent = view.get(SERVICE)
    for i in range(1000):
        assert view.endpoint(SERVICE, f"x{i}") is parent
    assert runs == [100.0]
    assert parent.tally.endpoints_over_cap == 1000
    clock.now += 0.5
    assert view.endpoint(SERVICE, "y") is parent
    assert runs == [100.0, 100.5]
    clock.now += 5.0  # a and b are idle now: the next look makes room
    assert view.endpoint(SERVICE, "z").name == f"{SERVICE}/z"


def test_zero_endpoints_means_the_service_breaker_and_nothing_over_the_cap() -> None:
    view = LocalView({SERVICE: ServicePolicy(SERVICE, max_endpoints=0)}, clock=Clock())
    runs = counting(view)
    parent = view.get(SERVICE)
    for i in range(10):
        assert view.endpoint(SERVICE, f"m{i}") is parent
    assert parent.tally.endpoints_over_cap == 0 and not parent.endpoints and not runs
    assert list(view.services) == [SERVICE]
