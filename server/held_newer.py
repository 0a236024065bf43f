"""Agents that hold a breaker at a newer generation than the store: said loudly.

etcd restored from a backup while no replica ran (every one stopped or killed over the
restore) gives the replicas that start afterwards the backup's breaker states and nothing
to compare them with: a FORCED_OPEN an operator reset after the backup is forced open
again, a fleet OPEN decided after it is gone. The agents still running hold what they were
last told, with its generation, and say it in their hello
(``AgentHello.held_generations``). A replica reads the store's record of each breaker an
agent named a while after the hello (a decision just taken may not be stored yet) and,
when the record's generation is lower than the agent's, logs it at ERROR and records it
in the audit (action :data:`AGENT_NEWER`): the store's state came back from an older
backup, and nothing else says so. Each (breaker, generation) is said once per replica.
What is in force is not changed: the store's state is taken, as after any restore.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping

from .audit import CONTROL_PLANE, AuditLog, Author, Change
from .loop_tasks import wait_event
from .store import Store, StoreUnavailable
from .writes import stored_generation

_log = logging.getLogger("mission_control.server.held_newer")

#: The audit action of a breaker an agent holds newer than the store.
AGENT_NEWER = "restore.agent_newer"
AUTHOR = Author(
    CONTROL_PLANE, "an agent holds a newer generation than etcd: etcd restored from an older backup?"
)
#: How long after a hello its generations are compared with the store.
SETTLE_SECS = 10.0
#: Bounds on the claims waiting and on the (breaker, generation) pairs said.
MAX_WAITING = 4096
MAX_TOLD = 4096


class HeldNewer:
    """Compares what agents hold with the store's breaker records.

    Args:
        store: the store.
        breaker_key: a breaker's key.
        audit: where the finding is recorded.
        loaded: whether this replica has read the store since it started.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        store: Store,
        breaker_key: Callable[[str], str],
        audit: AuditLog,
        loaded: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.breaker_key = breaker_key
        self.audit = audit
        self.loaded = loaded
        self.clock = clock
        #: breaker -> (highest generation claimed, by whom, when due)
        self._waiting: dict[str, tuple[int, str, float]] = {}
        self._told: dict[tuple[str, int], None] = {}
        self._wake = asyncio.Event()
        #: Findings said so far.
        self.found = 0

    def claimed(self, agent: str, generations: Mapping[str, int]) -> None:
        """``agent`` said in its hello it holds these breakers at these generations."""
        due = self.clock() + SETTLE_SECS
        for name, generation in generations.items():
            if not generation or (name, generation) in self._told:
                continue
            held = self._waiting.get(name)
            if held is not None and held[0] >= generation:
                continue
            if held is None and len(self._waiting) >= MAX_WAITING:
                continue  # (bounded; claims come again with every hello)
            self._waiting[name] = (generation, agent, held[2] if held is not None else due)
        self._wake.set()

    async def run(self) -> None:
        while True:
            now = self.clock()
            due = [name for name, (_, _, at) in self._waiting.items() if at <= now]
            if due and self.loaded():
                try:
                    for name in due:
                        await self._compare(name, *self._waiting[name][:2])
                        del self._waiting[name]
                except StoreUnavailable as err:
                    _log.debug("agents' generations not compared yet (%s)", err)
            nearest = min((at for _, _, at in self._waiting.values()), default=None)
            wait = None if nearest is None else max(0.5, nearest - self.clock())
            await wait_event(self._wake, wait)
            self._wake.clear()

    async def _compare(self, name: str, generation: int, agent: str) -> None:
        entry = await self.store.get(self.breaker_key(name))
        stored = stored_generation(entry.value if entry is not None else None) or 0
        if generation <= stored or (name, generation) in self._told:
            return
        if len(self._told) >= MAX_TOLD:
            del self._told[next(iter(self._told))]
        self._told[(name, generation)] = None
        self.found += 1
        _log.error(
            "breaker %s: agent %s holds generation %d, etcd's record generation %d: etcd was "
            "restored from an older backup (while no replica ran?); the backup's state is in "
            "force, set it again if the fleet had moved on",
            name,
            agent,
            generation,
            stored,
        )
        held = json.dumps({"name": name, "generation": str(generation), "agent": agent}).encode()
        change = Change("breaker", name, held, entry.value if entry is not None else None)
        bucket = self.audit.bucket("breaker")
        writes = [
            w for w in self.audit.record_writes([change], AUTHOR, AGENT_NEWER) if w.key.startswith(bucket)
        ]
        await self.store.commit(writes, [])
