"""The sync spool's journal shared by the caller's threads and the replay thread. Storage
that fails every other call empties and fills the spool again all the time, so the replay
thread marks the last write done (and gives the emptied segment back) while other threads
append: the journal must stay whole, and every write be made exactly once."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from mission_control.client import MissionControl
from mission_control.client.spool import Spooled

from tests.client.test_spool import POLICY, poll

THREADS = 2
WRITES = 60  # per thread
# The breaker opens and closes again and again (no longer waits each time it opens), a new
# write waits at most 0.5 s for the replay to empty the spool, and no rate limit is reached.
FLAPPING_POLICY = dataclasses.replace(
    POLICY, timeout_secs=0.5, wait_duration_multiplier=1.0, rate_limit_requests=1_000_000
)


class FlappingStore:
    """Refuses every other call (nothing reaches it); counts what it applied."""

    def __init__(self) -> None:
        self.flapping = True
        self.calls = 0
        self.applied: Counter[str] = Counter()
        self.lock = threading.Lock()

    def save(self, key: str) -> str:
        with self.lock:
            self.calls += 1
            if self.flapping and self.calls % 2:
                raise ConnectionRefusedError("storage is flapping")
            self.applied[key] += 1
        return f"saved {key}"


def write_from_threads(save: Any) -> tuple[dict[str, Any], list[str]]:
    """Each thread's writes: key -> result or error; and what ``broken`` said meanwhile."""
    results: dict[str, Any] = {}
    broken: list[str] = []

    def writer(thread: int) -> None:
        for i in range(WRITES):
            key = f"t{thread}-{i}"
            try:
                results[key] = save(key)
            except Exception as exc:
                results[key] = exc
            if save.spool.broken:
                broken.append(save.spool.broken)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results, broken


def test_threads_writing_while_the_replay_empties_the_spool_make_every_write_once(tmp_path: Path) -> None:
    mc = MissionControl("spool-threads", config={"storage_backend": FLAPPING_POLICY})
    store = FlappingStore()
    save = mc.guard("storage_backend", spool=tmp_path / "spool")(store.save)
    try:
        results, broken = write_from_threads(save)
        assert broken == []
        errors = {key: repr(r) for key, r in results.items() if isinstance(r, Exception)}
        assert errors == {}
        spooled = [key for key, r in results.items() if isinstance(r, Spooled)]
        assert spooled  # the replay ran while threads wrote
        store.flapping = False
        assert poll(lambda: len(save.spool) == 0, timeout=60), len(save.spool)
        assert poll(lambda: save.spool.replayed == len(spooled), timeout=10)
        assert store.applied == Counter(results.keys())  # every write, made or spooled, once
        assert (save.spool.dropped, save.spool.broken) == (0, None)
        assert poll(lambda: not list((tmp_path / "spool").glob("segment-*.log")), timeout=10)  # given back
    finally:
        save.spool.close()
