"""A HALF_OPEN probe permit comes back when the attempt holding it is refused by a
configuration error, or when a ``classify=`` hook fails or answers nonsense."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import ConfigurationError

from tests.interceptors.conftest import policy

PROBING = policy("svc", failure_threshold=1, success_threshold=1, wait_duration_secs=0.05, max_retries=0)


def _half_open(mc: MissionControl) -> None:
    with pytest.raises(ConnectionRefusedError), mc.guard("svc"):
        raise ConnectionRefusedError("down")
    end = time.monotonic() + 3
    while mc.breaker("svc").state is not BreakerState.HALF_OPEN and time.monotonic() < end:
        time.sleep(0.01)
    assert mc.breaker("svc").state is BreakerState.HALF_OPEN


@pytest.fixture
def unreachable_plane() -> Iterator[MissionControl]:
    """An agent with a control plane that never answers: costs are checked at each call."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mc = MissionControl("a", control_plane=f"127.0.0.1:{port}", config={"svc": PROBING}).start()
    yield mc
    mc.close()


def test_a_cost_in_an_unknown_resource_hands_the_probe_back(unreachable_plane: MissionControl) -> None:
    mc = unreachable_plane
    _half_open(mc)

    @mc.guard("svc", cost={"typo_tokens": 1})
    def typo() -> str:
        return "never"

    with pytest.raises(ConfigurationError):
        typo()
    assert mc.view.get("svc").local.permits_of("local") == 0
    assert mc.guard("svc")(lambda: "ok")() == "ok"  # the healthy call gets the probe
    assert mc.breaker("svc").state is BreakerState.CLOSED


@pytest.mark.parametrize("hook", [lambda exc: "bogus", lambda exc: 1 / 0], ids=["nonsense", "raises"])
@pytest.mark.parametrize("how", ["with", "decorator"])
def test_a_failing_classify_hook_counts_as_neither(hook: Callable[[BaseException], str], how: str) -> None:
    mc = MissionControl("a", config={"svc": PROBING})
    _half_open(mc)
    guard = mc.guard("svc", classify=hook)
    with pytest.raises(ConnectionResetError):  # the caller's exception, unchanged
        if how == "with":
            with guard:
                raise ConnectionResetError("reset")
        else:
            guard(_reset)()
    state = mc.view.get("svc")
    assert (state.local.permits_of("local"), state.bulkhead.in_flight) == (0, 0)
    assert mc.breaker("svc").state is BreakerState.HALF_OPEN
    assert (state.tally.successes, state.tally.failures) == (0, 1)


def _reset() -> None:
    raise ConnectionResetError("reset")
