"""The simulated etcd compacts as etcd does: each key's value at the compacted revision
stays readable at every later one. Before, a read above the compaction found no key last
written below it, so a replica looking back past a malformed record for a good one found
none (seed 21 at ``--active 80``, on the schedules of its time)."""

from __future__ import annotations

import random

import pytest
from mission_control.server.store import WatchCompacted, Write

from . import vloop
from .memstore import MemEtcd


def test_what_a_key_held_at_the_compaction_is_read_at_every_later_revision() -> None:
    async def main() -> None:
        etcd = MemEtcd(random.Random(0))
        etcd.put_raw("/k/kept", b"good")  # revision 2
        etcd.put_raw("/k/gone", b"x")  # 3
        etcd.txn([Write("/k/gone", None)], [])  # 4: deleted
        etcd.put_raw("/k/kept", b"newer")  # 5
        etcd.put_raw("/k/other", b"o")  # 6
        etcd.compact(6)
        etcd.put_raw("/k/other", b"o2")  # 7
        etcd.put_raw("/k/kept", b"{garbage")  # 8
        before = etcd.read("/k/kept", 7)  # what a look past the garbage finds
        assert before is not None and (before.value, before.mod_revision) == (b"newer", 5)
        assert etcd.read("/k/gone", 7) is None
        assert etcd.read("/k/other", 6 + 1).value == b"o2"  # type: ignore[union-attr]
        with pytest.raises(WatchCompacted):
            etcd.read("/k/kept", 4)
        etcd.compact(7)  # again, over what the first one kept
        etcd.put_raw("/k/last", b"l")  # 9
        assert etcd.read("/k/other", 8).value == b"o2"  # type: ignore[union-attr]
        assert etcd.read("/k/kept", 8).value == b"{garbage"  # type: ignore[union-attr]

    vloop.run(main())
