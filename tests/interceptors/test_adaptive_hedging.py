"""Adaptive hedging against a real gRPC server where a share of calls hang: the hedge goes
at the percentile of what the agent saw succeed, not at the fixed delay, and the hedge
budget bounds the extra calls — on the sync and aio interceptors and protected channels."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from mission_control.client import MissionControl
from mission_control.client.hedge_delay import HEDGE_START
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import PATHS, aio_channel, sync_channel
from tests.support.upstream import serving

#: A fixed delay past every call's deadline: a hung call ends well only by an adaptive hedge.
ADAPTIVE = Hedging(max_attempts=2, delay_secs=60, delay_percentile=95, max_extra_ratio=0.25)
POLICY = ServicePolicy(
    service="echo",
    timeout_secs=20,
    max_retries=0,
    failure_threshold=1000,
    rate_limit_requests=1_000_000,
    idempotent=True,
    hedging=ADAPTIVE,
    retry_budget=RetryBudget(ratio=0, min_retries_per_second=0),  # hedges for slowness need none
)
WARM_UP = 40  # enough successes for a p95
CALLS = 60
HANG_EVERY = 6


class Hanging(pb_grpc.EchoServiceServicer):
    """Answers at once, except the first attempt of a request whose text starts "hang"."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.calls = 0
        self.released = threading.Event()

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        with self.lock:
            self.calls += 1
            first = request.text not in self.seen
            self.seen.add(request.text)
        if first and request.text.startswith("hang"):
            self.released.wait(30)
        return pb.EchoResponse(text=request.text)


@pytest.fixture
def hanging() -> Iterator[tuple[Hanging, str]]:
    servicer = Hanging()
    with serving(servicer, workers=64) as address:
        try:
            yield servicer, address
        finally:
            servicer.released.set()


def texts() -> list[str]:
    calls = [f"warm-{i}" for i in range(WARM_UP)]
    return calls + [f"hang-{i}" if i % HANG_EVERY == 0 else f"call-{i}" for i in range(CALLS)]


def check(mc: MissionControl, servicer: Hanging, answers: list[str]) -> None:
    assert answers == texts()  # every call completed: each hung one by its hedge
    extra = servicer.calls - len(answers)
    assert CALLS // HANG_EVERY <= extra <= ADAPTIVE.max_extra_ratio * len(answers) + HEDGE_START
    assert mc.executor.hedge_meter("echo").delay(ADAPTIVE) < ADAPTIVE.delay_secs
    tally = mc.view.get("echo").tally
    assert tally.failures == 0


@pytest.mark.parametrize("path", PATHS)
def test_sync_hung_calls_are_hedged_at_the_adaptive_delay_within_the_budget(
    hanging: tuple[Hanging, str], path: str
) -> None:
    servicer, address = hanging
    mc = MissionControl("adaptive-hedging", config={"echo": POLICY})
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="echo")
    echo = pb_grpc.EchoServiceStub(channel).Echo
    try:
        answers = [echo(pb.EchoRequest(text=text), timeout=20).text for text in texts()]
    finally:
        channel.close()
    check(mc, servicer, answers)


@pytest.mark.parametrize("path", PATHS)
async def test_aio_hung_calls_are_hedged_at_the_adaptive_delay_within_the_budget(
    hanging: tuple[Hanging, str], path: str
) -> None:
    servicer, address = hanging
    mc = MissionControl("adaptive-hedging", config={"echo": POLICY})
    async with aio_channel(path, address, mc, service="echo") as channel:
        echo = pb_grpc.EchoServiceStub(channel).Echo
        answers = [(await echo(pb.EchoRequest(text=text), timeout=20)).text for text in texts()]
    check(mc, servicer, answers)


def test_the_hedge_budget_stops_hedges_that_the_delay_would_send(hanging: tuple[Hanging, str]) -> None:
    servicer, address = hanging
    every_call = Hedging(max_attempts=3, delay_secs=0, max_extra_ratio=0.1)  # would hedge every call twice
    mc = MissionControl("adaptive-hedging", config={"echo": POLICY.replace(hedging=every_call)})
    channel = sync_channel("channel", grpc.insecure_channel(address), mc, service="echo")
    echo = pb_grpc.EchoServiceStub(channel).Echo
    try:
        answers = [echo(pb.EchoRequest(text=f"call-{i}"), timeout=20).text for i in range(50)]
    finally:
        channel.close()
    assert len(answers) == 50
    assert servicer.calls <= 50 + 0.1 * 50 + HEDGE_START  # a cancelled hedge may never reach the server
    assert mc.executor.hedge_meter("echo").budget.balance < 1  # ... but it was spent
