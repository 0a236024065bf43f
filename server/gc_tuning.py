"""Garbage collection for a process holding thousands of streams.

Every Connect stream keeps Python objects alive for as long as it is open. With CPython's
default thresholds a storm of connecting agents triggers a full collection every few hundred
streams, each walking every live object (at 3,000 agents on a busy 2-core machine one took
0.4 s, stalling every push and lease). Young objects are collected less often here, and the
objects that live as long as the process (modules, descriptors, the server) are left out of
every collection.
"""

from __future__ import annotations

import gc

#: Allocations between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Call once the server has started (what exists then lives as long as the process)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
