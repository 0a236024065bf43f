"""The false-positive KPI (definition in server/kpis.py): calls stopped while their upstream
was healthy by its schedule, OPENs on a healthy upstream, and the parts of them shown apart
(the calls stopped within the wait of an OPEN an outage caused, those kept off after it).
"""

from __future__ import annotations

from collections.abc import Sequence

from .kpis_record import SLACK, Run, failing_during, mode_at, stopped


def kept_off_after(run: Run, service: str) -> int:
    """Calls to ``service`` stopped by its breaker (refused, or sent to a fallback) after its
    last outage ended, while the upstream served: the price of the breaker's waits (it
    learns of the recovery only at its next probe). Not a KPI; shown with them."""
    upstream = run.upstream_of[service]
    ends = [p.end for p in run.phases if p.upstream == upstream and p.mode == "fail"]
    if not ends:
        return 0
    return sum(
        1
        for c in run.agent_calls
        if c["service"] == service
        and c["t"] >= max(ends)
        and mode_at(run.phases, upstream, c["t"]) == "ok"
        and stopped(c)
    )


def opens(run: Run, service: str) -> list[tuple[float, float, float]]:
    """Each OPEN episode of ``service``'s breaker: (opened at, its wait, closed at or inf),
    the wait worked out as the breaker does (a reopen after HALF_OPEN grows it)."""
    wait_of = run.open_wait.get(service) or (lambda _previous: run.wait_of.get(service, 0.0))
    episodes: list[tuple[float, float, float]] = []
    state, wait = "CLOSED", 0.0
    for t, name, new in sorted(run.transitions):
        if name != service:
            continue
        if new == "OPEN":
            wait = wait_of(wait if state == "HALF_OPEN" else None)
            if episodes and episodes[-1][2] == float("inf"):
                episodes[-1] = (*episodes[-1][:2], t)  # the reopen ends the previous wait
            episodes.append((t, wait, float("inf")))
        elif new == "CLOSED" and episodes and episodes[-1][2] == float("inf"):
            episodes[-1] = (*episodes[-1][:2], t)
        state = new
    return episodes


def _in_force(episodes: Sequence[tuple[float, float, float]], t: float) -> tuple[float, float] | None:
    """The OPEN (opened at, wait) in force at ``t``, if the breaker was not CLOSED then."""
    for opened, wait, ended in reversed(episodes):
        if opened <= t:
            return (opened, wait) if t < ended else None
    return None


def false_opens(run: Run) -> list[tuple[float, str]]:
    """Each OPEN of a breaker whose upstream had been healthy for over :data:`SLACK`."""
    return [
        (t, name)
        for t, name, state in run.transitions
        if name in run.upstream_of
        and state == "OPEN"
        and not failing_during(run.phases, run.upstream_of[name], t - SLACK, t)
    ]


def false_positive_rate(run: Run) -> tuple[float | None, int, int]:
    """(rate, false positives, calls made to a healthy upstream): see the definition in
    server/kpis.py. Only the upstream's schedule excuses a stopped call. The rate's base is
    those calls and the false OPENs (each is a judgement, and counted false)."""
    healthy = false = 0
    for call in run.agent_calls:
        if mode_at(run.phases, run.upstream_of[call["service"]], call["t"]) != "ok":
            continue
        healthy += 1
        false += 1 if stopped(call) else 0
    spurious = len(false_opens(run))
    false += spurious
    judged = healthy + spurious
    return (false / judged if judged else None), false, healthy


def false_positives_by_service(run: Run) -> dict[str, int]:
    """The false positives of each service (its stopped healthy calls and false OPENs)."""
    counts = dict.fromkeys(run.upstream_of, 0)
    for call in run.agent_calls:
        if stopped(call) and mode_at(run.phases, run.upstream_of[call["service"]], call["t"]) == "ok":
            counts[call["service"]] += 1
    for _, name in false_opens(run):
        counts[name] += 1
    return counts


def false_positives_in_wait(run: Run) -> int:
    """Of the false positives, the calls stopped within the wait of an OPEN that an outage
    caused (opened while its upstream failed, or within :data:`SLACK` of it): the breaker
    could only learn of the recovery at its next probe. Not excused: shown apart."""
    count = 0
    for service, upstream in run.upstream_of.items():
        caused = [
            (opened, wait, ended)
            for opened, wait, ended in opens(run, service)
            if failing_during(run.phases, upstream, opened - SLACK, opened)
        ]
        for call in run.agent_calls:
            if call["service"] != service or not stopped(call):
                continue
            if mode_at(run.phases, upstream, call["t"]) != "ok":
                continue
            open_ = _in_force(caused, call["t"])
            count += 1 if open_ is not None and call["t"] < open_[0] + open_[1] + SLACK else 0
    return count
