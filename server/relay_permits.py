"""The probe permits a follower's relay handed to its agents, each by the grant it came under.

A follower asks the leader for permits on behalf of its agents and hands each grant to one
of them; the leader holds every such permit for the relay, by grant number
(``ProbeGrant.number``). What goes back up must name those very grants:

* a probe result counts only under a grant relayed to the agent that reports it (of any
  breaker generation: the leader tells a permit of this HALF_OPEN from one kept from an
  earlier one); a result naming a grant relayed to another agent here is cut, one naming a
  grant not relayed here at all goes on (the leader granted it to the agent before it moved
  here, and settles it under the agent: that permit then counts no longer than its probe
  ran; before, the result was cut and the permit counted until its hold lapsed); so does a
  running probe (``probes_running``);
* a permit an agent gives back unused is named to the leader
  (``OutcomeSummary.released_grants``), so the leader lets go of that one and not of another
  agent's permit still running;
* a permit held when the agent's stream ended is kept out, as the leader keeps its own
  agents' (``CircuitBreaker.holder_said``): its probe may run on, and given back before the
  probe can have ended the permit would go to an agent asking then, beside it (more than
  ``success_threshold`` probes in flight, I3). Once the agent, back on a new stream here,
  has said in its first batch which probes still run (``probes_running``, passed on only for
  grants relayed to it), those stay out until their results come and the rest are named
  back; an agent that does not come back here (cut off, killed, or gone to another replica)
  keeps it out until its hold lapses — the TTL plus the policy's timeout, the longest its
  probe may run — as the leader's own. (Before, it was named back one probe TTL after it
  was handed out, and a probe still running went on beside the permit granted again.)
* a permit counts here until its result or give-back comes, or until the leader's hold on it
  lapses (the grant's TTL plus the policy's timeout): a result lost on the way does not keep
  the agent from asking again for ever.

A grant goes on to the agent with the granter's ``hold_until`` read on this replica's clock
(through the leader's clock offset measured from its messages, ``ConnectResponse.sent_at``)
and only the TTL left of it (:func:`passed_on`): one that reached this replica late (a
stalled link to the leader) leaves the agent that much less time to begin its probe in,
which the agent could not tell from the TTL alone (it counts the TTL from when the grant
reaches it).

Which generation is current is the generation of the last grant the leader sent: a leader
after a wipe or a failover may start its generations lower than the one before.

Pure logic with an injected clock; the caller is :class:`.relay.LeaderRelay`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .probe_results import MAX_RUNNING, identified

__all__ = ["MAX_RELEASED", "RelayedPermits", "passed_on"]

#: Grants named in one summary of permits given back (more go in further summaries).
MAX_RELEASED = 64


@dataclass(slots=True)
class _Relayed:
    generation: int
    expiry: float
    #: The agent's stream ended while it held the permit: kept out until the agent said
    #: whether its probe still runs, or its hold (``expiry``) lapsed.
    lost: bool = False
    #: Named to the leader as given back (kept here: a result may still come).
    released: bool = False


def passed_on(
    grant: pb.ProbeGrant, wall_now: float, timeout: float, shift: float | None = None
) -> pb.ProbeGrant:
    """``grant`` as it goes on to an agent at ``wall_now`` (epoch seconds): its
    ``hold_until`` read on this replica's wall clock (plus ``shift``: the leader's clock's
    offset from this one, measured from its messages, ``client/clock_offset.py``), and its
    TTL cut to what is left of it, as this replica reckons from that hold less ``timeout``
    (the policy's here); unchanged when the granter did not say its hold (an older one), or
    when nothing is to be shifted and the whole TTL is left. The agent reads the hold on its
    own clock through its offset from this replica's clock. With ``shift`` None (no message
    of the leader said its clock yet, an older leader) the hold goes on as the leader said
    it, and this replica's clock is taken to agree with the leader's within the agents'
    margin (``client/probes.py``, ``HOLD_SKEW_SECS``)."""
    if not grant.HasField("hold_until"):
        return grant
    ttl = grant.ttl.ToNanoseconds() / 1e9
    hold = grant.hold_until.ToNanoseconds() / 1e9 + (shift or 0.0)
    left = max(0.0, hold - wall_now - timeout)
    if left >= ttl and shift is None:
        return grant
    out = pb.ProbeGrant()
    out.CopyFrom(grant)
    if left < ttl:
        out.ttl.FromNanoseconds(int(left * 1e9))
    if shift is not None:
        out.hold_until.FromNanoseconds(int(hold * 1e9))
    return out


class RelayedPermits:
    """Permits relayed to this follower's agents, by service, agent and grant number.

    Args:
        clock: monotonic seconds.
        timeout_of: the policy timeout of a service (a probe may run that long after its
            permit's TTL: the leader holds the permit that much longer).
    """

    def __init__(self, clock: Callable[[], float], timeout_of: Callable[[str], float]) -> None:
        self._clock = clock
        self._timeout_of = timeout_of
        self._held: dict[str, dict[str, dict[int, _Relayed]]] = {}
        #: Grants to name to the leader as given back, per service.
        self._released: dict[str, list[int]] = {}
        #: The generation of the last grant the leader sent, per service.
        self._current: dict[str, int] = {}
        #: Keys for grants without a number (negative: never a grant's number).
        self._unnamed = itertools.count(-1, -1)

    # -- from the leader -------------------------------------------------------

    def handed(self, agent: str, grant: pb.ProbeGrant) -> None:
        """``grant`` went to ``agent``."""
        self._current[grant.service] = grant.generation
        hold = grant.ttl.ToNanoseconds() / 1e9 + self._timeout_of(grant.service)
        held = self._held.setdefault(grant.service, {}).setdefault(agent, {})
        now = self._clock()
        for _ in range(max(1, grant.permits)):
            key = grant.number if grant.number and grant.number not in held else next(self._unnamed)
            held[key] = _Relayed(grant.generation, now + hold)

    def granted(self, grant: pb.ProbeGrant) -> None:
        """The leader sent ``grant``: its generation is the one in force (even a lower one)."""
        self._current[grant.service] = grant.generation

    def give_back(self, grant: pb.ProbeGrant) -> bool:
        """``grant`` went to no agent: name it to the leader as given back (False: it has
        no number, give it back by count)."""
        if not grant.number or grant.permits != 1:
            return False
        self._released.setdefault(grant.service, []).append(grant.number)
        return True

    def released(self, service: str, numbers: Iterable[int]) -> None:
        """Name ``numbers`` to the leader as given back, with the next summaries."""
        numbers = list(numbers)
        if numbers:
            self._released.setdefault(service, []).extend(numbers)

    def current(self, service: str) -> int:
        return self._current.get(service, 0)

    # -- from the agents -------------------------------------------------------

    def holds(self, agent: str, service: str) -> bool:
        """Whether ``agent`` holds a permit of the HALF_OPEN in force (it asks for none then)."""
        current = self._current.get(service, 0)
        return any(not p.lost and p.generation == current for p in self._live(service, agent).values())

    def count(self, agent: str, service: str) -> int:
        """Permits relayed to ``agent`` whose results or give-backs may still come."""
        return len(self._live(service, agent))

    def checked(self, agent: str, summary: pb.OutcomeSummary) -> pb.OutcomeSummary:
        """``summary`` with only the probe results, give-backs and running probes of permits
        relayed to ``agent`` (results and running probes named by grant where the agent
        named them), give-backs named for the leader."""
        out = pb.OutcomeSummary()
        out.CopyFrom(summary)
        del out.probe_grants[:], out.probes_running[:], out.released_grants[:]
        held = self._live(summary.service, agent)
        current = self._current.get(summary.service, 0)
        generation = summary.probe_generation or current
        if identified(summary):
            failed = [
                n
                for n in summary.probe_grants[: summary.probe_failures]
                if self._ours(held, agent, summary.service, n)
            ]
            succeeded = [
                n
                for n in summary.probe_grants[summary.probe_failures :]
                if self._ours(held, agent, summary.service, n)
            ]
            out.probe_failures, out.probe_successes = len(failed), len(succeeded)
            out.probe_grants.extend(failed + succeeded)
        elif summary.probe_failures or summary.probe_successes:
            # unnamed results count against this agent's permits of their generation, by count
            keys = [k for k, p in held.items() if p.generation == generation and not p.lost]
            out.probe_failures = min(summary.probe_failures, len(keys))
            out.probe_successes = min(summary.probe_successes, len(keys) - out.probe_failures)
            for key in keys[: out.probe_failures + out.probe_successes]:
                del held[key]
        if summary.probes_released:
            keys = [k for k, p in held.items() if p.generation == generation and not p.lost]
            keys = keys[: summary.probes_released]
            for key in keys:
                del held[key]
            out.released_grants.extend(k for k in keys if k > 0)
            out.probes_released = sum(1 for k in keys if k < 0)
        for number in summary.probes_running[:MAX_RUNNING]:
            permit = held.get(number)
            if permit is not None and number > 0:
                out.probes_running.append(number)
                if permit.lost:  # kept out for it: it still runs
                    permit.lost = False
            elif number > 0 and not self._relayed_to_another(summary.service, agent, number):
                # not relayed here: a grant the leader gave this agent itself before it moved
                # here, which the leader checks under the agent (the batch's origin); never
                # one relayed to another agent here (it would count that agent's permit)
                out.probes_running.append(number)
        if not held:
            self._forget(summary.service, agent)
        return out

    def agent_left(self, agent: str) -> dict[str, int]:
        """``agent``'s stream is gone: its permits are kept out, lost, until it says from its
        next stream here whether their probes still run (:meth:`holder_said`) or their hold
        lapses (as the leader's on them). Returns the count of those
        without a number per service, to give back by count at once (nothing to know them
        again by)."""
        unnamed: dict[str, int] = {}
        for service in list(self._held):
            held = self._live(service, agent)
            for key in [k for k, p in held.items() if not p.lost and not p.released]:
                if key > 0:
                    held[key].lost = True
                else:
                    del held[key]
                    unnamed[service] = unnamed.get(service, 0) + 1
            self._forget(service, agent)
        return unnamed

    def holder_said(self, agent: str) -> bool:
        """``agent``'s first batch on a new stream here was taken (the probes it still runs
        were read from it by :meth:`checked`): its permits still lost are named back.
        Returns whether any was."""
        named = False
        for service in list(self._held):
            for key, permit in self._live(service, agent).items():
                if permit.lost and not permit.released:
                    self._release(service, key, permit)
                    named = True
        return named

    def take_released(self) -> list[pb.OutcomeSummary]:
        """Summaries naming the permits given back since the last call."""
        for service in list(self._held):  # (lapsed ones of agents gone for good, too)
            for agent in list(self._held[service]):
                self._live(service, agent)
                self._forget(service, agent)
        out = []
        released, self._released = self._released, {}
        for service, numbers in released.items():
            for i in range(0, len(numbers), MAX_RELEASED):
                out.append(pb.OutcomeSummary(service=service, released_grants=numbers[i : i + MAX_RELEASED]))
        return out

    def forget(self) -> None:
        """Forget every permit (they were granted by a leader that is no more)."""
        self._held.clear()
        self._released.clear()

    # -- internals -------------------------------------------------------------

    def _release(self, service: str, number: int, permit: _Relayed) -> None:
        permit.released = True
        self._released.setdefault(service, []).append(number)

    def _live(self, service: str, agent: str) -> dict[int, _Relayed]:
        """``agent``'s permits of ``service`` not lapsed (the lapsed ones forgotten)."""
        held = self._held.get(service, {}).get(agent)
        if not held:
            return {}
        now = self._clock()
        for key in [k for k, p in held.items() if p.expiry <= now]:
            del held[key]
        return held

    def _ours(self, held: dict[int, _Relayed], agent: str, service: str, number: int) -> bool:
        """Whether a result under grant ``number`` goes on for ``agent``: under a grant relayed
        to it (settled here), or under one relayed to no agent here (the leader's own to the
        agent, from before it moved here: the leader settles it under the agent)."""
        if held.pop(number, None) is not None:
            return True
        return number > 0 and not self._relayed_to_another(service, agent, number)

    def _relayed_to_another(self, service: str, agent: str, number: int) -> bool:
        return any(number in held for other, held in self._held.get(service, {}).items() if other != agent)

    def _forget(self, service: str, agent: str) -> None:
        agents = self._held.get(service)
        if agents is not None and not agents.get(agent):
            agents.pop(agent, None)
            if not agents:
                del self._held[service]
