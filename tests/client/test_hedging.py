"""Hedged requests through guard (sync and async), the gRPC interceptors and the protected
channels (sync and aio):
who wins, what is cancelled, and that hedges take units and retry budget like attempts."""

from __future__ import annotations

import asyncio
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from mission_control.client import (
    ConfigurationError,
    MissionControl,
    OperationTimeout,
    ResourceExhausted,
    StorageFailure,
    hedge_delay,
)
from mission_control.client.config import config_to_toml, load_config, policy_from_json, policy_to_json
from mission_control.client.executor import HEDGE_THREADS
from mission_control.client.hedge_delay import HEDGE_START
from mission_control.client.policy import FleetLimits, Hedging, RetryBudget, ServicePolicy
from mission_control.interceptors import client_interceptor, protected_channel

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import PATHS, aio_channel, sync_channel
from tests.support.upstream import Upstream

HEDGED = ServicePolicy(
    service="storage_backend",
    timeout_secs=10,
    max_retries=0,
    failure_threshold=100,
    hedging=Hedging(max_attempts=2, delay_secs=0.05),
    retry_budget=RetryBudget(ratio=1, min_retries_per_second=100),
)


def agent(policy: ServicePolicy = HEDGED) -> MissionControl:
    return MissionControl("hedging-agent", config={policy.service: policy})


class Backend:
    """Answers attempt ``n`` as ``plan[n]`` says: "slow" (until released), "fail", or fast."""

    def __init__(self, *plan: str) -> None:
        self.plan = plan
        self.calls = 0
        self.released = threading.Event()
        self.lock = threading.Lock()

    def _next(self) -> tuple[int, str]:
        with self.lock:
            n, self.calls = self.calls, self.calls + 1
        return n, self.plan[n] if n < len(self.plan) else "fast"

    def save(self) -> str:
        n, how = self._next()
        if how == "slow":
            self.released.wait(10)
        elif how == "fail":
            raise ConnectionRefusedError(f"attempt {n} refused")
        elif how == "fatal":
            raise TimeoutError(f"attempt {n} timed out")  # DEADLINE_EXCEEDED: not retryable
        return f"attempt {n}"

    async def save_async(self) -> str:
        n, how = self._next()
        if how == "slow":
            await asyncio.Event().wait()  # only a cancel ends it
        elif how == "fail":
            raise ConnectionRefusedError(f"attempt {n} refused")
        return f"attempt {n}"


def test_a_slow_attempt_is_hedged_and_the_first_good_answer_wins() -> None:
    mc, backend = agent(), Backend("slow")
    try:
        assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 1"
        assert backend.calls == 2
    finally:
        backend.released.set()
    tally = mc.view.get("storage_backend").tally
    assert tally.successes >= 1 and tally.failures == 0


async def test_a_winning_hedge_also_records_the_slow_first_attempts_time_so_far() -> None:
    adaptive = Hedging(max_attempts=2, delay_secs=0.05, delay_percentile=95)
    mc, backend = agent(HEDGED.replace(hedging=adaptive)), Backend("slow")
    try:
        assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 1"
    finally:
        backend.released.set()
    latencies = mc.executor.hedge_meter("storage_backend").latencies
    assert latencies.samples == 2  # the hedge's own latency, and the first attempt's lower bound
    slowest = max(i for i, count in enumerate(latencies._newer) if count)
    assert hedge_delay._upper(slowest) >= adaptive.delay_secs  # the first ran at least the delay


async def test_async_losers_are_cancelled_and_count_as_neither() -> None:
    mc, backend = agent(), Backend("slow")
    save = mc.guard("storage_backend", idempotent=True)(backend.save_async)
    assert await save() == "attempt 1"
    tally = mc.view.get("storage_backend").tally
    assert (backend.calls, tally.successes, tally.failures) == (2, 1, 0)


def test_calls_not_marked_idempotent_are_not_hedged() -> None:
    mc, backend = agent(), Backend("slow")
    threading.Timer(0.3, backend.released.set).start()
    assert mc.guard("storage_backend")(backend.save)() == "attempt 0"
    assert backend.calls == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_retryable_failure_sends_the_next_attempt_at_once(mode: str) -> None:
    mc, backend = agent(HEDGED.replace(hedging=Hedging(max_attempts=3, delay_secs=30))), Backend("fail")
    if mode == "sync":
        got = await asyncio.to_thread(mc.guard("storage_backend", idempotent=True)(backend.save))
    else:
        got = await mc.guard("storage_backend", idempotent=True)(backend.save_async)()
    assert got == "attempt 1"  # long before the 30 s delay
    tally = mc.view.get("storage_backend").tally
    assert (tally.failures, tally.successes) == (1, 1)


def test_every_attempt_failing_raises_the_last_failure() -> None:
    mc, backend = agent(), Backend("fail", "fail", "fail")
    with pytest.raises(StorageFailure, match="attempt 1 refused"):
        mc.guard("storage_backend", idempotent=True)(backend.save)()
    assert backend.calls == 2


def test_an_answer_that_is_not_retryable_ends_the_call() -> None:
    mc, backend = agent(HEDGED.replace(hedging=Hedging(max_attempts=3, delay_secs=30))), Backend("fatal")
    with pytest.raises(OperationTimeout):
        mc.guard("storage_backend", idempotent=True)(backend.save)()
    assert backend.calls == 1


def test_hedges_take_a_bulkhead_place() -> None:
    mc, backend = agent(HEDGED.replace(max_concurrent=1)), Backend("slow")
    threading.Timer(0.3, backend.released.set).start()
    assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 0"
    assert backend.calls == 1
    assert mc.view.get("storage_backend").tally.rejected_by_reason["bulkhead"] == 1


def test_hedging_in_the_toml_is_checked_and_round_trips() -> None:
    text = "[service_specific.llm_provider.hedging]\nmax_attempts = 3\ndelay_secs = 0.05\n"
    config = load_config(tomllib.loads(text))
    assert config.policy_for("llm_provider").hedging == Hedging(max_attempts=3, delay_secs=0.05)
    assert load_config(tomllib.loads(config_to_toml(config))) == config
    bad = "[service_specific.llm_provider.hedging]\nmax_attempts = 9\ndelay_secs = -1\ncolour = 1\n"
    with pytest.raises(ConfigurationError) as caught:
        load_config(tomllib.loads(bad))
    assert {field for field, _ in caught.value.violations} == {
        "service_specific.llm_provider.hedging.max_attempts",
        "service_specific.llm_provider.hedging.delay_secs",
        "service_specific.llm_provider.hedging.colour",
    }


def test_the_adaptive_hedging_fields_round_trip_through_toml_and_json_and_are_checked() -> None:
    text = (
        "[service_specific.llm_provider.hedging]\nmax_attempts = 2\ndelay_secs = 0.2\n"
        "delay_percentile = 95\nmin_delay_secs = 0.01\nmax_extra_ratio = 0.1\n"
    )
    config = load_config(tomllib.loads(text))
    policy = config.policy_for("llm_provider")
    assert policy.hedging == Hedging(2, 0.2, delay_percentile=95, min_delay_secs=0.01, max_extra_ratio=0.1)
    assert load_config(tomllib.loads(config_to_toml(config))) == config
    assert policy_from_json(policy_to_json(policy)) == policy
    bad = text.replace("= 95", "= 101").replace("= 0.01", "= -1").replace("= 0.1\n", "= 2\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(tomllib.loads(bad))
    prefix = "service_specific.llm_provider.hedging."
    assert {field for field, _ in caught.value.violations} == {
        f"{prefix}delay_percentile",
        f"{prefix}min_delay_secs",
        f"{prefix}max_extra_ratio",
    }


def test_hedges_spend_the_retry_budget() -> None:
    broke = HEDGED.replace(retry_budget=RetryBudget(ratio=0, min_retries_per_second=0))
    mc, backend = agent(broke), Backend("slow")
    threading.Timer(0.3, backend.released.set).start()
    assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 0"
    assert backend.calls == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_with_a_hedge_budget_a_hedge_for_a_slow_answer_spends_no_retry_budget(mode: str) -> None:
    no_retries = RetryBudget(ratio=0, min_retries_per_second=0)
    budgeted = Hedging(max_attempts=2, delay_secs=0.05, max_extra_ratio=1)
    mc, backend = agent(HEDGED.replace(retry_budget=no_retries, hedging=budgeted)), Backend("slow")
    try:
        if mode == "sync":
            assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 1"
        else:
            assert await mc.guard("storage_backend", idempotent=True)(backend.save_async)() == "attempt 1"
    finally:
        backend.released.set()
    assert backend.calls == 2
    assert mc.executor.hedge_meter("storage_backend").budget.balance == HEDGE_START  # +1 call, -1 hedge


def test_with_a_hedge_budget_an_attempt_after_a_failure_is_a_retry_and_spends_the_retry_budget() -> None:
    no_retries = RetryBudget(ratio=0, min_retries_per_second=0)
    budgeted = Hedging(max_attempts=3, delay_secs=30, max_extra_ratio=1)
    mc, backend = agent(HEDGED.replace(retry_budget=no_retries, hedging=budgeted)), Backend("fail")
    with pytest.raises(StorageFailure, match="attempt 0 refused"):
        mc.guard("storage_backend", idempotent=True)(backend.save)()
    assert backend.calls == 1
    assert mc.executor.hedge_meter("storage_backend").budget.balance == HEDGE_START + 1  # untouched


def test_a_fresh_agents_retries_are_not_starved_by_its_hedge_budget() -> None:
    """Every call's first attempt refused (retryable), the retry answers: a retry spends
    the retry budget only, so a small hedge budget stops none of them."""
    budgeted = Hedging(max_attempts=2, delay_secs=30, max_extra_ratio=0.1)
    mc, backend = agent(HEDGED.replace(hedging=budgeted)), Backend(*("fail", "fast") * 30)
    save = mc.guard("storage_backend", idempotent=True)(backend.save)
    assert [save() for _ in range(30)] == [f"attempt {2 * i + 1}" for i in range(30)]
    assert backend.calls == 60


def test_hedges_take_rate_limit_units() -> None:
    one = HEDGED.replace(rate_limit_requests=1, rate_limit_window_secs=60)
    mc, backend = agent(one), Backend("slow")
    threading.Timer(0.3, backend.released.set).start()
    assert mc.guard("storage_backend", idempotent=True)(backend.save)() == "attempt 0"
    tally = mc.view.get("storage_backend").tally
    assert backend.calls == 1 and tally.rejected_by_reason["rate_limit"] == 1


def echo_policy() -> ServicePolicy:
    return HEDGED.replace(service="echo", idempotent=True)


@pytest.fixture
def slow_once() -> Any:
    with Upstream("echo") as upstream:
        upstream.set("slow", delay_secs=5, times=1)  # the first call takes 5 s, then fast
        yield upstream


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["call", "with_call", "future"])
def test_the_sync_paths_hedge(slow_once: Upstream, path: str, how: str) -> None:
    mc = agent(echo_policy())
    channel = sync_channel(path, grpc.insecure_channel(slow_once.address), mc, service="echo")
    echo = pb_grpc.EchoServiceStub(channel).Echo
    request = pb.EchoRequest(text="hi")
    if how == "call":
        reply = echo(request, timeout=10)
    elif how == "with_call":
        reply, call = echo.with_call(request, timeout=10)
        assert call.code() is grpc.StatusCode.OK
    else:
        reply = echo.future(request, timeout=10).result()
    assert reply.text == "hi" and slow_once.calls == 2
    channel.close()


@pytest.mark.parametrize("path", PATHS)
async def test_the_aio_paths_hedge_and_cancel_the_loser(slow_once: Upstream, path: str) -> None:
    mc = agent(echo_policy())
    async with aio_channel(path, slow_once.address, mc, service="echo") as channel:
        reply = await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="hi"), timeout=10)
    assert reply.text == "hi" and slow_once.calls == 2
    tally = mc.view.get("echo").tally
    assert (tally.successes, tally.failures) == (1, 0)  # the cancelled loser counts as neither


def test_the_protected_channel_cancels_the_sync_loser(slow_once: Upstream) -> None:
    mc = agent(echo_policy())
    channel = protected_channel(grpc.insecure_channel(slow_once.address), mc, service="echo")
    assert pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="hi"), timeout=10).text == "hi"
    tally = mc.view.get("echo").tally
    assert (tally.successes, tally.failures) == (1, 0)  # not waited for: cancelled, neither
    assert mc.view.get("echo").bulkhead.in_flight == 0
    channel.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_channel_with_fallbacks_is_not_hedged(path: str) -> None:
    with Upstream("echo") as up, Upstream("backup") as backup, grpc.insecure_channel(backup.address) as fb:
        up.set("fail", times=1)
        mc = agent(echo_policy().replace(max_retries=1))
        channel = sync_channel(
            path, grpc.insecure_channel(up.address), mc, service="echo", fallback_channels={"backup": fb}
        )
        assert pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"), timeout=10).text == "x"
        channel.close()
        tally = mc.view.get("echo").tally
        assert (up.calls, backup.calls) == (2, 0)
        assert tally.recovery_successes == 1  # a retry by the plan (a hedge is not a recovery)


@pytest.mark.parametrize("path", PATHS)
def test_hedging_set_by_a_policy_change_applies_to_a_channel_already_in_use(path: str) -> None:
    with Upstream("echo") as up:
        mc = agent(echo_policy().replace(hedging=None))
        channel = sync_channel(path, grpc.insecure_channel(up.address), mc, service="echo")
        echo = pb_grpc.EchoServiceStub(channel).Echo
        assert echo(pb.EchoRequest(text="a"), timeout=10).text == "a"
        mc.view.set_policy("echo", echo_policy())
        up.set("slow", delay_secs=5, times=1)
        assert echo(pb.EchoRequest(text="b"), timeout=10).text == "b"
        assert up.calls == 3  # one, then a slow one and its hedge
        channel.close()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_one_services_hanging_hedges_do_not_hold_the_threads_of_anothers() -> None:
    hanging = HEDGED.replace(service="archive", timeout_secs=30, idempotent=True)
    healthy = HEDGED.replace(service="storage_backend", timeout_secs=5, idempotent=True)
    mc = MissionControl("hedging-agent", config={"archive": hanging, "storage_backend": healthy})
    stuck, running, lock = threading.Event(), [0], threading.Lock()

    @mc.guard("archive")
    def archive() -> None:
        with lock:
            running[0] += 1
        stuck.wait(30)

    save = mc.guard("storage_backend")(lambda: "saved")
    callers = [threading.Thread(target=archive) for _ in range(HEDGE_THREADS // 2 + 4)]
    for caller in callers:
        caller.start()  # each with its hedge: more attempts than a service's threads
    try:
        assert wait_until(lambda: running[0] >= HEDGE_THREADS)
        assert save() == "saved"  # on threads of its own, not queued behind the hanging ones
    finally:
        stuck.set()
        for caller in callers:
            caller.join(30)
    mc.close()


def test_no_hedge_is_sent_when_the_deadline_has_come() -> None:
    due_at_the_deadline = HEDGED.replace(timeout_secs=0.2, hedging=Hedging(max_attempts=2, delay_secs=0.2))
    mc, backend = agent(due_at_the_deadline), Backend("slow", "slow")
    try:
        with pytest.raises(OperationTimeout):
            mc.guard("storage_backend", idempotent=True)(backend.save)()
        assert backend.calls == 1  # the hedge would have had no time left
    finally:
        backend.released.set()
        mc.close()


def test_a_hedge_is_an_attempt_not_a_call_in_the_retry_budgets_base() -> None:
    half = HEDGED.replace(retry_budget=RetryBudget(ratio=0.5, min_retries_per_second=0, window_secs=60))
    mc, backend = agent(half), Backend(*["fail"] * 40)  # every attempt fails: a hedge at once
    save = mc.guard("storage_backend", idempotent=True)(backend.save)
    for _ in range(20):
        with pytest.raises(StorageFailure):
            save()
    # 20 calls fund 10 hedges; counted as calls themselves, hedges would fund 19
    assert backend.calls == 20 + 10
    mc.close()


def test_the_fleet_retry_budget_hears_of_calls_not_of_hedges() -> None:
    fleet = HEDGED.replace(fleet_retry_budget=True, fleet=FleetLimits(lease_secs=60))
    mc, backend = agent(fleet), Backend(*["fail"] * 20)
    save = mc.guard("storage_backend", idempotent=True)(backend.save)
    for _ in range(5):
        with pytest.raises(StorageFailure):
            save()
    budget = mc.view.get("storage_backend").budget
    assert backend.calls == 10  # every call hedged once
    assert budget.calls.used(time.monotonic()) == 5  # what the control plane is told: 5 calls
    mc.close()


def test_a_refused_hedged_call_is_one_rejection_and_spends_no_budget() -> None:
    one = HEDGED.replace(
        rate_limit_requests=1,
        rate_limit_window_secs=60,
        hedging=Hedging(max_attempts=3, delay_secs=0.05),
        retry_budget=RetryBudget(ratio=1, min_retries_per_second=0, window_secs=60),
    )
    mc, backend = agent(one), Backend()
    save = mc.guard("storage_backend", idempotent=True)(backend.save)
    assert save() == "attempt 0"
    with pytest.raises(ResourceExhausted):
        save()
    state = mc.view.get("storage_backend")
    assert state.tally.rejected == 1 and backend.calls == 1
    assert state.budget.try_retry(time.monotonic())  # no retry was spent on the refusals
    mc.close()


class Hanging(pb_grpc.EchoServiceServicer):
    """Every Echo hangs until ``stuck`` is set; ``running`` counts those hanging."""

    def __init__(self) -> None:
        self.stuck, self.running, self.lock = threading.Event(), 0, threading.Lock()

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        with self.lock:
            self.running += 1
        self.stuck.wait(30)
        return pb.EchoResponse(text=request.text)


def test_the_sync_interceptors_hedges_of_a_hanging_service_leave_anothers_threads_alone() -> None:
    hanging, server = Hanging(), grpc.server(ThreadPoolExecutor(HEDGE_THREADS + 16))
    pb_grpc.add_EchoServiceServicer_to_server(hanging, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    archive_policy = HEDGED.replace(service="archive", timeout_secs=30, idempotent=True)
    mc = MissionControl("hedging-agent", config={"archive": archive_policy, "echo": echo_policy()})
    with Upstream("echo") as healthy:
        archive = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), client_interceptor(mc, service="archive")
        )
        echo = grpc.intercept_channel(
            grpc.insecure_channel(healthy.address), client_interceptor(mc, service="echo")
        )
        hang = pb_grpc.EchoServiceStub(archive).Echo
        callers = [
            threading.Thread(target=hang, args=(pb.EchoRequest(text="x"),))
            for _ in range(HEDGE_THREADS // 2 + 4)
        ]
        for caller in callers:
            caller.start()  # each with its hedge: more attempts than a service's threads
        try:
            assert wait_until(lambda: hanging.running >= HEDGE_THREADS)
            reply = pb_grpc.EchoServiceStub(echo).Echo(pb.EchoRequest(text="hi"), timeout=10)
            assert reply.text == "hi"  # on threads of its own, not queued behind the hanging ones
        finally:
            hanging.stuck.set()
            for caller in callers:
                caller.join(30)
            server.stop(0)
    mc.close()


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def hanging() -> Any:
    with Upstream("echo") as upstream:
        upstream.set("slow", delay_secs=2)
        yield upstream


#: The deadline of the hedged calls that time out: the hedge goes out 0.05 s in, so it is
#: in flight at the deadline however late a loaded machine runs its timer.
DEADLINE = 1.5


def _counted(mc: MissionControl) -> tuple[int, int]:
    tally = mc.view.get("echo").tally
    return tally.successes, tally.failures


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["call", "future"])
def test_a_sync_hedged_call_that_times_out_counts_one_timeout_failure(
    hanging: Upstream, path: str, how: str
) -> None:
    mc = agent(echo_policy().replace(timeout_secs=DEADLINE))
    channel = sync_channel(path, grpc.insecure_channel(hanging.address), mc, service="echo")
    echo = pb_grpc.EchoServiceStub(channel).Echo
    with pytest.raises(OperationTimeout):
        if how == "call":
            echo(pb.EchoRequest(text="hi"))
        else:
            echo.future(pb.EchoRequest(text="hi")).result()
    # hedged, and both attempts were in flight at the deadline (the hedge may reach the
    # upstream after the caller gave up, on a loaded machine)
    assert _until(lambda: hanging.calls == 2), hanging.calls
    assert _counted(mc) == (0, 1)
    channel.close()


@pytest.mark.parametrize("path", PATHS)
async def test_an_aio_hedged_call_that_times_out_counts_one_timeout_failure(
    hanging: Upstream, path: str
) -> None:
    mc = agent(echo_policy().replace(timeout_secs=DEADLINE))
    async with aio_channel(path, hanging.address, mc, service="echo") as channel:
        with pytest.raises(OperationTimeout):
            await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="hi"))
    assert _until(lambda: hanging.calls == 2), hanging.calls
    assert _counted(mc) == (0, 1)


@pytest.mark.parametrize("path", PATHS)
def test_a_sync_loser_counts_as_neither_when_it_ends(path: str) -> None:
    with Upstream("echo") as upstream:
        upstream.set("slow", delay_secs=1, times=1)  # the first attempt loses, then answers
        mc = agent(echo_policy())
        channel = sync_channel(path, grpc.insecure_channel(upstream.address), mc, service="echo")
        assert pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="hi"), timeout=10).text == "hi"
        assert _until(lambda: mc.view.get("echo").bulkhead.in_flight == 0)  # the loser is over
        assert upstream.calls == 2 and _counted(mc) == (1, 0)
        channel.close()
