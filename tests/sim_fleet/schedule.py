"""One seeded schedule: a fleet, a random run of faults and traffic, then every invariant.

``simulate(seed)`` builds the world from the seed alone (one ``random.Random``), runs it on
the virtual-time loop, heals every fault, lets it settle and returns what the checkers
found. Replay one with ``python -m tests.sim_fleet --seed N``.

A seed names a schedule only together with its schedule version: a change that draws new
faults into the schedules bumps ``world.SCHEDULE_VERSION`` and draws them only from that
version on, so a fixed-seed regression test keeps replaying, at the version it was picked
at, the schedule that showed its defect.

``skewed`` (``--skew``) runs a seed's schedule with each process on a wall clock of its own,
up to 10 s either way (``clocks.py``), the responses stamped with their sender's clock as
the real server stamps them, call timeouts short enough that a probe permit's hold is a few
seconds, and a longer calm, calling end: a family of its own beside the versions; ``wild``
(``--skew wild``) the same with clocks that drift fast and step forth and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState
from mission_control.client.errors import StorageFailure
from mission_control.client.policy import FleetLimits, ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from . import checks, epoch_faults, identities, vloop
from .clocks import Clocks
from .fleet_checks import LIMIT, SHARED, WINDOW, Admissions, ProbeWatch
from .memstore import MemEtcd
from .names import BatchName, batch_name
from .net import RELAY_TOKEN
from .trip_counts import TripCounts
from .world import EPOCH, EPOCH_RECORD_SCHEDULES, FIRST_SCHEDULES, SCHEDULE_VERSION, Agent, Replica

_log = logging.getLogger("sim")

SERVICES = ("svc-a", "svc-b", "svc-c")
#: How long faults and traffic run, then how long the healed fleet settles (virtual s).
ACTIVE_SECS = 40.0
SETTLE_SECS = 12.0
#: How much longer the healed fleet keeps calling in the schedules with skewed clocks: a
#: HALF_OPEN whose permits no agent can use (its hold read off by the clocks' distance)
#: shows only to an agent that keeps asking for longer than a probe TTL while settled.
SKEWED_CALM_SECS = 10.0
#: The loop steps a schedule may take per virtual second (typically a tenth of it or less):
#: a schedule past it spins, and fails as such (see vloop.TooManySteps).
STEPS_PER_SEC = 20_000


@dataclass
class Result:
    seed: int
    active_secs: float = ACTIVE_SECS
    version: int = SCHEDULE_VERSION
    #: The processes' wall clocks are apart (``clocks.py``).
    skewed: bool = False
    #: ... and wild: drifting fast, stepped forth and back (``--skew wild``).
    wild: bool = False
    violations: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    #: An I4 violation's worst window, event by event (``python -m tests.sim_fleet --window``).
    timeline: list[str] = field(default_factory=list)
    #: What etcd held at the end (``MemEtcd.fingerprint``).
    store: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def digest(self) -> str:
        """A fingerprint of the run: its events, violations, figures (the loop's step
        count among them) and what etcd held at the end. A schedule replays exactly when
        its digest does, alone, after other schedules in one process, and under any
        ``PYTHONHASHSEED``."""
        text = "\n".join([*self.events, *self.violations, repr(sorted(self.stats.items())), self.store])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def report(self) -> str:
        lines = [f"seed {self.seed}: {len(self.violations)} violation(s), digest {self.digest}"]
        lines += [f"  {v}" for v in self.violations[:20]]
        lines.append(
            f"  replay: .venv/bin/python -m tests.sim_fleet --seed {self.seed}"
            f" --active {self.active_secs:g}{self._version_arg()} -v"
        )
        return "\n".join(lines)

    def _version_arg(self) -> str:
        version = "" if self.version == SCHEDULE_VERSION else f" --schedule-version {self.version}"
        return version + (" --skew wild" if self.wild else " --skew" if self.skewed else "")


#: Call timeouts of the schedules with skewed clocks: a probe permit's hold is its TTL plus
#: the timeout, and a hold that short is where clocks apart by seconds would show.
SKEWED_TIMEOUTS = (2.0, 5.0, 10.0)


def policy(
    service: str, rng: random.Random, success_threshold: int | None = None, *, short_timeout: bool = False
) -> ServicePolicy:
    """A random breaker policy (``success_threshold`` fixed when given: I3 counts by it;
    the call timeout one of :data:`SKEWED_TIMEOUTS` when ``short_timeout``, else 30 s)."""
    threshold = rng.choice((1, 2, 3))
    timeout = rng.choice(SKEWED_TIMEOUTS) if short_timeout else 30.0
    return ServicePolicy(
        service=service,
        failure_threshold=rng.choice((3, 5, 8)),
        success_threshold=success_threshold or threshold,
        wait_duration_secs=rng.choice((1.0, 2.0, 5.0)),
        rate_limit_requests=1_000_000,
        timeout_secs=timeout,
    )


def shared_policy(lease_secs: float) -> ServicePolicy:
    """The fleet-shared limit every agent spends (I4)."""
    return ServicePolicy(
        service=SHARED,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        failure_threshold=10**6,
        fleet=FleetLimits(rate_limit=True, lease_secs=lease_secs),
    )


class World:
    """Everything one schedule runs: etcd, replicas, agents, and what the checkers record."""

    def __init__(
        self,
        seed: int,
        active_secs: float = ACTIVE_SECS,
        version: int = SCHEDULE_VERSION,
        skewed: bool = False,
        wild: bool = False,
    ) -> None:
        if not FIRST_SCHEDULES <= version <= SCHEDULE_VERSION:
            raise ValueError(f"schedule version {version}: not in {FIRST_SCHEDULES}..{SCHEDULE_VERSION}")
        self.seed = seed
        self.active_secs = active_secs
        self.version = version
        skewed = self.skewed = skewed or wild
        self.clocks = Clocks(seed, EPOCH, skewed, active_secs, wild=wild)
        self.rng = random.Random(seed)
        self.etcd = MemEtcd(self.rng)
        self.relay_token = RELAY_TOKEN
        self.replicas: dict[str, Replica] = {}
        self.incarnations: Counter[str] = Counter()
        self.agents: list[Agent] = []
        self.cut_from_etcd: set[str] = set()
        #: Pairs of names (replica or agent) that cannot reach each other.
        self.partitions: set[frozenset[str]] = set()
        self.failing: dict[str, bool] = dict.fromkeys(SERVICES, False)
        self.success_thresholds = {service: self.rng.choice((1, 2, 3)) for service in SERVICES}
        self.lease_secs = self.rng.choice((0.25, 0.5, 1.0))
        self.calling = True
        self.counted: Counter[str] = Counter()
        #: Outcome batches by name (agent, session, sequence): the failures each had.
        self.batches: dict[BatchName, int] = {}
        #: sender -> batch name -> failures, each batch once however often it came
        self.delivered_keys: defaultdict[str, dict[BatchName, int]] = defaultdict(dict)
        #: How often each sender's batch reached a replica (more than once: it was resent).
        self.deliveries: Counter[tuple[str, BatchName]] = Counter()
        self.taken_keys: defaultdict[str, dict[BatchName, int]] = defaultdict(dict)
        self.drained_keys: defaultdict[str, dict[BatchName, int]] = defaultdict(dict)
        #: What relays summed without a batch name.
        self.taken_loose: Counter[str] = Counter()
        self.drained_loose: Counter[str] = Counter()
        #: (replica instance, batch name or None) -> failures its engine counted
        self.counted_by: Counter[tuple[str, BatchName | None]] = Counter()
        #: The batch being counted / being received now (the loop runs one at a time).
        self.counting: BatchName | None = None
        self.receiving: BatchName | None = None
        #: Batches the report gate cut something of.
        self.cut_keys: set[BatchName | None] = set()
        #: Failures the report gate cut (a reported burst beyond the policy's bound).
        self.cut: Counter[str] = Counter()
        self.result = Result(seed, active_secs, version, skewed, wild)
        #: When the store, or a replica's path to it, last stopped being healthy.
        self.store_trouble_at = -1e9
        self.trouble_at: Counter[str] = Counter()
        #: Breaker -> when a replica crashed holding a transition of it decided, not stored.
        self.lapsed_at: dict[str, float] = {}
        self._restarting: set[str] = set()
        self.recorder = checks.Recorder(self)
        self.probes = ProbeWatch(self)
        self.trip_counts = TripCounts(self)
        self.admissions = Admissions(self)

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def log(self, text: str) -> None:
        self.result.events.append(f"{self.now:9.3f} {text}")
        _log.info("%s", text)

    def wall(self, name: str) -> Callable[[], float]:
        """Process ``name``'s wall clock (a reader of epoch seconds; ``clocks.py``)."""
        known = self.clocks.drawn(name)
        clock = self.clocks.of(name)
        if self.skewed and not known:
            self.log(self.clocks.describe(name))
        return clock.reader()

    # -- topology ----------------------------------------------------------------

    def alive_replicas(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.alive]

    def reachable(self, source: str, address: str) -> Replica | None:
        replica = self.replicas.get(address)
        if replica is None or not replica.alive or frozenset((source, address)) in self.partitions:
            return None
        return replica

    def pick_replica(self, agent: str) -> Replica | None:
        choices = [r for r in self.alive_replicas() if frozenset((agent, r.name)) not in self.partitions]
        return self.rng.choice(choices) if choices else None

    def failure_rate(self, service: str) -> float:
        return 0.9 if self.failing[service] else 0.02

    def delivered_request(self, sender: str, request: pb.ConnectRequest) -> None:
        if request.WhichOneof("message") == "outcomes":
            batch = request.outcomes
            if sender.startswith("relay:"):
                name = self.batch_name(f"replica.{sender[6:]}", "relay", batch)
            else:
                name = self.batch_name(sender, sender, batch)
            self.delivered_keys[sender][name] = sum(s.failures for s in batch.summaries)
            self.deliveries[(sender, name)] += 1

    batch_name = staticmethod(batch_name)

    def batch_sent(self, agent: str, batch: pb.OutcomeBatch) -> None:
        self.batches[(agent, agent, agent, batch.sequence)] = sum(s.failures for s in batch.summaries)

    def store_trouble(self, replica: str | None = None) -> None:
        if replica is None:
            self.store_trouble_at = self.now
        else:
            self.trouble_at[replica] = self.now  # type: ignore[assignment]

    # -- lifecycle ---------------------------------------------------------------

    async def start_replica(self, name: str) -> Replica:
        self.incarnations[name] += 1
        replica = Replica(self, name, self.incarnations[name])
        self.replicas[name] = replica
        self.trouble_at[name] = self.now  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(replica.start())
        self.log(f"start {replica.instance}")
        return replica

    def restart(self, name: str) -> None:
        """A supervisor starts the process again on the same address (unless it runs, or
        a start is on its way: two faults may ask in one step)."""
        if self.replicas[name].alive or name in self._restarting:
            return
        self._restarting.add(name)

        async def start() -> None:
            self._restarting.discard(name)
            await self.start_replica(name)

        asyncio.get_running_loop().create_task(start())

    def crash(self, replica: Replica) -> None:
        self.log(f"crash {replica.instance} (leading={replica.plane.leading})")
        for name in replica.plane.writer.pending:
            self.lapsed_at[name] = self.now
        replica.crash()
        for other in self.alive_replicas():
            for link in list(other.links):
                if link.client == f"relay:{replica.instance}":
                    link.break_(drop_all=True)

    def new_agent(self) -> Agent:
        name = f"agent-{len(self.agents)}"
        services = tuple(self.rng.sample(SERVICES, self.rng.randint(1, len(SERVICES))))
        agent = Agent(self, name, services)
        self.agents.append(agent)
        return agent

    def partition(self, a: str, b: str) -> None:
        """Replicas ``a`` and ``b`` cannot reach each other: the streams between them break."""
        pair = frozenset((a, b))
        self.partitions.add(pair)
        for replica in self.alive_replicas():
            for link in list(replica.links):
                client = link.client.split(":", 1)[1].split(".")[0]
                if {replica.name, client} == pair:
                    link.break_()


async def _operator(world: World, rng: random.Random) -> None:
    replicas = world.alive_replicas()
    if not replicas:
        return
    plane = rng.choice(replicas).plane
    service = rng.choice(SERVICES)
    with contextlib.suppress(StorageFailure):
        if rng.random() < 0.3:
            chosen = policy(service, rng, world.success_thresholds[service], short_timeout=world.skewed)
            await plane.put_policy(chosen)
            world.log(f"operator: policy of {service}")
        else:
            state = rng.choice(
                (BreakerState.CLOSED,) * 3 + (BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED)
            )
            await plane.set_breaker_state(service, state, "sim operator")
            world.log(f"operator: {service} -> {state.name}")


def _later(world: World, delay: float, what: str, action) -> None:  # type: ignore[no-untyped-def]
    def run() -> None:
        world.log(f"heal: {what}")
        action()

    asyncio.get_running_loop().call_later(delay, run)


async def _fault(world: World, rng: random.Random) -> None:
    etcd = world.etcd
    kind = rng.choices(
        ["health", "operator", "unavailable", "paused", "wipe", "malformed", "slow", "compact",
         "crash_leader", "crash_any", "cut_etcd", "partition", "agent_link", "agent_dies",
         "agent_cut"],
        weights=[6, 3, 2, 2, 1, 1, 1, 2, 2, 1, 2, 2, 3, 1, 1],
    )[0]  # fmt: skip
    alive = world.alive_replicas()
    if kind == "health":
        service = rng.choice(SERVICES)
        world.failing[service] = not world.failing[service]
        world.log(f"{service} {'fails' if world.failing[service] else 'recovers'}")
    elif kind == "operator":
        asyncio.get_running_loop().create_task(_operator(world, rng))
    elif kind == "unavailable" and not etcd.unavailable:
        world.log("etcd unavailable")
        world.store_trouble()
        etcd.set_unavailable(True)
        _later(
            world,
            rng.uniform(0.5, 6.0),
            "etcd available",
            lambda: (world.store_trouble(), etcd.set_unavailable(False)),
        )
    elif kind == "paused" and not etcd.paused:
        world.log("etcd paused")
        world.store_trouble()
        etcd.set_paused(True)
        _later(
            world,
            rng.uniform(0.5, 5.0),
            "etcd resumed",
            lambda: (world.store_trouble(), etcd.set_paused(False)),
        )
    elif kind == "wipe":
        world.log("etcd wiped")
        world.store_trouble()
        etcd.wipe(new_cluster=rng.random() < 0.7)
    elif kind == "malformed":
        key = f"/mission-control/v1/{rng.choice(('breakers', 'policies'))}/{rng.choice((*SERVICES, 'svc-x'))}"
        world.log(f"garbage under {key}")
        world.recorder.garbage.add(key)
        etcd.put_raw(key, rng.choice((b"{garbage", b"\xff\xfe", b'{"state": 99}', b"[]")))
    elif kind == "slow" and not etcd.slow:
        etcd.slow = rng.choice((0.05, 0.5, 2.5))
        world.log(f"etcd slow ({etcd.slow}s)")
        world.store_trouble()
        _later(
            world,
            rng.uniform(1.0, 6.0),
            "etcd fast",
            lambda: (world.store_trouble(), setattr(etcd, "slow", 0.0)),
        )
    elif kind == "compact":
        etcd.compact(etcd.revision - rng.randint(0, 3))
    elif kind in ("crash_leader", "crash_any") and alive:
        leaders = [r for r in alive if r.plane.leading]
        victim = rng.choice(leaders if kind == "crash_leader" and leaders else alive)
        world.crash(victim)
        name = victim.name
        _later(world, rng.uniform(0.0, 2.5), f"restart {name}", lambda: world.restart(name))
    elif kind == "cut_etcd" and alive:
        victim = rng.choice(alive)
        world.log(f"{victim.name} cut from etcd")
        world.cut_from_etcd.add(victim.name)
        victim.store.cut = True
        world.store_trouble(victim.name)

        def heal() -> None:
            world.cut_from_etcd.discard(victim.name)
            world.store_trouble(victim.name)
            current = world.replicas[victim.name]
            current.store.cut = False

        _later(world, rng.uniform(1.0, 8.0), f"{victim.name} reaches etcd", heal)
    elif kind == "partition" and len(world.replicas) > 1:
        a, b = rng.sample(sorted(world.replicas), 2)
        world.log(f"partition {a} | {b}")
        world.partition(a, b)
        _later(
            world,
            rng.uniform(1.0, 8.0),
            f"partition {a} | {b}",
            lambda: world.partitions.discard(frozenset((a, b))),
        )
    elif kind == "agent_link":
        agents = [a for a in world.agents if a.alive]
        if agents:
            agent = rng.choice(agents)
            world.log(f"{agent.name}: link breaks")
            agent.break_link()
    elif kind == "agent_dies":
        agents = [a for a in world.agents if a.alive]
        if len(agents) > 1:
            agent = rng.choice(agents)
            world.log(f"{agent.name} dies")
            agent.die()
            _later(world, rng.uniform(0.0, 3.0), "a new agent", world.new_agent)
    elif kind == "agent_cut":
        _agent_cut(world, rng)


def _agent_cut(world: World, rng: random.Random) -> None:
    """An agent reaches no replica for a while (it spends its safe share meanwhile)."""
    agents = [a for a in world.agents if a.alive]
    if not agents:
        return
    agent = rng.choice(agents)
    pairs = {frozenset((agent.name, f"cp{n}")) for n in range(3)}
    world.log(f"{agent.name} cut off from every replica")
    world.admissions.cut_off += 1
    world.partitions |= pairs
    agent.break_link()
    _later(
        world,
        rng.uniform(1.0, 10.0),
        f"{agent.name} reaches the replicas",
        lambda: world.partitions.difference_update(pairs),
    )


def heal_all(world: World) -> None:
    etcd = world.etcd
    etcd.set_unavailable(False)
    etcd.set_paused(False)
    etcd.slow = 0.0
    world.cut_from_etcd.clear()
    world.partitions.clear()
    for replica in world.replicas.values():
        replica.store.cut = False
    for service in SERVICES:
        world.failing[service] = False
    world.store_trouble()


async def run_schedule(world: World) -> None:
    rng = world.rng
    for service in SERVICES:
        chosen = policy(service, rng, world.success_thresholds[service], short_timeout=world.skewed)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    world.etcd.put_raw(
        f"/mission-control/v1/policies/{SHARED}", _policy_json(shared_policy(world.lease_secs))
    )
    for index in range(rng.choice((2, 3))):
        await world.start_replica(f"cp{index}")
    for _ in range(rng.randint(2, 4)):
        world.new_agent()
    world.recorder.start()
    if world.version >= EPOCH_RECORD_SCHEDULES:
        epoch_faults.plan(world)
    end = world.now + world.active_secs
    while world.now < end:
        await asyncio.sleep(rng.expovariate(1 / 0.8))
        await _fault(world, rng)
    world.log("healing everything")
    heal_all(world)
    for name, replica in list(world.replicas.items()):
        if not replica.alive:
            await world.start_replica(name)
    await asyncio.sleep(SETTLE_SECS / 2 + (SKEWED_CALM_SECS if world.skewed else 0.0))
    world.calling = False
    await asyncio.sleep(SETTLE_SECS / 2)
    checks.final(world)
    world.recorder.stop()


def _policy_json(p: ServicePolicy) -> bytes:
    from mission_control.client.config import policy_to_json

    return policy_to_json(p).encode()


def simulate(
    seed: int,
    *,
    verbose: bool = False,
    active_secs: float = ACTIVE_SECS,
    version: int = SCHEDULE_VERSION,
    skewed: bool = False,
    wild: bool = False,
) -> Result:
    """Run schedule ``seed`` of schedule ``version`` (faults for ``active_secs`` of virtual
    time; each process on a wall clock of its own when ``skewed``, a wild one when ``wild``)
    and check it."""
    skewed = skewed or wild

    async def main() -> Result:
        world = World(seed, active_secs, version, skewed, wild)
        await run_schedule(world)
        world.result.stats["loop_steps"] = asyncio.get_running_loop().steps  # type: ignore[attr-defined]
        world.result.store = world.etcd.fingerprint()
        return world.result

    budget = round(STEPS_PER_SEC * (active_secs + SETTLE_SECS + (SKEWED_CALM_SECS if skewed else 0.0)))
    with identities.seeded(seed):
        if verbose:
            return vloop.run(main(), max_steps=budget)
        with quiet_logs():
            return vloop.run(main(), max_steps=budget)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The control plane's log off: a schedule logs thousands of lines, and log records
    kept by a test runner would keep the whole simulated fleet alive."""
    loggers = [logging.getLogger(name) for name in ("mission_control", "sim", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
