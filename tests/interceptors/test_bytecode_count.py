"""``bench.bytecodes`` counts what a protected sync call runs over a bare one, by part, and
the common call stays within its count (bytecodes, unlike time, do not move with load)."""

from __future__ import annotations

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.policy import ServicePolicy
from mission_control.interceptors import client_interceptor, protected_channel

from bench.bytecodes import count, over_bare, per_call
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.upstream import Upstream

REQUEST = pb.EchoRequest(text="hello")
CALLS = 20
#: Python bytecodes a common protected sync call may run over a bare one (README case 1f:
#: about 300, against 462 before the common call went without a ticket).
MOST_OVER_BARE = 360


def _agent() -> MissionControl:
    return MissionControl("a", config={"svc": ServicePolicy(service="svc", rate_limit_requests=10**9)})


def test_a_protected_call_is_counted_by_part(upstream: Upstream) -> None:
    mc = _agent()
    with grpc.insecure_channel(upstream.address) as plain, grpc.insecure_channel(upstream.address) as inner:
        bare = pb_grpc.EchoServiceStub(plain)
        protected = pb_grpc.EchoServiceStub(protected_channel(inner, mc, service="svc"))
        bare_parts = per_call(count(lambda: bare.Echo(REQUEST, timeout=30), CALLS), CALLS)
        ours = per_call(count(lambda: protected.Echo(REQUEST, timeout=30), CALLS), CALLS)
    over = over_bare(ours, bare_parts)
    assert bare_parts["glue"] == bare_parts["admission"] == bare_parts["recording"] == 0
    assert bare_parts["grpc"] > 500  # grpc's own Python, which both calls run
    # grpc's own part is the same code on both paths, but its waits loop as often as the
    # answer takes to come (127 more per call once on a loaded machine): only roughly equal
    assert abs(over["grpc"]) <= 0.25 * bare_parts["grpc"], over
    # the caller's code is the same lambda on both; what runs in its frame besides (a
    # collection's finalizers) differs a little from run to run (1.9 a call once at load 12)
    assert abs(over["caller"]) <= 5
    assert min(over["glue"], over["admission"], over["recording"]) > 10
    ours = over["glue"] + over["admission"] + over["recording"]  # what load does not move
    assert ours <= MOST_OVER_BARE, over
    assert mc.view.get("svc").tally.successes == CALLS + 50  # the warm-up's too: every call counted


def test_the_interceptor_path_is_not_counted_as_the_channel(upstream: Upstream) -> None:
    """Behind grpc's interceptor no frame is the protected channel's: the counter puts it
    all outside glue, admission and recording (so the parts above are the channel's)."""
    mc = _agent()
    with grpc.insecure_channel(upstream.address) as raw:
        stub = pb_grpc.EchoServiceStub(grpc.intercept_channel(raw, client_interceptor(mc, service="svc")))
        parts = per_call(count(lambda: stub.Echo(REQUEST, timeout=30), CALLS), CALLS)
    assert parts["glue"] == parts["admission"] == parts["recording"] == 0
    assert parts["grpc"] > 500
