"""Per-endpoint breakers, hedging, slow-call judging and shadow mode through both call paths
(grpc's interceptors and our protected channels), sync and aio, against a real upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import CircuitBreakerOpen, ConfigurationError
from mission_control.client.policy import Hedging, ServicePolicy, SlowCall

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream

TRIPS = policy("echo", max_retries=0, failure_threshold=2)


def by_header(_method: str, metadata: Any) -> str | None:
    return dict(metadata or ()).get("model")


ENDPOINTS: dict[str, Any] = {"metadata": "metadata:model", "function": by_header}


def agent(p: ServicePolicy = TRIPS) -> MissionControl:
    return MissionControl("endpoint-paths-agent", config={p.service: p})


def model(name: str) -> tuple[tuple[str, str], ...]:
    return (("model", name),)


def sync_stub(path: str, upstream: Upstream, mc: MissionControl, **protection: Any) -> Any:
    channel = sync_channel(path, grpc.insecure_channel(upstream.address), mc, service="echo", **protection)
    return pb_grpc.EchoServiceStub(channel), channel


def fails_with(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_sync_one_endpoint_opens_alone(path: str, upstream: Upstream, endpoint: str) -> None:
    mc = agent()
    stub, channel = sync_stub(path, upstream, mc, endpoint=ENDPOINTS[endpoint])
    upstream.set("fail")
    for _ in range(2):
        assert isinstance(
            fails_with(lambda: stub.Echo(pb.EchoRequest(text="a"), metadata=model("a"))), grpc.RpcError
        )
    sent = upstream.calls
    assert isinstance(
        fails_with(lambda: stub.Echo(pb.EchoRequest(), metadata=model("a"))), CircuitBreakerOpen
    )
    collect = stub.EchoCollect
    assert isinstance(
        fails_with(lambda: collect(iter([pb.EchoRequest()]), metadata=model("a"))), CircuitBreakerOpen
    )
    assert upstream.calls == sent  # the open endpoint sent nothing more
    upstream.set("ok")
    assert stub.Echo(pb.EchoRequest(text="b"), metadata=model("b")).text == "b"
    assert stub.Echo(pb.EchoRequest(text="-")).text == "-"  # no endpoint: the service's breaker
    assert {"echo/a", "echo/b"} <= set(mc.view.services)
    assert mc.view.get("echo/b").tally.successes == 1 and mc.view.get("echo").tally.successes == 1
    channel.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_aio_one_endpoint_opens_alone(path: str, upstream: Upstream, endpoint: str) -> None:
    mc = agent()
    async with aio_channel(path, upstream.address, mc, service="echo", endpoint=ENDPOINTS[endpoint]) as ch:
        stub = pb_grpc.EchoServiceStub(ch)
        upstream.set("fail")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(pb.EchoRequest(text="a"), metadata=model("a"))
        sent = upstream.calls
        with pytest.raises(CircuitBreakerOpen):
            await stub.Echo(pb.EchoRequest(text="a"), metadata=model("a"))
        with pytest.raises(CircuitBreakerOpen):
            async for _ in stub.EchoStream(pb.EchoRequest(text="a"), metadata=model("a")):
                pass
        assert upstream.calls == sent
        upstream.set("ok")
        assert (await stub.Echo(pb.EchoRequest(text="b"), metadata=model("b"))).text == "b"
    assert mc.view.get("echo/b").tally.successes == 1


def test_the_method_names_the_endpoint(path: str, upstream: Upstream) -> None:
    mc = agent()
    stub, channel = sync_stub(path, upstream, mc, endpoint="method")
    upstream.set("fail")
    for _ in range(3):
        fails_with(lambda: stub.Echo(pb.EchoRequest()))
    upstream.set("ok")
    assert isinstance(fails_with(lambda: stub.Echo(pb.EchoRequest())), CircuitBreakerOpen)
    assert [r.text for r in stub.EchoStream(pb.EchoRequest(text="s"))]  # EchoStream: its own breaker
    assert mc.view.get("echo/Echo").tally.failures == 2
    assert mc.view.get("echo/EchoStream").tally.successes == 1
    channel.close()


async def test_a_bad_endpoint_name_is_refused_on_both_kinds(path: str, upstream: Upstream) -> None:
    mc = agent()
    stub, channel = sync_stub(path, upstream, mc, endpoint="metadata:model")
    assert isinstance(
        fails_with(lambda: stub.Echo(pb.EchoRequest(), metadata=model("a b"))), ConfigurationError
    )
    channel.close()
    async with aio_channel(path, upstream.address, mc, service="echo", endpoint="metadata:model") as ch:
        with pytest.raises(ConfigurationError):
            await pb_grpc.EchoServiceStub(ch).Echo(pb.EchoRequest(), metadata=model("a b"))
    assert upstream.calls == 0


HEDGED = policy(
    "echo", max_retries=0, idempotent=True, hedging=Hedging(max_attempts=2, delay_secs=0.05), timeout_secs=10
)


async def test_an_endpoint_is_hedged_under_its_service_policy(path: str, upstream: Upstream) -> None:
    mc = agent(HEDGED)
    upstream.set("slow", delay_secs=5, times=1)
    async with aio_channel(path, upstream.address, mc, service="echo", endpoint="metadata:model") as ch:
        reply = await pb_grpc.EchoServiceStub(ch).Echo(pb.EchoRequest(text="h"), metadata=model("a"))
    assert reply.text == "h" and upstream.calls == 2
    assert (mc.view.get("echo/a").tally.successes, mc.view.get("echo/a").tally.failures) == (1, 0)


def test_slow_calls_are_judged_on_both_kinds(path: str, upstream: Upstream) -> None:
    rule = SlowCall(duration_threshold_secs=0.05, rate_threshold=0.5, minimum_calls=100)
    mc = agent(policy("echo", slow_call=rule))
    stub, channel = sync_stub(path, upstream, mc)
    upstream.set("slow", delay_secs=0.1, times=1)
    assert stub.Echo(pb.EchoRequest(text="slow")).text == "slow"
    assert stub.Echo(pb.EchoRequest(text="fast")).text == "fast"
    tally = mc.view.get("echo").tally
    assert (tally.successes, tally.timed_calls, tally.slow_calls) == (2, 2, 1)
    assert not mc.view.get("echo").running
    channel.close()


def test_a_shadow_candidate_counts_calls_on_both_kinds(path: str, upstream: Upstream) -> None:
    mc = agent(policy("echo"))
    mc.view.set_shadow("echo", policy("echo", rate_limit_requests=1, rate_limit_window_secs=3600))
    stub, channel = sync_stub(path, upstream, mc)
    for _ in range(3):
        assert stub.Echo(pb.EchoRequest(text="x")).text == "x"
    tally = mc.view.get("echo").tally
    assert (tally.successes, tally.shadow_calls) == (3, 3)
    assert tally.shadow_rejected_by_reason == {"rate_limit": 2}
    assert mc.view.get("echo").shadow.in_flight == 0  # each call's place came back
    channel.close()
