"""Which etcd cluster a leader decides for: a follower relays only to a leader attached to
the etcd cluster it is attached to itself.

The leader key names an address; after a backup of another deployment (same prefix) is
restored into this one's etcd, it names that deployment's leader, alive and answering.
Relayed to, it would count this fleet's outcomes toward the other fleet's breakers, and
its snapshot — the same history token, the backup's — would pass for a leader that has
seen this store's loss, so a follower would hand the restore over to it and drop what it
holds. The leader says in each snapshot which cluster its store answers from
(``Snapshot.store_cluster``, etcd's response header); a follower whose own store answers
from another one refuses the link, logs it at ERROR and keeps what it holds (its agents'
outcomes wait, nothing of that leader's is taken) until a leader of its own store takes
over or it leads itself. A cluster not known yet on either side (0) is not told apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

_log = logging.getLogger("mission_control.server.relay")

#: (address, theirs, ours) told at ERROR are kept up to this many.
MAX_TOLD = 64


class ForeignLeader(Exception):
    """The leader named answers from another etcd cluster than this replica's store."""


class LeaderCluster:
    """Checks a leader's snapshot against this replica's own store cluster
    (``own``: its id, 0 while not known)."""

    def __init__(self, own: Callable[[], int]) -> None:
        self._own = own
        self._told: dict[tuple[str, int, int], None] = {}
        #: Links refused so far (for tests and metrics).
        self.refused = 0

    def check(self, address: str, theirs: int) -> None:
        """Raises :class:`ForeignLeader` when the leader at ``address`` answers from
        cluster ``theirs`` and this replica's store from another one."""
        ours = self._own()
        if not theirs or not ours or theirs == ours:
            return
        self.refused += 1
        told = (address, theirs, ours)
        if told in self._told:
            _log.debug("the leader at %s is still attached to etcd cluster %x: not relaying", address, theirs)
        else:
            if len(self._told) >= MAX_TOLD:
                del self._told[next(iter(self._told))]
            self._told[told] = None
            _log.error(
                "the leader named at %s is attached to etcd cluster %x, this replica's store is "
                "cluster %x: not relaying to it nor handing anything over (a backup of another "
                "deployment restored under this prefix?); what is held here is kept until a "
                "leader of this store takes over or this replica leads",
                address,
                theirs,
                ours,
            )
        raise ForeignLeader(f"leader at {address} is attached to etcd cluster {theirs:x}, not {ours:x}")
