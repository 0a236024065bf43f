"""What one agent's outcome report may claim, enforced where the report enters.

An agent is trusted to report on its own calls, not to invent them. Each summary is
bounded before anything counts it:

* **Reporters.** A policy may name who may report on its service (``reporters``: agent
  ids, or ``prefix*`` groups); anyone else's summaries are refused.
* **Calls.** ``successes + failures`` may not exceed the calls the agent could have made:
  the policy's rate limit, as a token bucket per (agent, service) that holds up to
  ``burst_windows`` windows of calls (one window of calls, plus one of reports that waited
  for a reconnect) and refills at the rate limit. What is beyond is cut, successes and
  failures in proportion (the failure rate stays what the agent saw). Every attempt takes
  a unit of the rate limit, so an honest agent stays within.
* **Rejections, probes, drops.** ``rejected`` is cut by a second bucket at ten times the
  rate limit (an honest agent whose breaker is open refuses as fast as it is called, so
  going over it is no misbehaviour: counted in ``rejections_capped`` and noted at most once
  a minute for all agents, not as a refused report); probe results and releases by the
  permits the agent holds (``probes_held``); a batch's ``dropped`` at ``max_dropped_per_batch``.
* **Slow calls.** ``timed_calls`` takes from the same bucket as the calls (a batch may
  judge slow calls still running, so it counts the larger of the two); ``slow_calls`` never
  exceeds ``timed_calls``, and both are cut in proportion. ``endpoints_over_cap`` (counted
  when a call starts) likewise.
* **Fields.** ``trailing_failures`` and ``recovery_*`` never exceed the calls kept;
  ``errors_by_type`` and ``errors_by_operation`` keep at most ``max_keys_per_summary``
  printable keys of at most ``max_key_length`` characters, counts at most the failures,
  and one agent introduces at most ``max_keys_per_agent`` distinct keys (the rest count
  as ``other``).

Replicas relaying for their agents (``trusted``: see the README's Security section) were
bounded per agent where the agents connected, reporters rule included: the leader trusts
what they relay. Every refused or cut
summary is counted per agent and logged (at most once a minute per agent).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .probe_results import copy_grants
from .shadow import bound_shadow

_log = logging.getLogger("mission_control.server.reports")

#: The gates that stop a call before it leaves the agent.
REJECTION_REASONS = frozenset({"breaker", "rate_limit", "quota", "bulkhead"})
#: Writes one summary may say a spool kept or dropped (they are the agent's own counts:
#: nothing of the fleet's is decided on them).
MAX_SPOOL_COUNT = 10_000
#: Agents whose refusals are counted by name; the rest count under "other".
MAX_COUNTED_AGENTS = 1000
#: Agents whose summary budget is remembered (also after they left).
MAX_BUDGETS = 20_000


@dataclass(frozen=True)
class ReportLimits:
    """Bounds on one agent's reports."""

    burst_windows: float = 2.0
    max_key_length: int = 128
    max_keys_per_summary: int = 32
    max_keys_per_agent: int = 64
    max_buckets: int = 100_000
    #: Calls rejected locally (breaker, rate limit, quota, bulkhead) may exceed the calls
    #: made: up to this many times the rate limit's bucket.
    rejected_per_call: float = 10.0
    #: Outcomes an agent says it dropped, in one batch.
    max_dropped_per_batch: int = 1_000_000
    #: Summaries one agent may send per second, and in one burst (a reconnect's backlog);
    #: the rest are refused unread. Replicas relaying for their agents are not bound here.
    summaries_per_sec: float = 1024.0
    summaries_burst: float = 2048.0


@dataclass
class _Bucket:
    tokens: float
    at: float
    rejected: float = 0.0


def may_report(policy: ServicePolicy, agent: str) -> bool:
    """Whether ``agent`` is one of the policy's reporters (all agents when none is named).
    ``agent`` may be an agent process's key ("id@instance"): its agent id is matched."""
    if not policy.reporters:
        return True
    name = agent.partition("@")[0]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in policy.reporters)


class ReportGate:
    """Bounds each summary an agent sends, and counts what it refused."""

    def __init__(
        self,
        policy_of: Callable[[str], ServicePolicy],
        limits: ReportLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy_of = policy_of
        self.limits = limits or ReportLimits()
        self._clock = clock
        # Oldest first: at max_buckets the least recently used bucket goes, in O(1).
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._services_of: dict[str, set[str]] = {}
        # Kept after an agent leaves (a reconnect brings no fresh burst), oldest dropped first.
        self._budgets: OrderedDict[str, _Bucket] = OrderedDict()
        self._keys: dict[str, set[str]] = {}
        self._logged: dict[str, float] = {}
        #: Summaries refused or cut, per agent.
        self.refused: Counter[str] = Counter()
        #: Locally refused calls counted beyond the ``rejected`` bucket, per agent (not a
        #: fault of the agent: its breaker or limits refusing fast).
        self.rejections_capped: Counter[str] = Counter()
        self._capped_logged = -1e9

    def bound(
        self,
        agent: str,
        summary: pb.OutcomeSummary,
        *,
        trusted: bool = False,
        probes_held: int | None = None,
    ) -> pb.OutcomeSummary | None:
        """The part of ``summary`` that counts, or None when none of it does.

        ``probes_held``: the probe permits the agent holds on the service (None: unbounded);
        probe results and releases beyond them are cut.
        """
        policy = self._policy_of(summary.service)
        if not trusted and not may_report(policy, agent):
            self.refuse(agent, summary.service, "not a reporter of this service")
            return None
        out = pb.OutcomeSummary(
            service=summary.service,
            probe_generation=summary.probe_generation,
            origin_first=summary.origin_first,  # (a name, not a count: see relay_spans)
        )
        calls = summary.successes + summary.failures
        # A slow call is judged while it runs, and a call is counted over the endpoint cap
        # when it starts, so a batch may judge or count more calls than ended.
        made = max(calls, summary.timed_calls, summary.endpoints_over_cap)
        if trusted:
            allowed, out.rejected = made, summary.rejected
        else:
            allowed, out.rejected = self._take(agent, policy, made, summary.rejected)
        cut = allowed < made
        self._timing_into(summary, out, allowed)
        cut |= self._probes_into(summary, out, probes_held)
        copy_grants(summary, out)
        if allowed < calls:  # cut in proportion: the failure rate reported stays the same
            out.failures = min(allowed, (summary.failures * allowed + calls // 2) // calls)
            out.successes = min(summary.successes, allowed - out.failures)
        else:
            out.failures, out.successes = summary.failures, summary.successes
        out.trailing_failures = min(summary.trailing_failures, out.failures)
        out.recovery_attempts = min(summary.recovery_attempts, allowed)
        out.recovery_successes = min(summary.recovery_successes, out.recovery_attempts)
        failures = out.failures + out.probe_failures
        cut |= self._keys_into(agent, summary.errors_by_type, out.errors_by_type, failures)
        cut |= self._keys_into(agent, summary.errors_by_operation, out.errors_by_operation, failures)
        for reason, n in summary.rejected_by_reason.items():
            if reason in REJECTION_REASONS:  # the four gates; anything else is not ours
                out.rejected_by_reason[reason] = min(n, out.rejected)
        needing = out.rejected + out.failures  # calls a fallback may have served
        out.fallbacks_served = min(summary.fallbacks_served, needing)
        out.fallbacks_failed = min(summary.fallbacks_failed, needing * max(1, len(policy.fallbacks)))
        if summary.shadow_calls or summary.retries or summary.shadow_retries:
            bound_shadow(summary, out, allowed)
        # A spool's counts move no breaker (its calls are counted as calls): bounded per
        # summary, and summaries per agent are rate-limited.
        out.spool_replayed = min(summary.spool_replayed, MAX_SPOOL_COUNT)
        out.spooled = min(summary.spooled, MAX_SPOOL_COUNT)
        out.spool_dropped = min(summary.spool_dropped, MAX_SPOOL_COUNT)
        out.spool_held = min(summary.spool_held, MAX_SPOOL_COUNT)
        if out.rejected < summary.rejected:
            self._cap_rejections(agent, summary.rejected - out.rejected)
        if cut:
            self.refuse(
                agent, summary.service, f"claimed more than it could ({calls} calls, {allowed} allowed)"
            )
        trimmed = cut or out.rejected < summary.rejected
        if trimmed and len(out.ListFields()) == 1:  # only the name is left: nothing to count
            return None
        return out

    @staticmethod
    def _timing_into(summary: pb.OutcomeSummary, out: pb.OutcomeSummary, allowed: int) -> None:
        timed = summary.timed_calls
        slow = min(summary.slow_calls, timed)
        if timed > allowed:  # cut in proportion: the slow share reported stays the same
            slow = min(allowed, (slow * allowed + timed // 2) // timed)
            timed = allowed
        out.timed_calls, out.slow_calls = timed, slow
        out.endpoints_over_cap = min(summary.endpoints_over_cap, allowed + out.rejected)

    def admit(self, agent: str, summaries: int) -> int:
        """How many of ``summaries`` the agent's budget lets in now (the rest are refused)."""
        now = self._clock()
        limits = self.limits
        budget = self._budgets.get(agent)
        if budget is None:
            if len(self._budgets) >= MAX_BUDGETS:
                self._budgets.popitem(last=False)
            budget = self._budgets[agent] = _Bucket(limits.summaries_burst, now)
        else:
            self._budgets.move_to_end(agent)
        refilled = budget.tokens + (now - budget.at) * limits.summaries_per_sec
        budget.tokens = min(limits.summaries_burst, refilled)
        budget.at = now
        admitted = min(summaries, int(budget.tokens))
        budget.tokens -= admitted
        return admitted

    def refill_secs(self, summaries: int) -> float:
        """How long an agent's budget takes to refill ``summaries`` (at most 5 s)."""
        return min(5.0, summaries / self.limits.summaries_per_sec)

    def refuse(self, agent: str, service: str, why: str, count: int = 1) -> None:
        """Count (and now and then log) ``count`` reports refused or cut."""
        key = agent if agent in self.refused or len(self.refused) < MAX_COUNTED_AGENTS else "other"
        self.refused[key] += count
        now = self._clock()
        if now - self._logged.get(key, -1e9) >= 60.0:
            self._logged[key] = now
            _log.warning(
                "report of agent %r on %r refused or cut: %s (%d so far)",
                agent,
                service,
                why,
                self.refused[key],
            )

    def _cap_rejections(self, agent: str, count: int) -> None:
        """Count ``count`` locally refused calls beyond the bucket; noted once a minute."""
        known = agent in self.rejections_capped or len(self.rejections_capped) < MAX_COUNTED_AGENTS
        self.rejections_capped[agent if known else "other"] += count
        now = self._clock()
        if now - self._capped_logged >= 60.0:
            self._capped_logged = now
            _log.info(
                "locally refused calls counted up to %g times the rate limit; beyond it: %d "
                "so far, from %d agent(s) whose breakers or limits refuse fast (not a fault)",
                self.limits.rejected_per_call,
                sum(self.rejections_capped.values()),
                len(self.rejections_capped),
            )

    def agent_left(self, agent: str) -> None:
        """Forget what was kept for ``agent`` (its buckets, its keys)."""
        self._keys.pop(agent, None)
        self._logged.pop(agent, None)
        for service in self._services_of.pop(agent, ()):
            self._buckets.pop((agent, service), None)

    @property
    def buckets(self) -> int:
        """How many (agent, service) buckets are held."""
        return len(self._buckets)

    # -- internals -------------------------------------------------------------

    def dropped(self, agent: str, n: int) -> int:
        """The part of a batch's ``dropped`` count that counts."""
        most = self.limits.max_dropped_per_batch
        if n > most:
            self.refuse(agent, "*", f"claimed {n} dropped outcomes in one batch")
        return min(n, most)

    @staticmethod
    def _probes_into(summary: pb.OutcomeSummary, out: pb.OutcomeSummary, held: int | None) -> bool:
        """Copy probe results and releases, at most ``held`` of each; True when cut."""
        if held is None:
            out.probe_failures, out.probe_successes = summary.probe_failures, summary.probe_successes
            out.probes_released = summary.probes_released
            return False
        out.probe_failures = min(summary.probe_failures, held)
        out.probe_successes = min(summary.probe_successes, held - out.probe_failures)
        out.probes_released = min(summary.probes_released, held)
        kept = out.probe_failures + out.probe_successes + out.probes_released
        return kept < summary.probe_failures + summary.probe_successes + summary.probes_released

    def _take(self, agent: str, policy: ServicePolicy, calls: int, rejected: int) -> tuple[int, int]:
        """(calls, rejected calls) the agent's bucket on the service allows."""
        now = self._clock()
        rate = policy.rate_limit_requests / policy.rate_limit_window_secs
        capacity = policy.rate_limit_requests * self.limits.burst_windows
        factor = self.limits.rejected_per_call
        key = (agent, policy.service)
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.limits.max_buckets:
                self._evict_oldest()
            bucket = self._buckets[key] = _Bucket(capacity, now, capacity * factor)
            self._services_of.setdefault(agent, set()).add(policy.service)
        else:
            self._buckets.move_to_end(key)
        elapsed = now - bucket.at
        bucket.tokens = min(capacity, bucket.tokens + elapsed * rate)
        bucket.rejected = min(capacity * factor, bucket.rejected + elapsed * rate * factor)
        bucket.at = now
        allowed = min(calls, int(bucket.tokens))
        bucket.tokens -= allowed
        refused = min(rejected, int(bucket.rejected))
        bucket.rejected -= refused
        return allowed, refused

    def _evict_oldest(self) -> None:
        # The least recently used bucket: a full one loses nothing; a drained one gives its
        # agent a fresh burst, which the cap on buckets per agent and in all keeps bounded.
        (agent, service), _ = self._buckets.popitem(last=False)
        services = self._services_of.get(agent)
        if services is not None:
            services.discard(service)
            if not services:
                del self._services_of[agent]

    def _keys_into(self, agent: str, given: object, into: object, most: int) -> bool:
        """Copy the bounded part of an errors_by_* map; True when something was cut."""
        if not given:
            return False
        if most <= 0:  # nothing kept to attribute (a cut report): nothing to copy or remember
            return any(given.values())  # type: ignore[attr-defined]
        limits = self.limits
        items = list(dict(given).items())  # type: ignore[call-overload]
        seen = self._keys.setdefault(agent, set())
        cut = len(items) > limits.max_keys_per_summary
        kept: dict[str, int] = {}
        for name, n in items[: limits.max_keys_per_summary]:
            if not name or len(name) > limits.max_key_length or not name.isprintable():
                cut = True
                continue
            if not n:
                continue
            if name not in seen:
                if len(seen) >= limits.max_keys_per_agent:
                    name = "other"
                else:
                    seen.add(name)
            kept[name] = min(most, kept.get(name, 0) + n)
            cut |= n > most
        into.update(kept)  # type: ignore[attr-defined]
        return cut
