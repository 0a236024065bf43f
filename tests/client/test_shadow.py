"""Shadow mode on the agent: a candidate's limits and retry rule count what they would have
done, and nothing of them is enforced (an injected clock; no network)."""

from __future__ import annotations

import pytest
from mission_control.client.admission import Refused, Ticket
from mission_control.client.errors import LLMProviderUnavailable
from mission_control.client.executor import Executor
from mission_control.client.policy import Backoff, Quota, RetryBudget, ServicePolicy
from mission_control.client.view import LocalView

SERVICE = "storage_backend"
WINDOW = 3600.0
ENFORCED = ServicePolicy(
    service=SERVICE,
    rate_limit_requests=100,
    rate_limit_window_secs=WINDOW,
    quotas=(Quota("tokens", 1000, WINDOW),),
    max_retries=0,
    backoff=Backoff(initial_secs=0.01, jitter=0),
    retry_budget=RetryBudget(ratio=10, min_retries_per_second=100),
)
CANDIDATE = ENFORCED.replace(
    rate_limit_requests=3, quotas=(Quota("tokens", 10, WINDOW),), max_concurrent=1, max_retries=2
)


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def executor(candidate: ServicePolicy | None = CANDIDATE) -> Executor:
    view = LocalView({SERVICE: ENFORCED}, clock=Clock())
    view.set_shadow(SERVICE, candidate)
    return Executor(view, sleep=lambda _: None)


def enter(ex: Executor, cost: dict[str, float] | None = None) -> Ticket:
    ticket = ex.enter(SERVICE, "op", None, None, cost)
    assert not isinstance(ticket, Refused)  # the candidate never refuses a call
    return ticket


def test_the_candidates_rate_limit_counts_would_rejects_and_refuses_nothing() -> None:
    ex = executor()
    assert [ex.run(SERVICE, lambda _left: "ok") for _ in range(5)] == ["ok"] * 5
    tally = ex.view.get(SERVICE).tally
    assert (tally.successes, tally.rejected, tally.shadow_calls) == (5, 0, 5)
    assert tally.shadow_rejected_by_reason == {"rate_limit": 2}


def test_the_candidates_bulkhead_and_quota_keep_their_own_places_and_units() -> None:
    ex = executor()
    first = enter(ex, {"tokens": 6})
    second = enter(ex, {"tokens": 1})  # the candidate allows one call in flight
    tally = ex.view.get(SERVICE).tally
    assert tally.shadow_rejected_by_reason == {"bulkhead": 1}
    ex.release(first)
    ex.release(second)  # held no place under the candidate: frees nothing of it
    assert ex.view.get(SERVICE).shadow.in_flight == 0  # type: ignore[union-attr]
    ex.release(enter(ex, {"tokens": 6}))  # 6 + 6 > 10: the quota, not the bulkhead
    assert tally.shadow_rejected_by_reason == {"bulkhead": 1, "quota": 1}
    assert tally.rejected == 0


@pytest.mark.parametrize(
    ("enforced_retries", "candidate_retries", "retried", "would"),
    [(0, 2, 0, 1), (2, 0, 2, 0), (1, 1, 1, 1)],
)
def test_would_retry_is_counted_beside_the_retries_made(
    enforced_retries: int, candidate_retries: int, retried: int, would: int
) -> None:
    view = LocalView({SERVICE: ENFORCED.replace(max_retries=enforced_retries)}, clock=Clock())
    view.set_shadow(SERVICE, CANDIDATE.replace(max_retries=candidate_retries, rate_limit_requests=100))
    ex = Executor(view, sleep=lambda _: None)

    def down(_left: float) -> str:
        raise LLMProviderUnavailable("p", "down")

    with pytest.raises(LLMProviderUnavailable):
        ex.run(SERVICE, down)
    tally = view.get(SERVICE).tally
    assert (tally.failures, tally.retries, tally.shadow_retries) == (1 + retried, retried, would)


def test_without_a_candidate_nothing_is_evaluated_and_clearing_drops_it() -> None:
    ex = executor(None)
    ticket = enter(ex)
    assert ticket.shadow is None and ex.view.get(SERVICE).shadow is None
    ex.release(ticket)
    assert ex.view.get(SERVICE).tally.shadow_calls == 0
    ex.view.set_shadow(SERVICE, CANDIDATE)
    ex.release(enter(ex))
    assert ex.view.get(SERVICE).tally.shadow_calls == 1
    ex.view.replace_shadows({})  # a snapshot without it
    assert ex.view.shadow_of(SERVICE) is None and ex.view.get(SERVICE).shadow is None
