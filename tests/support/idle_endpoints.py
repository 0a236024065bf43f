"""What the tests of idle endpoint breakers forgotten share (test_endpoint_forgetting,
test_forget_failed_deletion): a control plane process on a real etcd with a policy whose
endpoint breakers go idle after 1 s, and an agent (in the test's process) whose calls to
one endpoint fail."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "llm_provider"
A, B = f"{SERVICE}/openai/gpt-x", f"{SERVICE}/anthropic/claude"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=2,
    max_retries=0,
    wait_duration_secs=120,
    rate_limit_requests=10**6,
    max_endpoints=4,
    endpoint_idle_secs=1.0,
)


def down() -> None:
    raise ConnectionError("down")


def stored_record(etcd: str, key: str) -> dict[str, object]:
    """The JSON record etcd holds at ``key`` ({} when none)."""
    text = etcdctl(etcd, "get", key, "--print-value-only").strip()
    return json.loads(text) if text else {}  # type: ignore[no-any-return]


@dataclass(frozen=True)
class EndpointFleet:
    """The control plane (its address and a channel to it) and the agent, with its guarded
    call to endpoint ``A`` that fails."""

    address: str
    channel: grpc.Channel
    stub: pb_grpc.ControlPlaneServiceStub
    mc: MissionControl
    failing: Callable[[], None]

    def breakers(self) -> dict[str, int]:
        """The control plane's breakers: name -> state."""
        listed = self.stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers
        return {b.name: b.state for b in listed}

    def fail_twice(self) -> None:
        """Two failing calls to ``A`` (the policy's threshold: the fleet opens its breaker)."""
        for _ in range(2):
            with pytest.raises(MissionControlError):
                self.failing()


@contextmanager
def endpoint_fleet(etcd: str, prefix: str, spawned: list[Proc]) -> Iterator[EndpointFleet]:
    """A control plane process on ``etcd`` with ``POLICY`` put, and the agent "forgetting"
    connected and holding the policy; both closed on the way out."""
    plane, address = control_plane(etcd, prefix)
    spawned.append(plane)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.ControlPlaneServiceStub(channel)
    stub.PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)
    mc = MissionControl("forgetting", control_plane=address)
    mc.start()
    try:
        poll(lambda: mc.view.policy_of(SERVICE).max_endpoints == 4)
        yield EndpointFleet(address, channel, stub, mc, mc.guard(SERVICE, endpoint="openai/gpt-x")(down))
    finally:
        mc.close()
        channel.close()
