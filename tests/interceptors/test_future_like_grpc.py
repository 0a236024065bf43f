"""A sync ``.future()`` through the interceptor answers as grpc's: ``cancel()`` stops the
retries still to come, a timeout raises ``grpc.FutureTimeoutError``, and nothing runs in
the caller's thread (not even a fallback while the breaker is open)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import ResourceExhausted
from mission_control.client.policy import Backoff
from mission_control.resilience.v1 import control_plane_pb2 as cp

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import sync_channel
from tests.support.upstream import Upstream


def _until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream("primary") as up:
        yield up


def _stub(path: str, mc: MissionControl, address: str, **kw: object) -> pb_grpc.EchoServiceStub:
    return pb_grpc.EchoServiceStub(
        sync_channel(path, grpc.insecure_channel(address), mc, service="svc", **kw)
    )


def test_cancel_stops_the_retries_still_to_come(upstream: Upstream, path: str) -> None:
    slow_backoff = Backoff(initial_secs=0.3, multiplier=1, max_secs=1, jitter=0)
    mc = MissionControl("a", config={"svc": policy("svc", max_retries=5, backoff=slow_backoff)})
    upstream.set("fail", code="UNAVAILABLE")
    future = _stub(path, mc, upstream.address).Echo.future(pb.EchoRequest(text="x"), timeout=4)
    state = mc.view.get("svc")
    assert _until(lambda: state.tally.failures == 1)  # the first attempt failed: a retry waits
    assert future.cancel() is True
    assert (future.cancelled(), future.done()) == (True, True)
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    assert not _until(lambda: upstream.calls > 1, seconds=1.0)  # past three backoffs: none went
    assert _until(lambda: state.bulkhead.in_flight == 0)
    assert future.cancel() is False  # as grpc: cancelling a call that has ended does nothing


def test_a_timeout_raises_grpcs_future_timeout_error(upstream: Upstream, path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc")})
    upstream.set("slow", delay_secs=1.0)
    future = _stub(path, mc, upstream.address).Echo.future(pb.EchoRequest(text="x"))
    with pytest.raises(grpc.FutureTimeoutError):
        future.result(timeout=0.01)
    with pytest.raises(grpc.FutureTimeoutError):
        future.exception(timeout=0.01)
    assert future.result().text == "x"


def test_a_fallback_does_not_run_in_the_callers_thread(upstream: Upstream, path: str) -> None:
    p = policy("svc", failure_threshold=1, max_retries=0, fallbacks=("svc_backup",), wait_duration_secs=60)
    mc = MissionControl("a", config={"svc": p, "svc_backup": policy("svc_backup", max_retries=0)})
    with Upstream("backup") as backup:
        stub = _stub(
            path,
            mc,
            upstream.address,
            fallback_channels={"svc_backup": grpc.insecure_channel(backup.address)},
        )
        upstream.set("fail", code="UNAVAILABLE")
        backup.set("fail", code="UNAVAILABLE")
        with pytest.raises(grpc.RpcError):
            stub.Echo(pb.EchoRequest(text="x"))
        assert mc.breaker("svc").state is BreakerState.OPEN
        backup.set("slow", delay_secs=1.0)
        future = stub.Echo.future(pb.EchoRequest(text="x"))
        assert not future.done()  # handed back while the backup is still working
        assert future.result().served_by == "backup"
        assert stub.Echo(pb.EchoRequest(text="y")).served_by == "backup"  # blocking: the same answer


class _FailsFirst(grpc.UnaryUnaryClientInterceptor):
    """An inner interceptor whose first call fails before reaching the network."""

    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            raise ConnectionResetError("reset before sending")
        return continuation(client_call_details, request)


def test_retries_after_an_immediate_failure_do_not_run_in_the_callers_thread(
    upstream: Upstream, path: str
) -> None:
    slow_backoff = Backoff(initial_secs=0.5, multiplier=1, max_secs=1, jitter=0)
    mc = MissionControl("a", config={"svc": policy("svc", max_retries=2, backoff=slow_backoff)})
    inner = grpc.intercept_channel(grpc.insecure_channel(upstream.address), _FailsFirst())
    channel = sync_channel(path, inner, mc, service="svc")
    future = pb_grpc.EchoServiceStub(channel).Echo.future(pb.EchoRequest(text="x"))
    assert not future.done()  # handed back while the retry waits out its backoff
    assert future.result().text == "x"
    assert pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="y")).text == "y"


def test_a_refused_future_answers_with_its_code_and_does_not_raise(upstream: Upstream, path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc", rate_limit_requests=1)})
    echo = _stub(path, mc, upstream.address).Echo
    assert echo.future(pb.EchoRequest(text="x")).result(timeout=5).text == "x"
    refused = echo.future(pb.EchoRequest(text="x"))  # over the rate limit: refused before it is sent
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Resource exhausted: svc.requests" in refused.details()
    assert isinstance(refused.exception(timeout=5), ResourceExhausted) and upstream.calls == 1


def test_a_failed_future_answers_with_the_upstreams_code_every_time(upstream: Upstream, path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc", max_retries=0)})
    upstream.set("fail", code="NOT_FOUND")
    echo = _stub(path, mc, upstream.address).Echo
    for _ in range(20):  # however fast it failed
        future = echo.future(pb.EchoRequest(text="x"))
        assert future.exception(timeout=5) is not None
        assert (future.code(), future.details()) == (grpc.StatusCode.NOT_FOUND, "primary told to fail")


def test_a_future_that_meets_a_half_open_waits_for_it_on_a_thread_of_its_own(
    upstream: Upstream, path: str
) -> None:
    """A call that finds its fleet breaker HALF_OPEN waits for it to end (up to 0.5 s here);
    ``.future()`` hands the call back at once meanwhile, so the push that closes the
    breaker, made after it returned, lets the call go to the service (blocking the caller
    for the wait, it would be refused at its end)."""
    mc = MissionControl("a", config={"svc": policy("svc")})
    mc.view.connected = True
    mc.view.set_breaker(cp.Breaker(name="svc", state=int(BreakerState.HALF_OPEN), generation=1))
    future = _stub(path, mc, upstream.address).Echo.future(pb.EchoRequest(text="x"), timeout=4)
    mc.view.set_breaker(cp.Breaker(name="svc", state=int(BreakerState.CLOSED), generation=2))
    assert future.result(timeout=5).text == "x"
    assert upstream.calls == 1
