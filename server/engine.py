"""The fleet's breakers: one state machine per breaker, fed by every agent's outcomes.

This module decides; it does no I/O. It turns outcome summaries, probe requests, timer
ticks and operator commands into transitions, hands out HALF_OPEN probe permits so the
*fleet* sends at most ``success_threshold`` probes at a time, and reports every change to
listeners (the Connect streams, WatchBreakers, statistics, the persister).

A permit is held here from its grant for the probe TTL plus the policy's timeout of the
time, and its grant says when that hold ends on the wall clock (``ProbeGrant.hold_until``):
the agent ends its probe by then, however late the grant reached it and whatever timeout
it was told, reading it on its own clock through this replica's clock offset, measured from
the messages it gets (``ConnectResponse.sent_at``, ``client/clock_offset.py``). A new
leader waits out an earlier leader's holds counted with the highest timeout one may have
been granted under (:mod:`.lowered_timeouts`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import json_format
from mission_control.client.breaker import BreakerState, CircuitBreaker, Transition
from mission_control.client.policy import ServicePolicy
from mission_control.client.probes import ASKING_SECS
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .forgotten import Forgotten, ForgottenBreakers
from .grant_numbers import GrantNumbers
from .lowered_timeouts import LoweredTimeouts
from .probe_results import identified, lose_released, note_running, settle_results
from .stored_counts import taken_counts
from .stored_runs import StoredRuns
from .timed_breakers import TimedBreakers

_log = logging.getLogger("mission_control.server.engine")

#: How long an agent may hold an unused probe permit.
PROBE_TTL_SECS = 5.0

#: How the reason of a HALF_OPEN a recovery check began starts.
CHECK_REASON = "recovery check: "

#: The longest wait a policy may set (a day): a stored wait beyond is not believed.
_LONGEST_WAIT = 86400.0

#: The Breaker message's counters are uint32: a count beyond is shown (and stored) as this.
UINT32_MAX = 2**32 - 1

#: Followers' relays gone whose permits a result sent here by its agent may settle: far
#: more than the replicas of a fleet (see FleetBreakers.relays_gone).
MAX_RELAYS_GONE = 64

#: The highest generation a stored record may hold: a generation is counted up by one
#: per transition (never near this), and every later one must still fit a uint64 and be
#: exact in JSON numbers.
MAX_GENERATION = 2**53

#: How far in the future a stored time may be (clock skew between replicas): an
#: ``opened_at`` beyond would keep the breaker OPEN past the longest wait.
FUTURE_SKEW_SECS = 300.0

ChangeListener = Callable[[pb.Breaker, BreakerState | None, Transition | None], None]
GrantListener = Callable[[str, pb.ProbeGrant], None]


@dataclass
class _Demand:
    """Agents that want to call a service whose breaker is not CLOSED: they asked for a
    permit or were refused within the last ASKING_SECS (agents ask again every 100 ms while
    they want to call). Permits go only to them, so none waits with an agent that left off."""

    last_seen: dict[str, float] = field(default_factory=dict)
    #: When each agent was last granted a permit: the longest unserved go first.
    served: dict[str, float] = field(default_factory=dict)

    def note(self, agent: str, now: float) -> None:
        self.last_seen[agent] = now

    def recent(self, now: float, horizon: float) -> list[str]:
        for agent in [a for a, t in self.last_seen.items() if now - t > horizon]:
            del self.last_seen[agent]
            self.served.pop(agent, None)
        return sorted(self.last_seen, key=lambda a: (self.served.get(a, -1e18), -self.last_seen[a]))


def check_record(record: pb.Breaker, wall_now: float) -> None:
    """Refuse a stored breaker record whose numbers no replica can use. Raises ValueError
    naming every bad field (the record's uint32 counters are bounded by parsing)."""
    bad = []
    if record.generation > MAX_GENERATION:
        bad.append(f"generation: at most {MAX_GENERATION} is allowed, got {record.generation}")
    for field_name in ("opened_at", "changed_at"):
        if not record.HasField(field_name):
            continue
        seconds = getattr(record, field_name).ToNanoseconds() / 1e9
        if not 0 <= seconds <= wall_now + FUTURE_SKEW_SECS:
            when = getattr(record, field_name).ToJsonString()
            wanted = f"a time not after now (+{FUTURE_SKEW_SECS:g} s)"
            bad.append(f"{field_name}: {wanted} is required, got {when}")
    if bad:
        raise ValueError("; ".join(bad))


def _stored_wait(record: pb.Breaker, policy: ServicePolicy) -> float:
    """The wait a stored OPEN (or the OPEN before a stored HALF_OPEN) lasts: as stored (the
    leader keeps it through policy changes, so must every replica), up to a day; the
    policy's first wait when none is stored (a record of an earlier release) or it is not
    a wait (written by hand)."""
    wait = record.open_remaining.ToNanoseconds() / 1e9 if record.HasField("open_remaining") else 0.0
    return min(wait, _LONGEST_WAIT) if wait > 0 else policy.wait_duration_secs


class FleetBreakers:
    """Every breaker the control plane knows, with the rules that move them.

    Args:
        policy_of: the policy in force for a service.
        clock: monotonic seconds; wall: epoch seconds (only for what is persisted).
    """

    def __init__(
        self,
        policy_of: Callable[[str], ServicePolicy],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        probe_ttl: float = PROBE_TTL_SECS,
        numbers: GrantNumbers | None = None,
    ) -> None:
        self._policy_of = policy_of
        #: Numbers each grant as it is made, so probe results can name theirs.
        self.numbers = numbers if numbers is not None else GrantNumbers()
        self._clock = clock
        self._wall_offset = wall() - clock()
        self._wall = wall
        self.probe_ttl = probe_ttl
        #: Timeouts lowered lately, which a new leader's wait still counts.
        self.lowered = LoweredTimeouts()
        self._breakers: dict[str, CircuitBreaker] = {}
        #: The breakers time alone may change: what the tick walks.
        self._timed = TimedBreakers()
        #: Whether the last tick stopped at its slice, leaving breakers due (:meth:`tick`).
        self.tick_cut = False
        self._demand: dict[str, _Demand] = {}
        #: etcd mod_revision of each breaker's stored state (0 = never stored).
        self.revisions: dict[str, int] = {}
        #: Breakers forgotten here (idle ones), as stored then (see :mod:`.forgotten`): a
        #: watch event at or below one's revision, still on its way when the breaker was
        #: dropped, does not bring it back (:meth:`forgotten_at`; a read of the key, the
        #: writer's, is not such an event, but its own record left behind is: :meth:`resumed`).
        self._forgotten = ForgottenBreakers()
        #: Revisions of malformed records a follower's writer took (a compare-and-swap
        #: over one expects it): what it holds does not rest on them (``basis``).
        self.unread: dict[str, int] = {}
        #: The value the store holds for each breaker, as last read or written here (the
        #: "before" of the next transition's audit record).
        self.records: dict[str, bytes] = {}
        #: The highest generation of each breaker told to agents (see _transitioned).
        self._told: dict[str, int] = {}
        #: Whether this replica leads with its leader lease known to hold (see
        #: :meth:`took_over`); None: it runs alone, no other replica grants.
        self.lead_check: Callable[[], bool] | None = None
        self._took_over = float("-inf")
        #: Breakers not CLOSED when this replica took over, or first learnt from the store
        #: not CLOSED while it leads: since when (see :meth:`took_over`). An earlier leader
        #: may have granted permits for them.
        self._held_since: dict[str, float] = {}
        #: When a HALF_OPEN another replica decided was taken while leading.
        self._adopted: dict[str, float] = {}
        #: Breakers held so (since a takeover, or taken while leading) that had no permit
        #: since: the first one granted logs the hold it waited out.
        self._hold_untold: set[str] = set()
        #: Which breakers the store is known to hold not CLOSED (see :mod:`.stored_runs`).
        self._runs = StoredRuns()
        #: Followers' relays that asked for permits (each holds several, for its agents).
        self._relays: dict[str, None] = {}
        #: Followers' relays whose last stream here ended (killed, or cut off from here):
        #: a result one of their agents sends here itself, under a permit held for such a
        #: relay, settles that permit (see probe_results.settle_results). The latest
        #: :data:`MAX_RELAYS_GONE`, oldest first (a relay's permits lapse with their hold).
        self.relays_gone: dict[str, None] = {}
        self.change_listeners: list[ChangeListener] = []
        #: Called with the name of every breaker made here (held from then on).
        self.made_listeners: list[Callable[[str], None]] = []
        #: Whether what is held here is the store's fleet state (read once): a breaker made
        #: here before then is not pushed as the truth (the store may hold it otherwise),
        #: and no probe permit is granted (its policy may still be the defaults).
        self.view_complete: Callable[[], bool] = lambda: True
        self.grant_listeners: list[GrantListener] = []
        #: Whether the agents of this replica can get no probe permit for a breaker (at a
        #: time) (``Breaker.no_grants``, see :mod:`.grant_pause`); None: always they can.
        self.no_grants: Callable[[CircuitBreaker, float], bool] | None = None
        #: Called before a permit of a breaker is granted (the mark is taken back first).
        self.before_grant: Callable[[str], None] | None = None

    # -- reading ---------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._breakers)

    def count(self) -> int:
        """How many breakers are held."""
        return len(self._breakers)

    def now(self) -> float:
        """This engine's clock (monotonic seconds)."""
        return self._clock()

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self._policy_of(name), self._clock())
            self._breakers[name] = breaker
            self.lowered.made(name)
            for listener in self.made_listeners:
                listener(name)
            mark = self._forgotten.get(name)
            if mark is not None:  # started over: its next state counts on from what was told
                self._told[name] = max(self._told.get(name, 0), mark.told)
        return breaker

    def draft(self, name: str) -> CircuitBreaker:
        """A copy of the breaker (or a new one) to try a change on without making it."""
        found = self._breakers.get(name)
        if found is not None:
            return copy.deepcopy(found)
        return CircuitBreaker(name, self._policy_of(name), self._clock())

    def find(self, name: str) -> CircuitBreaker | None:
        return self._breakers.get(name)

    def to_proto(self, name: str) -> pb.Breaker:
        return self._message(self.get(name))

    def _message(self, b: CircuitBreaker) -> pb.Breaker:
        name = b.name
        now = self._clock()
        message = pb.Breaker(
            name=name,
            state=int(b.state),
            consecutive_failures=min(b.consecutive_failures, UINT32_MAX),
            failures=min(b.failures, UINT32_MAX),
            half_open_successes=min(b.half_open_successes, UINT32_MAX),
            reason=b.reason,
            revision=self.basis(name),
            generation=b.generation,
            slow_calls=min(b.slow_calls, UINT32_MAX),
            no_grants=self.no_grants is not None and self.no_grants(b, now),
        )
        message.changed_at.FromNanoseconds(int((b.changed_at + self._wall_offset) * 1e9))
        if b.opened_at is not None:
            message.opened_at.FromNanoseconds(int((b.opened_at + self._wall_offset) * 1e9))
        if b.state is BreakerState.OPEN:
            message.open_remaining.FromNanoseconds(int(b.open_remaining(now) * 1e9))
        if b.recovery_check_from is not None:
            message.recovery_check_from.FromNanoseconds(
                int((b.recovery_check_from + self._wall_offset) * 1e9)
            )
        return message

    def snapshot(self) -> list[pb.Breaker]:
        return [self.to_proto(n) for n in self.names()]

    # -- stored form -----------------------------------------------------------

    def to_record(self, name: str) -> bytes:
        return self.record_of(self.get(name))

    def record_of(self, breaker: CircuitBreaker) -> bytes:
        """What is stored in etcd: the breaker as protobuf JSON, without the revision, and
        with ``open_remaining`` measured from ``opened_at`` (the whole wait of the OPEN, or
        of the one before a HALF_OPEN) rather than from the time it was sent, so that
        another replica or a restart keeps the expiry and grows the next wait from it."""
        message = self._message(breaker)
        message.ClearField("open_remaining")
        if breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN):
            message.open_remaining.FromNanoseconds(int(breaker.wait * 1e9))
        message.ClearField("revision")
        message.ClearField("no_grants")  # this replica's now, not the breaker's
        text = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)
        return text.encode()

    def adopt(self, name: str, value: bytes | None, revision: int) -> None:
        """Take a stored state as the truth (another replica's decision, a restart).

        ``value`` None means the key was deleted: the breaker starts over CLOSED.
        Raises ValueError when ``value`` is not a breaker record.
        """
        if value is not None and 0 < revision <= self.revisions.get(name, 0):
            return  # already applied (the watch and the writer both report a write)
        if value is None and 0 < revision < self.revisions.get(name, 0):
            return  # a deletion before the write held, heard late: the key holds that write
        forgotten = self._forgotten.pop(name)
        started_over = name in self._breakers and not self.revisions.get(name)
        if value is None and revision and forgotten is not None and started_over:
            # The deletion of the record forgotten here, heard after a report started the
            # breaker over (held, never stored): the counts since are its own, kept.
            return
        if value is None and name not in self._breakers:
            # Forgotten here already (an idle one): agents that still hold its last state
            # hear that it is CLOSED, and it takes no place here.
            message = self._message(CircuitBreaker(name, self._policy_of(name), self._clock()))
            for listener in list(self.change_listeners):
                try:
                    listener(message, None, None)
                except Exception:
                    _log.exception("breaker change listener failed")
            return
        breaker = self.get(name)
        old, held_generation = breaker.state, breaker.generation
        if value is None:
            fresh = CircuitBreaker(name, self._policy_of(name), self._clock())
            fresh.generation = breaker.generation + 1
            self._breakers[name] = fresh
            self.revisions[name] = 0
            self.records.pop(name, None)
            self._changed(name, old, None)
            return
        record = json_format.Parse(value, pb.Breaker(), ignore_unknown_fields=True)
        if record.name and record.name != name:
            raise ValueError(f"record for {record.name!r} stored under {name!r}")
        if record.state == pb.BREAKER_STATE_UNSPECIFIED:
            raise ValueError("record has no state")
        check_record(record, self._clock() + self._wall_offset)
        breaker.state = BreakerState(record.state)
        # none of the counts toward its next transition: they are the writer's (stored_counts)
        breaker.consecutive_failures, breaker.half_open_successes = taken_counts(record)
        breaker.failures = record.failures
        breaker.slow_calls = record.slow_calls
        breaker.reason = record.reason
        breaker.generation = record.generation
        breaker.changed_at = self._mono(record.changed_at.ToNanoseconds())
        breaker.opened_at = (
            self._mono(record.opened_at.ToNanoseconds()) if record.HasField("opened_at") else None
        )
        breaker.wait = _stored_wait(record, breaker.policy)
        breaker.recovery_check_from = (
            self._mono(record.recovery_check_from.ToNanoseconds())
            if breaker.state is BreakerState.OPEN and record.HasField("recovery_check_from")
            else None
        )
        # who began a stored HALF_OPEN is kept in its reason (a check's starts with CHECK_REASON)
        breaker.checked = breaker.state is BreakerState.HALF_OPEN and record.reason.startswith(CHECK_REASON)
        if not (
            old is BreakerState.HALF_OPEN and breaker.state is old and breaker.generation == held_generation
        ):
            # permits belong to one HALF_OPEN: the same one stored again (the watch echoing
            # its write, a reload) keeps them out, or more than the limit would go. Another
            # state ends them, not the probes under them, which may still run: they count
            # against the next HALF_OPEN until given back or expired, as after a failed
            # probe; only a state that lets every call through (or none) forgets them
            if breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN):
                breaker.set_aside_permits()
            else:
                breaker.clear_permits()
            leading = self.lead_check is not None and self.lead_check()
            if breaker.state is BreakerState.HALF_OPEN and leading:
                self._adopted[name] = self._clock()  # its permits were granted elsewhere
                self._hold_untold.add(name)
            if old is BreakerState.CLOSED and breaker.state is not BreakerState.CLOSED and leading:
                # not decided here (this leader would hold it already): loaded after the
                # takeover, an earlier leader's OPEN — whose HALF_OPEN it may have decided
                # from memory and granted probes for
                self._held_since[name] = self._clock()
                self._hold_untold.add(name)
        self.revisions[name] = revision
        self.records[name] = value
        self._timed.mark(breaker)
        self._changed(name, old, None, stored=True)  # the store holds its run: as pushed

    def _mono(self, wall_nanos: int) -> float:
        return wall_nanos / 1e9 - self._wall_offset

    def run_of(self, name: str) -> int | None:
        """Which not-CLOSED run a record of ``name`` taken now belongs to (None: CLOSED);
        the writer hands it back to :meth:`stored` once the store took the record."""
        return self._runs.run(name, self.get(name).state)

    def stored(self, name: str, revision: int, run: int | None) -> None:
        """The store took a record of ``name`` at ``revision``, taken in ``run``
        (:meth:`run_of`): once it holds the breaker's current run, permits may go out."""
        known = self.store_holds(name)
        self.revisions[name] = revision
        self._runs.stored(name, run)
        breaker = self._breakers.get(name)
        half_open = breaker is not None and breaker.state is BreakerState.HALF_OPEN
        if half_open and not known and self.store_holds(name):
            self._grant_waiting(name, self._clock())

    def store_holds(self, name: str) -> bool:
        """Whether the store is known to hold ``name`` not CLOSED since it last left
        CLOSED here: only then may a leader grant its probe permits (:mod:`.stored_runs`)."""
        return self.revisions.get(name, 0) > 0 and self._runs.known(name)

    # -- inputs ----------------------------------------------------------------

    def record(self, agent: str, summary: pb.OutcomeSummary, origin: str = "") -> list[Transition]:
        """Apply one agent's outcome summary for one service (``origin``: the agent a
        follower's relay ``agent`` passes it on for)."""
        now = self._clock()
        new = summary.service not in self._breakers
        breaker = self.get(summary.service)
        moves: list[Transition | None] = []
        # Probe counts of another generation belong to a HALF_OPEN that is over: its
        # permits were cleared with it, and a late give-back must not free a new one.
        current = summary.probe_generation in (0, breaker.generation)
        if summary.released_grants:  # a follower's relay names what it gives back
            lose_released(breaker, agent, summary)
        if summary.probes_running:  # probes begun under permits lost with a stream still run
            note_running(breaker, agent, summary)
            if origin and origin != agent:
                # an agent gone from here, back on a follower: its probe under a permit
                # granted here counts in flight, not only until that permit's TTL ends
                note_running(breaker, origin, summary)
        named = identified(summary)
        if summary.probes_released and current:
            breaker.release_probes(agent, summary.probes_released)
        if not current:  # results or give-backs of a HALF_OPEN a failed probe ended
            unnamed = 0 if named else summary.probe_successes + summary.probe_failures
            breaker.return_earlier(agent, summary.probes_released + unnamed)
        if named:  # each result counts only under its own grant, held now (probe_results)
            probe_successes, probe_failures = settle_results(
                breaker, agent, summary, current, origin, self.relays_gone
            )
        else:  # results count only for permits this agent holds, of this HALF_OPEN
            held = breaker.permits_of(agent) if current else 0
            probe_failures = min(summary.probe_failures, held)
            probe_successes = min(summary.probe_successes, held - probe_failures)
        if probe_successes or probe_failures:
            moves.append(breaker.record_probes(now, agent, probe_successes, probe_failures, settled=named))
        moves.append(breaker.record(now, summary.successes, summary.failures, summary.trailing_failures))
        moves.append(breaker.record_timing(now, summary.timed_calls, summary.slow_calls))
        self._timed.mark(breaker)
        if summary.rejected and breaker.state is not BreakerState.CLOSED:
            self._demand.setdefault(summary.service, _Demand()).note(agent, now)
        done = [m for m in moves if m is not None]
        if new and not done:
            self._begun(summary.service)
        for move in done:
            self._transitioned(move)
        if breaker.state is BreakerState.HALF_OPEN and not done:
            self._grant_waiting(summary.service, now)
        return done

    def request_probe(self, agent: str, service: str, *, relay: bool = False) -> pb.ProbeGrant | None:
        """An agent wants to probe ``service``; grant a permit when one is free. An agent
        holds one at a time; a follower's ``relay`` asks for each of its agents waiting
        for one, so it may hold several (it hands each to one agent, or gives it back)."""
        now = self._clock()
        if service not in self._breakers:
            self.get(service)
            self._begun(service)
        breaker = self.get(service)
        self._demand.setdefault(service, _Demand()).note(agent, now)
        if relay:
            self._relays[agent] = None
        if breaker.state is not BreakerState.HALF_OPEN or (breaker.permits_of(agent) and not relay):
            return None
        return self._grant(breaker, agent, now)

    def release_agent(self, agent: str, *, relay: bool = False) -> None:
        """An agent's stream is gone: its permits are its no more, and a result under one
        counts for nothing. A probe it may still run (a stream can break while the process
        lives on, or the agent is cut off) keeps its permit counted until the agent, back on
        a new stream, has said which of its probes still run (:meth:`holder_said`), or the
        permit's hold has passed: the TTL it had to begin its probe in plus the policy's
        timeout, the longest that probe may run. Given on at once, or at the TTL's end, the
        permit would go to an agent asking then, beside that probe (I3): a killed holder
        and a cut-off one look alike here, so a killed one's permit waits its hold too. A
        follower's ``relay`` is another matter: the agents it handed the permits to are
        still connected to it and may use them, so those lapse with their hold."""
        now = self._clock()
        if relay:
            self.relays_gone.pop(agent, None)
            self.relays_gone[agent] = None
            while len(self.relays_gone) > MAX_RELAYS_GONE:
                del self.relays_gone[next(iter(self.relays_gone))]
        for demand in self._demand.values():  # first: what it gives back goes to another
            demand.last_seen.pop(agent, None)
            demand.served.pop(agent, None)
        for breaker in self._breakers.values():
            if not relay and (breaker.permits_of(agent) or breaker.earlier_of(agent)):
                breaker.release_probes(agent)  # counted until their hold ends
                if breaker.state is BreakerState.HALF_OPEN:
                    self._grant_waiting(breaker.name, now)

    def undelivered(self, agent: str, grant: pb.ProbeGrant) -> None:
        """``grant`` could not reach ``agent`` (it has no stream here): it runs nothing, so
        its permit goes back at once, to an agent asking now; the agent asks no more."""
        now = self._clock()
        for demand in self._demand.values():
            demand.last_seen.pop(agent, None)
            demand.served.pop(agent, None)
        breaker = self._breakers.get(grant.service)
        taken = breaker is not None and breaker.settle(agent, grant.number)
        if taken and breaker is not None and breaker.state is BreakerState.HALF_OPEN:
            self._grant_waiting(breaker.name, now)

    def joined(self, agent: str) -> None:
        """A stream of ``agent`` (or of a follower's relay) opened here."""
        self.relays_gone.pop(agent, None)

    def holder_said(self, agent: str) -> None:
        """``agent`` is back on a new stream and its first batch there said which probes
        under permits of its streams before still run (``OutcomeSummary.probes_running``,
        taken by :meth:`record`): the other permits that went with those streams are free."""
        now = self._clock()
        for breaker in self._breakers.values():
            if (
                breaker.gone_of(agent)
                and breaker.holder_said(agent)
                and breaker.state is BreakerState.HALF_OPEN
            ):
                self._grant_waiting(breaker.name, now)

    def tick(self, slice_secs: float | None = None) -> list[Transition]:
        """Time-driven moves (OPEN -> HALF_OPEN) and expiry of unused permits, of the
        breakers whose time has come only (:mod:`.timed_breakers`). ``slice_secs``: stop
        once this much of the clock has passed, leaving the rest due (:meth:`tick_due`) for
        the next call, so that a burst (thousands of OPEN with one opened_at) lets the event
        loop turn; None: all of them."""
        now = self._clock()
        done = []
        self.tick_cut = False
        self._timed.sweep(self._breakers, now)
        for breaker in self._timed.pop_due(self._breakers, now):
            expired = breaker.expire_permits(now)
            move = breaker.tick(now)
            if move is not None:
                self._transitioned(move)
                done.append(move)
            elif expired and breaker.state is BreakerState.HALF_OPEN:
                self._grant_waiting(breaker.name, now)
            self._timed.mark(breaker)
            if slice_secs is not None and self._clock() - now >= slice_secs:
                self.tick_cut = True
                break
        return done

    def tick_due(self) -> bool:
        """Whether a breaker's time has come (one a tick cut short left for the next)."""
        return self._timed.due(self._clock())

    @property
    def ticks_visited(self) -> int:
        """Breakers the ticks looked at so far, in all (what they cost)."""
        return self._timed.visited

    def recover(self, name: str, reason: str) -> Transition | None:
        """A recovery check found the service serving: its OPEN breaker goes HALF_OPEN now
        (see :meth:`CircuitBreaker.recover`), pushed and stored like any transition."""
        breaker = self._breakers.get(name)
        move = breaker.recover(self._clock(), reason) if breaker is not None else None
        if move is not None:
            self._transitioned(move)
        return move

    def widen(self, name: str) -> bool:
        """A recovery check found the service serving while its HALF_OPEN lets one probe
        out (see :meth:`CircuitBreaker.widen`): the rest of ``success_threshold`` go now to
        the agents asking. Not a transition: nothing is pushed or stored (another replica
        that takes over lets one probe out first, as before)."""
        breaker = self._breakers.get(name)
        if breaker is None or not breaker.widen():
            return False
        self._grant_waiting(name, self._clock())
        return True

    def force(self, name: str, state: BreakerState, reason: str = "") -> Transition | None:
        """An operator's command (FORCED_OPEN, FORCED_CLOSED, DISABLED, or CLOSED to reset)."""
        breaker = self.get(name)
        move = breaker.force(self._clock(), state, reason)
        self._timed.mark(breaker)
        if move is not None:
            self._transitioned(move)
        return move

    def took_over(self) -> None:
        """This replica has begun to lead. The permits an earlier leader granted live in
        its memory only, and a probe under one may run until the permit's TTL plus the
        policy's timeout: until that much time has passed no permit is granted here, so
        the fleet never runs more than ``success_threshold`` probes of one HALF_OPEN.

        That holds for every breaker not CLOSED now, whoever decides its next HALF_OPEN:
        an earlier leader may have decided one from memory while cut off from etcd and
        granted while its lease held, and this leader's own HALF_OPEN of the same breaker,
        decided from the OPEN etcd holds, would run probes beside it. Whether a leader led
        before cannot be known here (a restarted replica, or one that finds the leader key
        already expired, sees none), so it is assumed. A breaker first loaded from the
        store after this moment is held from when it is loaded (:meth:`adopt`). A breaker
        CLOSED in the store needs no wait: no leader grants for a breaker before the store
        is known to hold it not CLOSED (:meth:`store_holds`, :mod:`.stored_runs`)."""
        now = self._took_over = self._clock()
        self._held_since = {
            name: now for name, b in self._breakers.items() if b.state is not BreakerState.CLOSED
        }
        self._hold_untold = set(self._held_since)

    def basis(self, name: str) -> int:
        """The stored revision what is held of ``name`` rests on: 0 for a malformed
        record's, taken for a compare-and-swap only (:attr:`unread`)."""
        revision = self.revisions.get(name, 0)
        return 0 if self.unread.get(name) == revision else revision

    def held_since(self, name: str) -> float | None:
        """Since when no permit of ``name`` is granted for an earlier leader's sake, if so."""
        return self._held_since.get(name)

    def stepped_down(self) -> None:
        """This replica no longer leads: the permits it holds were its own grants, which
        its next term waits out (:meth:`took_over`); a follower does not
        tick, so kept here they would never expire."""
        for breaker in self._breakers.values():
            breaker.clear_permits()

    def forgotten_at(self, name: str) -> int:
        """The revision ``name`` was held at when it was forgotten here (0: none kept): a
        watch event at or below it is of a write made before, on its way meanwhile."""
        return self._forgotten.revision(name)

    def resumed(self, name: str, value: bytes, revision: int) -> bool:
        """The writer's compare-and-swap of ``name``, started over here since it was
        forgotten, found ``value`` at ``revision``: when that is the record it was
        forgotten at (its deletion failed, nobody wrote the key since), the state held
        goes on from it — its revision is the next write's basis — and True is returned.
        Otherwise (False) the record is another's change, to be adopted."""
        if name not in self._breakers or self.revisions.get(name, 0):
            return False  # not started over since it was forgotten
        if not self._forgotten.left_behind(name, value, revision):
            return False
        self._forgotten.pop(name)
        self.revisions[name] = revision
        self.records[name] = value
        return True

    def lost_revisions(self) -> None:
        """The store lost its data: the revisions known here (of breakers held, and of
        those forgotten) are of the data lost, not of the store's."""
        self.revisions.clear()
        self._forgotten.clear()

    def forget(self, name: str) -> None:
        """Drop a breaker from memory (an idle one no policy names); a later report
        starts it over CLOSED (see :mod:`.forgotten`)."""
        breaker = self._breakers.pop(name, None)
        self._timed.forget(name)
        self._demand.pop(name, None)
        revision = self.revisions.pop(name, 0)
        told = self._told.pop(name, 0)
        if revision:
            generation = breaker.generation if breaker is not None else -1  # -1: no record's
            self._forgotten.add(name, Forgotten(revision, generation, told))
        self.records.pop(name, None)
        self._adopted.pop(name, None)
        self._held_since.pop(name, None)
        self._hold_untold.discard(name)
        self._runs.forget(name)
        self.lowered.forget(name)

    def policy_changed(self, service: str) -> None:
        """The service's policy changed: its breaker and its endpoints' follow it (a lowered
        timeout still counts for a new leader's wait while a permit granted under the old
        one may be held: :mod:`.lowered_timeouts`)."""
        policy = self._policy_of(service)
        now = self._clock()
        for name, breaker in self._breakers.items():
            if name == service or name.startswith(service + "/"):
                old = breaker.policy.timeout_secs
                breaker.update_policy(policy)
                self._timed.mark(breaker)  # (a shorter wait ends sooner)
                self.lowered.changed(name, old, breaker.policy.timeout_secs, self.probe_ttl, now)

    def next_deadline(self) -> float | None:
        """Monotonic time of the next OPEN -> HALF_OPEN move, if any breaker is OPEN."""
        now = self._clock()
        waits = [b.open_remaining(now) for b in self._breakers.values() if b.state is BreakerState.OPEN]
        return now + min(waits) if waits else None

    # -- internals -------------------------------------------------------------

    def _transitioned(self, move: Transition) -> None:
        breaker = self.get(move.name)
        told = self._told.get(move.name, 0)
        if breaker.generation <= told:
            # A stored state taken back this breaker to an earlier generation (a lost
            # compare-and-swap): a new state never reuses a number agents were told, or the
            # permits of the HALF_OPEN that was superseded would count for this one.
            breaker.generation = told + 1
        self._changed(move.name, move.old, move)  # pushed to agents before anything is logged
        _log.info("breaker %s: %s -> %s (%s)", move.name, move.old.name, move.new.name, move.reason)
        if move.new is BreakerState.HALF_OPEN:
            self._grant_waiting(move.name, self._clock())
        elif move.new is BreakerState.CLOSED:
            self._demand.pop(move.name, None)

    def _begun(self, name: str) -> None:
        """``name`` was just made here (CLOSED) for an agent's report or request: pushed
        at once, so that the agents connected before it existed (their snapshot had none)
        decide on it as those connecting later do, not on their own local breakers. Not
        before this replica's view is complete: the snapshot that completes it tells it."""
        if self.view_complete():
            self._changed(name, None, None)

    def _changed(
        self, name: str, old: BreakerState | None, move: Transition | None, *, stored: bool = False
    ) -> None:
        """Push ``name`` as it is now; ``stored``: read from the store, which so holds its
        run (known before the push: a HALF_OPEN adopted is not pushed as one whose run the
        store may not hold, marked ``no_grants`` — a mark that then stayed through a
        takeover's whole wait)."""
        state = self.get(name).state
        self._runs.moved(name, old, state)
        if stored:
            self._runs.stored(name, self._runs.run(name, state))
        message = self.to_proto(name)
        self._told[name] = max(self._told.get(name, 0), message.generation)
        for listener in list(self.change_listeners):
            try:
                listener(message, old, move)
            except Exception:
                _log.exception("breaker change listener failed")

    def _grant_waiting(self, service: str, now: float) -> None:
        breaker = self.get(service)
        demand = self._demand.get(service)
        if demand is None:
            return
        for agent in demand.recent(now, ASKING_SECS):
            if breaker.permits_of(agent) or (breaker.earlier_of(agent) and agent not in self._relays):
                continue
            if self._grant(breaker, agent, now) is None:
                break

    def grants_unsure(self, name: str) -> bool:
        """Whether no permit of ``name`` is granted now for a cause that lasts as long as
        etcd is away: this replica's lease, or the store's record of the run, is not known
        to hold."""
        if self.lead_check is None:
            return False
        return not self.lead_check() or not self.store_holds(name)

    def grants_blocked(self, name: str) -> bool:
        """Whether no permit of ``name`` would be granted now whatever is free: this
        replica's lease or the store's record of the run is not known to hold, or an earlier
        leader's permits may be in use."""
        return self._blocked(self.get(name), self._clock())

    def takeover_hold(self, name: str, since: float) -> float:
        """How long from ``since`` (a takeover, a breaker adopted) an earlier leader's permit
        of ``name`` may be held: the probe TTL plus the highest policy timeout one may have
        been granted under (a timeout lowered lately counts: :mod:`.lowered_timeouts`)."""
        return self._takeover_hold(self.get(name), since)

    def _takeover_hold(self, breaker: CircuitBreaker, since: float) -> float:
        return self.probe_ttl + self.lowered.highest(breaker.name, breaker.policy.timeout_secs, since)

    def _blocked(self, breaker: CircuitBreaker, now: float) -> bool:
        # The agent may use its permit for probe_ttl; its call may then run for up to the
        # policy timeout the permit was granted under, so it is held that much longer.
        if self.lead_check is not None and not self.lead_check():
            return True  # a deposed leader that does not know it yet grants nothing
        if not self.view_complete():
            # the policies are not read yet: the breaker counts by the defaults, whose
            # success_threshold lets more probes out at once than the fleet's may be
            return True
        if self.lead_check is not None and not self.store_holds(breaker.name):
            return True  # etcd may hold it CLOSED: a successor would not wait for this permit
        held = self._held_since.get(breaker.name)
        if held is not None and now < held + self._takeover_hold(breaker, held):
            return True  # an earlier leader's permits, of a HALF_OPEN etcd never had, may be in use
        since = max(self._took_over, self._adopted.get(breaker.name, float("-inf")))
        # a HALF_OPEN from before: an earlier leader's permits may be in use
        return breaker.changed_at <= since and now < since + self._takeover_hold(breaker, since)

    def _tell_hold(self, breaker: CircuitBreaker, now: float) -> None:
        """Log the hold the first permit of ``breaker`` after a takeover's hold waited out."""
        if breaker.name not in self._hold_untold:
            return
        self._hold_untold.discard(breaker.name)
        since = self._held_since.get(breaker.name)
        if since is None:
            since = max(self._took_over, self._adopted.get(breaker.name, float("-inf")))
        hold = self._takeover_hold(breaker, since)
        _log.info(
            "breaker %s: first probe permit %.1f s after its takeover hold began (hold %.1f s: "
            "probe TTL %.1f + timeout %.1f counted for an earlier leader's permits)",
            breaker.name,
            now - since,
            hold,
            self.probe_ttl,
            hold - self.probe_ttl,
        )

    def restate(self, name: str) -> None:
        """Push ``name`` again as it is (what its message says of this replica changed)."""
        state = self.get(name).state
        self._changed(name, state, None)

    def _grant(self, breaker: CircuitBreaker, agent: str, now: float) -> pb.ProbeGrant | None:
        hold = self.probe_ttl + breaker.policy.timeout_secs
        if self._blocked(breaker, now):
            return None
        grant = pb.ProbeGrant(service=breaker.name, permits=1, generation=breaker.generation)
        several = agent in self._relays  # a relay asks for its agents, each its own
        if breaker.acquire_probe(now, agent, hold, number=self.numbers.made + 1, several=several) == 0:
            return None
        self._timed.mark(breaker)
        self._tell_hold(breaker, now)
        self.numbers.stamp(grant)
        if self.before_grant is not None:  # pushed before the grant is
            self.before_grant(breaker.name)
        demand = self._demand.get(breaker.name)
        if demand is not None:
            demand.served[agent] = now
        grant.ttl.FromNanoseconds(int(self.probe_ttl * 1e9))
        # the end of the very hold kept here, for the agent to end its probe by (on the wall
        # clock: the grant may reach it late, and it may be told another timeout)
        grant.hold_until.FromNanoseconds(int((self._wall() + hold) * 1e9))
        for listener in list(self.grant_listeners):
            try:
                listener(agent, grant)
            except Exception:
                _log.exception("probe grant listener failed")
        return grant
