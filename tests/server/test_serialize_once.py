"""A push to every agent is serialised once, and every stream still gets exactly its own
messages, in order (real gRPC, the control plane's own Connect)."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import RunningControlPlane
from mission_control.server.serialize_once import SerializeOnce

from tests.support.agents import RawAgent


def _deleted(service: str) -> pb.ConnectResponse:
    return pb.ConnectResponse(policy=pb.PolicyUpdate(service=service, deleted=True))


def test_the_same_message_is_serialised_once_and_another_on_its_own() -> None:
    once = SerializeOnce()
    first, second = _deleted("a"), _deleted("b")
    data = once(first)
    assert once(first) is data  # the very bytes: not serialised again
    assert once(second) == second.SerializeToString() != data
    equal = _deleted("a")  # equal, but another object: serialised for itself
    assert once(equal) == data and once(first) == data


async def test_pushes_to_all_and_messages_to_one_keep_their_own_bytes(
    control_plane: RunningControlPlane,
) -> None:
    address = f"127.0.0.1:{control_plane.port}"
    hub = control_plane.plane.hub
    async with RawAgent(address, "agent-a") as a, RawAgent(address, "agent-b") as b:
        sent = len(a.received), len(b.received)
        # in one turn of the loop: pushes to every stream between messages to one of them
        for i in range(5):
            hub.broadcast(_deleted(f"svc{i}"))
            assert hub.send_to_agent("agent-a", pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=i)))
        await a.wait_for(lambda: len(a.received) >= sent[0] + 10)
        await b.wait_for(lambda: len(b.received) >= sent[1] + 5)
        to_a = [r for r in a.received[sent[0] :] if r.WhichOneof("message") in ("policy", "outcome_ack")]
        to_b = [r for r in b.received[sent[1] :] if r.WhichOneof("message") in ("policy", "outcome_ack")]
    expected = [
        m for i in range(5) for m in (_deleted(f"svc{i}"), pb.ConnectResponse(outcome_ack={"sequence": i}))
    ]
    assert to_a == expected
    assert to_b == [_deleted(f"svc{i}") for i in range(5)]
