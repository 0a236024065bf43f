"""A sync call that starts as a common one (the method's route known, the service's breaker
CLOSED, admitted without a ticket by the protected channel) and then goes another way —
refused, out of time, late, judged for slowness, interrupted — ends as behind grpc's
interceptors: the same error, the same counts, its bulkhead place free.

Each test warms the method with one call first (the protected channel takes its shortcut
from the second call on), then turns the next call with an interceptor *beneath* the
protected channel that runs after the upstream answered."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import CircuitBreakerOpen, OperationTimeout
from mission_control.client.policy import ServicePolicy, SlowCall

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import sync_channel
from tests.support.upstream import Upstream

SERVICE = "svc"


class _After(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Runs ``hook`` once the upstream answered, when one is set."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        outcome.result()  # answered
        if self.hook is not None:
            self.hook()
        return outcome


class Turned:
    """An agent, a protected stub over a channel with :class:`_After` beneath, warmed."""

    def __init__(self, path: str, address: str, service_policy: ServicePolicy) -> None:
        self.mc = MissionControl("a", config={SERVICE: service_policy})
        self.after = _After()
        self._raw = grpc.insecure_channel(address)
        beneath = grpc.intercept_channel(self._raw, self.after)
        self.stub = pb_grpc.EchoServiceStub(sync_channel(path, beneath, self.mc, service=SERVICE))
        assert self.stub.Echo(pb.EchoRequest(text="warm")).text == "warm"

    def echo(self, **kw: Any) -> Any:
        return self.stub.Echo(pb.EchoRequest(text="x"), **kw)

    def counts(self) -> tuple[int, int, int, int, int]:
        """successes, failures, rejected, timed calls, places in flight"""
        state = self.mc.view.get(SERVICE)
        t = state.tally
        return t.successes, t.failures, t.rejected, t.timed_calls, state.bulkhead.in_flight

    def close(self) -> None:
        self._raw.close()
        self.mc.close()


@pytest.fixture
def turned(path: str, upstream: Upstream) -> Iterator[Callable[..., Turned]]:
    made: list[Turned] = []

    def make(**changes: object) -> Turned:
        made.append(Turned(path, upstream.address, policy(SERVICE, max_retries=0, **changes)))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_a_breaker_opened_after_the_first_call_refuses_the_next(turned: Any, upstream: Upstream) -> None:
    t = turned(failure_threshold=2, wait_duration_secs=30)
    upstream.set("fail", code="UNAVAILABLE")
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            t.echo()
    calls = upstream.calls
    with pytest.raises(CircuitBreakerOpen):
        t.echo()
    assert upstream.calls == calls
    assert t.counts() == (1, 2, 1, 0, 0)


def test_no_time_left_after_the_first_call(turned: Any, upstream: Upstream) -> None:
    t = turned()
    calls = upstream.calls
    with pytest.raises(OperationTimeout):
        t.echo(timeout=0)
    assert upstream.calls == calls
    assert t.counts() == (1, 0, 0, 0, 0)


def test_a_success_after_its_deadline_counts_as_a_timeout(turned: Any) -> None:
    t = turned(timeout_secs=0.5)
    t.after.hook = lambda: time.sleep(0.6)
    with pytest.raises(OperationTimeout):
        t.echo()
    assert t.counts() == (1, 1, 0, 0, 0)


def test_a_slow_call_rule_set_while_a_call_runs_judges_it(turned: Any) -> None:
    t = turned()
    ruled = policy(SERVICE, max_retries=0, slow_call=SlowCall(duration_threshold_secs=60))
    t.after.hook = lambda: t.mc.view.set_policy(SERVICE, ruled)
    assert t.echo().text == "x"
    assert t.counts() == (2, 0, 0, 1, 0)


def test_an_interrupted_call_frees_its_place_and_counts_nothing(turned: Any) -> None:
    t = turned()

    def interrupt() -> None:
        raise KeyboardInterrupt

    t.after.hook = interrupt
    with pytest.raises(KeyboardInterrupt):
        t.echo()
    assert t.counts() == (1, 0, 0, 0, 0)
    t.after.hook = None
    assert t.echo().text == "x"
    assert t.counts() == (2, 0, 0, 0, 0)
