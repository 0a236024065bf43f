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
    once = SerializeOnce(wall=None)
    first, second = _deleted("a"), _deleted("b")
    data = once(first)
    assert once(first) is data  # the very bytes: not serialised again
    assert once(second) == second.SerializeToString() != data
    equal = _deleted("a")  # equal, but another object: serialised for itself
    assert once(equal) == data and once(first) == data


def test_each_copy_says_when_it_was_written_on_the_shared_bytes() -> None:
    now = [1000.25]
    once = SerializeOnce(wall=lambda: now[0])
    message = _deleted("a")
    first = pb.ConnectResponse.FromString(once(message))
    now[0] = 1003.5
    second = pb.ConnectResponse.FromString(once(message))
    assert first.policy == second.policy == message.policy
    assert first.sent_at.ToNanoseconds() == 1000_250_000_000
    assert second.sent_at.ToNanoseconds() == 1003_500_000_000
    stamped = pb.ConnectResponse(policy=message.policy)  # a stamp it carries is not merged
    stamped.sent_at.FromNanoseconds(7_000_000_123)
    assert pb.ConnectResponse.FromString(once(stamped)).sent_at.ToNanoseconds() == 1003_500_000_000


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
    assert all(r.HasField("sent_at") for r in to_a + to_b)
    for r in to_a + to_b:
        r.ClearField("sent_at")
    assert to_a == expected
    assert to_b == [_deleted(f"svc{i}") for i in range(5)]
