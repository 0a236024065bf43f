"""The circuit-breaker state machine: pure decision logic with an injected clock.

The same machine runs in the control plane (one per breaker, for the whole fleet) and in
each agent (its local breaker, enforced when the control plane is out of reach). It does
no I/O, holds no lock and never sleeps: callers pass ``now`` (``time.monotonic()``).

States follow the seed: CLOSED counts consecutive failures and opens at
``failure_threshold`` (optionally also on a failure rate, or on a share of slow calls, over
a window); OPEN fails fast
for ``wait_duration_secs``; HALF_OPEN lets one probe call run, then (once one succeeded)
at most ``success_threshold`` at once — for the whole fleet when the control plane hands
out the permits — and closes after ``success_threshold`` probe successes or reopens on a
probe failure, for a longer wait each time (``wait_duration_multiplier`` times the one
before, up to ``max_wait_duration_secs``) until it closes: a service that stays down costs
fewer and fewer probe calls. Operators can force a breaker open or closed, or disable it;
that, like closing, starts the waits over.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from .permit_ids import Permit, pop_number
from .policy import WINDOW_SECS_MIN, ServicePolicy

__all__ = ["BreakerState", "CircuitBreaker", "Transition"]


class BreakerState(enum.IntEnum):
    """Values equal the ``BreakerState`` proto enum."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3
    FORCED_OPEN = 4
    FORCED_CLOSED = 5
    DISABLED = 6

    @property
    def rejects(self) -> bool:
        return self in (BreakerState.OPEN, BreakerState.FORCED_OPEN)

    @property
    def counts(self) -> bool:
        """Whether outcomes may move the breaker in this state."""
        return self in (BreakerState.CLOSED, BreakerState.HALF_OPEN)


OPERATOR_STATES = frozenset({BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED, BreakerState.DISABLED})


def operator_reason(state: BreakerState, reason: str) -> str:
    """The reason an operator gave for setting ``state``, "" when the breaker's ``reason``
    is only the one it is given without (see :meth:`CircuitBreaker.force`)."""
    return "" if reason == _set_by_operator(state) else reason


def _set_by_operator(state: BreakerState) -> str:
    return f"set to {state.name} by operator"


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    old: BreakerState
    new: BreakerState
    reason: str


@dataclass(slots=True)
class _Window:
    """Calls and counted ones (failures, or slow calls) per bucket over a window.

    Buckets are a second long, or a tenth of a short window, so that the window really
    slides: a rule meant to act within a second is not judged over stale buckets.
    """

    buckets: deque[tuple[int, int, int]] = field(default_factory=deque)  # (slot, calls, counted)
    calls: int = 0
    failures: int = 0

    def add(self, now: float, calls: int, failures: int, span: float) -> None:
        span = _sane_span(span)
        width = min(1.0, span / 10)
        slot = int(now / width)
        if self.buckets and self.buckets[-1][0] == slot:
            _, c, f = self.buckets.pop()
            self.buckets.append((slot, c + calls, f + failures))
        else:
            self.buckets.append((slot, calls, failures))
        self.calls += calls
        self.failures += failures
        while self.buckets and self.buckets[0][0] <= slot - round(span / width):
            _, c, f = self.buckets.popleft()
            self.calls -= c
            self.failures -= f

    def clear(self) -> None:
        self.buckets.clear()
        self.calls = self.failures = 0


_SPAN_MAX = 86400.0


def _sane_span(span: float) -> float:
    """The window length to use: policies are validated, but a value that got past that (an
    older release's, or the store's) must not break the arithmetic of every later report."""
    if math.isnan(span):
        return WINDOW_SECS_MIN
    return min(max(span, WINDOW_SECS_MIN), _SPAN_MAX)


class CircuitBreaker:
    """One breaker's state and the rules that move it.

    Every mutating method returns the :class:`Transition` it caused, or None.
    """

    def __init__(self, name: str, policy: ServicePolicy, now: float) -> None:
        self.name = name
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        #: failures that opened the breaker (the seed's CircuitBreakerOpen.failures)
        self.failures = 0
        self.half_open_successes = 0
        self.opened_at: float | None = None
        #: How long this OPEN lasts (OPEN), or the OPEN before this HALF_OPEN lasted.
        self.wait = policy.wait_duration_secs
        self.changed_at = now
        self.reason = ""
        self.generation = 0
        #: slow calls in the window that opened the breaker (the slow-call rule)
        self.slow_calls = 0
        #: A recovery check may not end this OPEN before this time (see :meth:`recover`).
        self.recovery_check_from: float | None = None
        #: This HALF_OPEN was begun by a recovery check (not by the wait's end).
        self.checked = False
        #: The generation of a HALF_OPEN the wait began whose lone probe a recovery check's
        #: SERVING answer joined (see :meth:`widen`); tied to the generation, so any later
        #: state (decided here or stored by another replica) drops it.
        self.widened_generation = -1
        self._window = _Window()
        self._slow = _Window()
        self._permits: dict[str, list[float]] = {}  # holder -> expiry times
        #: Permits of a HALF_OPEN a failed probe ended, whose probes may still run: they
        #: count against the next HALF_OPEN's limit until given back or expired (I3).
        self._earlier: dict[str, list[float]] = {}
        #: Permits that went with their holder's broken stream, whose holder has not said
        #: since (on a new stream) which of its probes still run: a probe under one may
        #: (a stream breaks while its process lives on, or it is cut off), so they count
        #: against the limit until the holder has said (:meth:`holder_said`) or their hold
        #: has passed (see :meth:`release_probes`; I3).
        self._gone: dict[str, list[float]] = {}
        #: Permits released with their holder's stream whose holder said it runs no probe
        #: under them (kept to their expiry, not counted): a late result is known.
        self._lost: dict[str, list[float]] = {}

    # -- reading ---------------------------------------------------------------

    def open_remaining(self, now: float) -> float:
        """Seconds until an OPEN breaker may go HALF_OPEN; 0 when not OPEN."""
        if self.state is not BreakerState.OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.wait - now)

    def permits_out(self, now: float) -> int:
        """Permits that may be in use: this HALF_OPEN's, those of one a failed probe ended
        and those gone with a stream whose holder has not said yet what it runs."""
        self._expire(now)
        return sum(len(v) for kept in (self._permits, self._earlier, self._gone) for v in kept.values())

    def permits_of(self, holder: str) -> int:
        return len(self._permits.get(holder, ()))

    def gone_of(self, holder: str) -> int:
        """Permits that went with ``holder``'s stream, of which it has not said yet."""
        return len(self._gone.get(holder, ()))

    def earlier_of(self, holder: str) -> int:
        """Permits ``holder`` got in a HALF_OPEN a failed probe ended (its probe may still run)."""
        return len(self._earlier.get(holder, ()))

    def return_earlier(self, holder: str, count: int | None = None) -> None:
        """``holder``'s probes of an ended HALF_OPEN are over (``count`` of them, or all)."""
        held = self._earlier.get(holder)
        if held and count is not None:
            del held[: max(0, count)]
        if not held or count is None:
            self._earlier.pop(holder, None)

    def probe_limit(self) -> int:
        """Probes that may be out at once in HALF_OPEN: one until a probe has succeeded
        (the single trial call of Polly and pybreaker), so that a service still down costs
        one call per HALF_OPEN, not ``success_threshold``; then ``success_threshold``.

        A HALF_OPEN a recovery check began lets ``success_threshold`` out at once: the
        service has just said it serves, so the single trial call buys little, while the
        probes one after another keep the fleet's calls off a service that is back for a
        round trip per probe. A health endpoint that lies costs ``success_threshold``
        probes per HALF_OPEN, still never the fleet's calls."""
        widened = self.widened_generation == self.generation
        return self.policy.success_threshold if self.half_open_successes or self.checked or widened else 1

    # -- outcomes --------------------------------------------------------------

    def record(
        self, now: float, successes: int, failures: int, trailing_failures: int | None = None
    ) -> Transition | None:
        """Ordinary (non-probe) call outcomes since the last report, in one batch.

        ``trailing_failures`` is the number of failures after the batch's last success
        (defaults to all failures when none succeeded, else 0).
        """
        if self.state is not BreakerState.CLOSED or (successes == 0 and failures == 0):
            return None
        if trailing_failures is None:
            trailing_failures = failures if successes == 0 else 0
        trailing_failures = min(trailing_failures, failures)
        if successes:
            self.consecutive_failures = trailing_failures
        else:
            self.consecutive_failures += failures
        rate = self.policy.failure_rate
        if rate is not None:
            self._window.add(now, successes + failures, failures, rate.window_secs)
        if self.consecutive_failures >= self.policy.failure_threshold:
            count = self.consecutive_failures
            return self._open(now, count, f"{count} consecutive failures")
        if rate is not None and self._window.calls >= rate.minimum_calls:
            share = self._window.failures / self._window.calls
            if share >= rate.threshold:
                reason = f"failure rate {share:.0%} over {self._window.calls} calls"
                return self._open(now, self._window.failures, reason)
        return None

    def record_timing(self, now: float, timed: int, slow: int) -> Transition | None:
        """Calls judged for slowness since the last report (``timed``), of which ``slow``
        ran past the policy's slow-call duration; opens on the slow-call rule."""
        rule = self.policy.slow_call
        if rule is None or self.state is not BreakerState.CLOSED or timed <= 0:
            return None
        window = self._slow
        window.add(now, timed, min(slow, timed), rule.window_secs)
        if window.calls < rule.minimum_calls:
            return None
        share = window.failures / window.calls
        if share < rule.rate_threshold:
            return None
        reason = f"slow calls {share:.0%} ≥ {rule.rate_threshold:.0%} over {rule.window_secs:g} s"
        slow_calls = window.failures
        move = self._open(now, self.consecutive_failures, reason)
        self.slow_calls = slow_calls
        return move

    def record_probes(
        self, now: float, holder: str, successes: int, failures: int, *, settled: bool = False
    ) -> Transition | None:
        """Results of probe calls made under permits held by ``holder`` (``settled``: their
        permits went already, by grant: :meth:`settle`)."""
        if not settled:
            self._return_permits(holder, successes + failures)
        if self.state is not BreakerState.HALF_OPEN:
            return None
        if failures:
            return self._open(now, self.failures + failures, "probe failed")
        self.half_open_successes += successes
        if self.half_open_successes >= self.policy.success_threshold:
            return self._move(now, BreakerState.CLOSED, f"{self.half_open_successes} probes succeeded")
        return None

    # -- time ------------------------------------------------------------------

    def tick(self, now: float) -> Transition | None:
        """Moves OPEN to HALF_OPEN once the wait is over; drops expired permits."""
        self._expire(now)
        if self.state is BreakerState.OPEN and self.open_remaining(now) <= 0:
            return self._move(now, BreakerState.HALF_OPEN, "wait elapsed")
        return None

    def recover(self, now: float, reason: str) -> Transition | None:
        """A recovery check found the service serving: an OPEN goes HALF_OPEN at once, so
        that probe calls confirm it, unless the check may not end this OPEN yet."""
        if self.state is not BreakerState.OPEN or not self.may_recover(now):
            return None
        move = self._move(now, BreakerState.HALF_OPEN, reason)
        self.checked = True
        return move

    def may_recover(self, now: float) -> bool:
        """Whether a recovery check may end this OPEN now: not in the first half of a wait
        that followed the failed probe of a HALF_OPEN a check began (a health endpoint that
        says SERVING while calls fail must not make the breaker flap at every check; a
        probe that failed after the wait ended says nothing against the check)."""
        return self.recovery_check_from is None or now >= self.recovery_check_from

    def may_widen(self) -> bool:
        """Whether a recovery check's SERVING answer would let more probes out now: a
        HALF_OPEN the wait began that still lets one at a time."""
        return self.state is BreakerState.HALF_OPEN and self.probe_limit() < self.policy.success_threshold

    def widen(self) -> bool:
        """A recovery check found the service serving while this HALF_OPEN's lone probe is
        out (sent perhaps while the service still failed or was slow, and waiting for its
        timeout): let ``success_threshold`` probes out at once, as in a HALF_OPEN a check
        began. The probe out keeps counting; if it fails, the OPEN that follows holds no
        check back (that probe went out before the check answered). Returns whether the
        limit was raised."""
        if not self.may_widen():
            return False
        self.widened_generation = self.generation
        return True

    # -- probes ----------------------------------------------------------------

    def acquire_probe(
        self, now: float, holder: str, ttl: float, count: int = 1, number: int = 0, *, several: bool = False
    ) -> int:
        """Grant up to ``count`` probe permits to ``holder`` (of grant ``number``, if
        numbered); returns how many. A holder for ``several`` (a follower's relay, for its
        agents) may hold permits of an earlier HALF_OPEN meanwhile: they count all the same.

        At most :meth:`probe_limit` permits are out at any time, over all holders.
        """
        if self.state is not BreakerState.HALF_OPEN:
            return 0
        if self._earlier.get(holder) and not several:
            return 0  # its probe of the HALF_OPEN that failed may still run
        free = self.probe_limit() - self.permits_out(now)
        granted = max(0, min(count, free))
        if granted:
            self._permits.setdefault(holder, []).extend([Permit(now + ttl, number)] * granted)
        return granted

    def release_probes(self, holder: str, count: int | None = None) -> None:
        """Give back unused permits (``count`` of them), or (``count`` None) every permit of
        a holder whose stream broke: those go on counting until it has said, once back,
        which of its probes still run (:meth:`holder_said`), or until their hold has passed
        (the TTL the holder had to begin a probe in, then the call that probe may take): a
        holder cut off, not heard, may still run one; a killed one looks the same."""
        if count is None:
            gone = self._permits.pop(holder, []) + self._earlier.pop(holder, [])
            if gone:
                self._gone.setdefault(holder, []).extend(gone)
        else:
            self._return_permits(holder, count)

    def holder_said(self, holder: str) -> int:
        """``holder`` is back and has said which probes under permits of its streams before
        still run (:meth:`note_running` took those): the rest of the permits that went with
        them run nothing and count no more. Returns how many that frees."""
        gone = self._gone.pop(holder, [])
        if gone:
            self._lost.setdefault(holder, []).extend(gone)
        return len(gone)

    def set_aside_permits(self) -> None:
        """The HALF_OPEN the permits were granted in is over (replaced from the store):
        they stay out as earlier ones, whose probes may still run (see :meth:`_move`)."""
        for holder, expiries in self._permits.items():
            self._earlier.setdefault(holder, []).extend(expiries)
        self._permits.clear()

    def clear_permits(self) -> None:
        """Forget every permit (the state was replaced from the store)."""
        self._permits.clear()
        self._earlier.clear()
        self._gone.clear()
        self._lost.clear()

    def settle(self, holder: str, number: int) -> str:
        """A probe under ``holder``'s grant ``number`` ended: its permit goes. Returns
        which it was: "current" (of this HALF_OPEN, held now: the result counts),
        "earlier" (its probe counted in flight for no HALF_OPEN), "lost" (released with
        the holder's stream) or "" (none known)."""
        kinds = (
            ("current", self._permits),
            ("earlier", self._earlier),
            ("lost", self._gone),
            ("lost", self._lost),
        )
        for kind, permits in kinds:
            if pop_number(permits, holder, number) is not None:
                return kind
        return ""

    def knows(self, holder: str, number: int) -> bool:
        """Whether ``holder`` was given grant ``number`` and it is not settled yet."""
        return bool(number) and any(
            getattr(p, "number", 0) == number
            for permits in (self._permits, self._earlier, self._gone, self._lost)
            for p in permits.get(holder, ())
        )

    def known_numbers(self, holder: str) -> set[int]:
        """The grants ``holder`` was given that are not settled yet (see :meth:`knows`)."""
        return {
            number
            for permits in (self._permits, self._earlier, self._lost)
            for p in permits.get(holder, ())
            if (number := getattr(p, "number", 0))
        }

    def lose(self, holder: str, number: int) -> bool:
        """``holder`` gives back its permit of grant ``number`` (unused, or lost with the
        stream of the agent it went to): it counts no more, but is kept to its expiry, as
        one released with a stream, in case its probe is said to run (:meth:`note_running`)."""
        permit = pop_number(self._permits, holder, number)
        if permit is None:
            permit = pop_number(self._earlier, holder, number)
        if permit is None:
            return False
        self._lost.setdefault(holder, []).append(permit)
        return True

    def note_running(self, holder: str, number: int) -> bool:
        """``holder`` says its probe under grant ``number``, given over a stream that has
        broken since, still runs: the permit counts in flight for no HALF_OPEN (its
        result counts for none) until the result comes or the permit's hold lapses."""
        permit = pop_number(self._permits, holder, number)
        if permit is None:
            permit = pop_number(self._gone, holder, number)
        if permit is None:
            permit = pop_number(self._lost, holder, number)
        if permit is None:
            return False
        self._earlier.setdefault(holder, []).append(permit)
        return True

    def _return_permits(self, holder: str, count: int) -> None:
        held = self._permits.get(holder)
        if not held:
            # A holder has permits of one HALF_OPEN at a time (none is granted while it
            # holds earlier ones), so these are the earlier ones' results.
            self.return_earlier(holder, count)
            return
        del held[: max(0, count)]
        if not held:
            del self._permits[holder]

    def timed(self) -> bool:
        """Whether time alone may change this breaker (:meth:`tick`): it is OPEN (its wait
        ends) or holds permits (they expire). A CLOSED or HALF_OPEN one without permits
        waits for reports only, so a fleet of thousands is not walked in full every tick."""
        return self.state is BreakerState.OPEN or bool(
            self._permits or self._earlier or self._gone or self._lost
        )

    def timed_at(self) -> float | None:
        """When time alone next changes this breaker (:meth:`tick`): the end of an OPEN's
        wait or the earliest expiry of a permit; None when it is not :meth:`timed`."""
        times = [
            t
            for kept in (self._permits, self._earlier, self._gone, self._lost)
            for v in kept.values()
            for t in v
        ]
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            times.append(self.opened_at + self.wait)
        elif self.state is BreakerState.OPEN:
            return -math.inf
        return min(times) if times else None

    def expire_permits(self, now: float) -> int:
        """Drop permits held past their time; returns how many."""
        return self._expire(now)

    def _expire(self, now: float) -> int:
        expired = 0
        for permits in (self._permits, self._earlier, self._gone, self._lost):
            for holder in [h for h, v in permits.items() if any(t <= now for t in v)]:
                kept = [t for t in permits[holder] if t > now]
                if permits is not self._lost:  # those freed nothing: they counted for none
                    expired += len(permits[holder]) - len(kept)
                if kept:
                    permits[holder] = kept
                else:
                    del permits[holder]
        return expired

    # -- operators -------------------------------------------------------------

    def force(self, now: float, state: BreakerState, reason: str = "") -> Transition | None:
        """Set an operator state, or CLOSED to reset. Counters start over."""
        if state not in OPERATOR_STATES and state is not BreakerState.CLOSED:
            raise ValueError(f"{state.name} cannot be set by an operator")
        self.consecutive_failures = 0
        self._window.clear()
        self._slow.clear()
        return self._move(now, state, reason or _set_by_operator(state), force=True)

    def update_policy(self, policy: ServicePolicy) -> None:
        """Use a new policy from now on; the state and counters are kept."""
        if policy.failure_rate != self.policy.failure_rate:
            self._window.clear()
        if policy.slow_call != self.policy.slow_call:
            self._slow.clear()
        self.policy = policy

    # -- moves -----------------------------------------------------------------

    def _open(self, now: float, failures: int, reason: str) -> Transition | None:
        # Only a failed HALF_OPEN waits longer: an OPEN from CLOSED starts the waits over.
        reopened = self.state is BreakerState.HALF_OPEN
        self.wait = self.policy.open_wait(self.wait if reopened else None)
        self.recovery_check_from = now + self.wait / 2 if reopened and self.checked else None
        self.failures = failures
        self.slow_calls = 0
        self.opened_at = now
        return self._move(now, BreakerState.OPEN, reason)

    def _move(self, now: float, new: BreakerState, reason: str, *, force: bool = False) -> Transition | None:
        old = self.state
        if old is new and not force:
            return None
        self.state = new
        self.changed_at = now
        self.reason = reason
        self.generation += 1
        self.checked = False
        self.half_open_successes = 0
        if old is BreakerState.HALF_OPEN:
            # A failed probe ends the HALF_OPEN, not the others' probes still running: with
            # several out at once (a check's HALF_OPEN, a widened one) the next HALF_OPEN
            # must count them, or the fleet runs more than success_threshold (I3). Nor
            # does closing on success_threshold successes end a probe granted after the
            # first succeeded: its result, due still, is that holder's to report.
            self.set_aside_permits()
        elif new is not BreakerState.OPEN and new is not BreakerState.HALF_OPEN:
            self._earlier.clear()
            self._gone.clear()
            self._lost.clear()
        self._permits.clear()
        if new is BreakerState.CLOSED:
            self.consecutive_failures = 0
            self.failures = 0
            self.slow_calls = 0
            self._window.clear()
            self._slow.clear()
        if new is not BreakerState.OPEN:
            self.recovery_check_from = None
        if new is not BreakerState.OPEN and new is not BreakerState.HALF_OPEN:
            self.opened_at = None
            self.wait = self.policy.wait_duration_secs
        return Transition(self.name, old, new, reason)
