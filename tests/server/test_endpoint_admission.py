"""Which endpoint breakers the control plane keeps: pure decision logic with an injected
clock (the fleet-wide behaviour is checked across processes in test_endpoint_breakers and
test_endpoint_forgetting)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.admission import ServiceAdmission
from mission_control.server.engine import FleetBreakers
from mission_control.server.policies import PolicyBook

SERVICE = "llm"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(**policy: object) -> tuple[ServiceAdmission, FleetBreakers, Clock]:
    clock = Clock()
    book = PolicyBook("/p")
    fields = {"failure_threshold": 2, "wait_duration_secs": 60.0, "endpoint_idle_secs": 10.0, **policy}
    book.apply(book.key(SERVICE), policy_to_json(ServicePolicy(SERVICE, **fields)).encode(), 1)  # type: ignore[arg-type]
    breakers = FleetBreakers(book.policy_of, clock=clock)
    return ServiceAdmission(book, breakers, clock=clock), breakers, clock


def report(
    admission: ServiceAdmission, breakers: FleetBreakers, agent: str, name: str, failures: int = 0
) -> bool:
    if not admission.allows(agent, name):
        return False
    breakers.record(agent, pb.OutcomeSummary(service=name, successes=0 if failures else 1, failures=failures))
    return True


def forget_idle(admission: ServiceAdmission, breakers: FleetBreakers) -> list[str]:
    """What the control plane's forgetting loop does (the store aside)."""
    names = admission.idle()
    for name in names:
        breakers.forget(name)
    return names


def test_an_open_or_half_open_endpoint_is_never_forgotten_idle_and_idles_again_once_closed() -> None:
    admission, breakers, clock = setup()
    a, b = f"{SERVICE}/a", f"{SERVICE}/b"
    assert report(admission, breakers, "agent", a, failures=2)
    assert report(admission, breakers, "agent", b)
    assert breakers.get(a).state is BreakerState.OPEN
    clock.now += 11
    assert forget_idle(admission, breakers) == [b]  # the CLOSED one goes, the OPEN one stays
    clock.now += 60
    breakers.tick()
    assert breakers.get(a).state is BreakerState.HALF_OPEN
    clock.now += 3600
    assert forget_idle(admission, breakers) == []
    breakers.force(a, BreakerState.CLOSED)
    clock.now += 5
    assert forget_idle(admission, breakers) == []  # idle counts from when it was last seen not CLOSED
    clock.now += 6
    assert forget_idle(admission, breakers) == [a]


def test_one_agent_cannot_keep_every_place_from_the_others() -> None:
    admission, breakers, clock = setup(max_endpoints=4)
    junk = [f"{SERVICE}/junk{i}" for i in range(6)]
    assert [report(admission, breakers, "hostile", name) for name in junk] == [True] * 4 + [False] * 2
    assert admission.endpoints_refused[SERVICE] == 2
    clock.now += 1
    # another agent's endpoints take the least recently reported CLOSED places of the
    # agent holding the most, while it holds at least two more than the newcomer
    assert report(admission, breakers, "victim", f"{SERVICE}/openai/gpt-x", failures=2)
    assert report(admission, breakers, "victim", f"{SERVICE}/anthropic/claude")
    assert breakers.get(f"{SERVICE}/openai/gpt-x").state is BreakerState.OPEN
    assert not report(admission, breakers, "victim", f"{SERVICE}/mistral/large")  # 2 each now
    assert admission.endpoints_refused[SERVICE] == 3
    assert sorted(forget_idle(admission, breakers)) == junk[:2]  # given up: forgotten
    assert not report(admission, breakers, "hostile", junk[0])  # 2 each: no place to take back


def test_open_endpoints_keep_their_place_and_zero_means_no_endpoint_breakers() -> None:
    admission, breakers, _ = setup(max_endpoints=2)
    assert report(admission, breakers, "hostile", f"{SERVICE}/a", failures=2)
    assert report(admission, breakers, "hostile", f"{SERVICE}/b", failures=2)
    assert not report(admission, breakers, "victim", f"{SERVICE}/c")  # both places are OPEN
    none, _, _ = setup(max_endpoints=0)
    assert not none.allows("victim", f"{SERVICE}/c")
    assert none.endpoints_refused[SERVICE] == 1
