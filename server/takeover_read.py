"""Whether a new leader's view of the fleet-lease epoch record is as new as its takeover.

A replica follows the store through its watch, and a replica cut off from the store (or
reloading after an outage, its retries backed off) can win a campaign before that watch
has caught up: what it holds of the record may then predate an earlier leader's whole term,
and it would take the fleet for a new one (split the whole limit at once) while agents it
has not heard from spend that term's leases. So a leader takes its view as known only once
the store was read at or after its takeover: the watch reached the leader key's creation
(the key is under the same prefix), or the record was read directly since. Until then the
lease epochs treat the fleet as possibly leased (the warm-up), and the direct read is
started at once and retried on every question, so an outage of the watch costs no more
than one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

_log = logging.getLogger("mission_control.server.lease_epoch")


class TakeoverRead:
    """Answers ``loaded`` for :class:`.lease_epoch.LeaseEpochs`.

    Args:
        leader_epoch: this replica's term (:attr:`.leadership.Leadership.term`; 0 when not
            leading or the only replica).
        created: the store revision that created this replica's leader key.
        loaded: whether the store was read once.
        delivered: the newest revision whose changes, and every earlier one's, were applied.
        read: reads the record now (None: absent). Raises what the store raises.
        apply: takes a value read.
    """

    def __init__(
        self,
        leader_epoch: Callable[[], int],
        created: Callable[[], int],
        loaded: Callable[[], bool],
        delivered: Callable[[], int],
        read: Callable[[], Awaitable[bytes | None]],
        apply: Callable[[bytes | None], None],
    ) -> None:
        self.leader_epoch = leader_epoch
        self.created = created
        self.loaded = loaded
        self.delivered = delivered
        self.read = read
        self.apply = apply
        self.read_in = 0  # the leader epoch in which the record was last read directly
        self._reading: asyncio.Task[None] | None = None

    def __call__(self) -> bool:
        if not self.loaded():
            return False
        own = self.leader_epoch()
        if self.delivered() >= self.created() or self.read_in == own:
            return True
        if self._reading is None:
            # (without a running loop, a synchronous caller: the watch will tell)
            with contextlib.suppress(RuntimeError):
                self._reading = asyncio.get_running_loop().create_task(self._read(own))
        return False

    async def _read(self, own: int) -> None:
        try:
            value = await self.read()
        except Exception as err:  # the store away: again at the next question
            _log.info("fleet-lease epoch record not read since the takeover yet (%s)", err)
            return
        finally:
            self._reading = None
        if self.leader_epoch() == own:  # read after the takeover: nothing earlier is missing
            self.apply(value)
            self.read_in = own
