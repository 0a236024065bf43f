"""A hedge the hedge budget refuses for slowness does not stop the retry of the same call,
on the interceptors and the protected channels (sync and aio) against a real gRPC server:
the slow first attempt that then fails is retried if the retry budget allows."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from mission_control.client import MissionControl
from mission_control.client.hedge_delay import HedgeMeter
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import PATHS, aio_channel, sync_channel
from tests.support.upstream import serving

POLICY = ServicePolicy(
    service="echo",
    timeout_secs=10,
    max_retries=0,
    failure_threshold=1000,
    rate_limit_requests=1_000_000,
    idempotent=True,
    hedging=Hedging(max_attempts=2, delay_secs=0.01, max_extra_ratio=0.1),
    retry_budget=RetryBudget(ratio=1, min_retries_per_second=100),
)
NO_RETRY_BUDGET = POLICY.replace(retry_budget=RetryBudget(ratio=0, min_retries_per_second=0))
CALLS = 5


class SlowThenRefused(pb_grpc.EchoServiceServicer):
    """The first attempt of each request waits until the agent's hedge budget has refused a
    hedge for it, then fails UNAVAILABLE (retryable); a later attempt answers with its
    number. No timing is relied on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.refused = threading.Event()
        self.attempts = 0
        self.seen: set[str] = set()

    def watch(self, meter: HedgeMeter) -> None:
        """Hear of each hedge ``meter`` refuses."""
        spend = meter.spend

        def spend_and_tell(hedging: Hedging) -> bool:
            allowed = spend(hedging)
            if not allowed:
                self.refused.set()
            return allowed

        meter.spend = spend_and_tell  # type: ignore[method-assign]

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        with self.lock:
            self.attempts += 1
            n, first = self.attempts, request.text not in self.seen
            self.seen.add(request.text)
        if first:
            if not self.refused.wait(10):
                context.abort(grpc.StatusCode.INTERNAL, "the hedge was never asked for")
            context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt refused after being slow")
        return pb.EchoResponse(text=f"attempt {n}")


@pytest.fixture
def upstream() -> Iterator[tuple[SlowThenRefused, str]]:
    servicer = SlowThenRefused()
    with serving(servicer) as address:
        try:
            yield servicer, address
        finally:
            servicer.refused.set()


def agent(servicer: SlowThenRefused, policy: ServicePolicy) -> MissionControl:
    mc = MissionControl("hedge-retry-agent", config={"echo": policy})
    servicer.watch(mc.executor.hedge_meter("echo"))
    return mc


def before_call(mc: MissionControl, servicer: SlowThenRefused) -> None:
    """An empty hedge budget: the call's hedge for slowness will be refused."""
    mc.executor.hedge_meter("echo").budget.balance = 0.0
    servicer.refused.clear()


def check(mc: MissionControl, servicer: SlowThenRefused, answers: list[str]) -> None:
    assert answers == [f"attempt {2 * i + 2}" for i in range(CALLS)]  # each call's retry answered
    assert servicer.attempts == 2 * CALLS
    tally = mc.view.get("echo").tally
    assert (tally.failures, tally.successes) == (CALLS, CALLS)


@pytest.mark.parametrize("path", PATHS)
def test_sync_a_slow_attempt_that_fails_after_its_hedge_was_refused_is_retried(
    upstream: tuple[SlowThenRefused, str], path: str
) -> None:
    servicer, address = upstream
    mc = agent(servicer, POLICY)
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="echo")
    echo = pb_grpc.EchoServiceStub(channel).Echo
    answers = []
    try:
        for i in range(CALLS):
            before_call(mc, servicer)
            answers.append(echo(pb.EchoRequest(text=f"call-{i}"), timeout=10).text)
    finally:
        channel.close()
        mc.close()
    check(mc, servicer, answers)


@pytest.mark.parametrize("path", PATHS)
async def test_aio_a_slow_attempt_that_fails_after_its_hedge_was_refused_is_retried(
    upstream: tuple[SlowThenRefused, str], path: str
) -> None:
    servicer, address = upstream
    mc = agent(servicer, POLICY)
    answers = []
    try:
        async with aio_channel(path, address, mc, service="echo") as channel:
            echo = pb_grpc.EchoServiceStub(channel).Echo
            for i in range(CALLS):
                before_call(mc, servicer)
                answers.append((await echo(pb.EchoRequest(text=f"call-{i}"), timeout=10)).text)
    finally:
        mc.close()
    check(mc, servicer, answers)


@pytest.mark.parametrize("path", PATHS)
def test_sync_without_retry_budget_the_slow_attempts_failure_ends_the_call(
    upstream: tuple[SlowThenRefused, str], path: str
) -> None:
    servicer, address = upstream
    mc = agent(servicer, NO_RETRY_BUDGET)
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="echo")
    before_call(mc, servicer)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="call"), timeout=10)
    finally:
        channel.close()
        mc.close()
    assert "refused after being slow" in str(raised.value)
    assert servicer.attempts == 1


@pytest.mark.parametrize("path", PATHS)
async def test_aio_without_retry_budget_the_slow_attempts_failure_ends_the_call(
    upstream: tuple[SlowThenRefused, str], path: str
) -> None:
    servicer, address = upstream
    mc = agent(servicer, NO_RETRY_BUDGET)
    before_call(mc, servicer)
    try:
        async with aio_channel(path, address, mc, service="echo") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="call"), timeout=10)
    finally:
        mc.close()
    assert "refused after being slow" in str(raised.value)
    assert servicer.attempts == 1
