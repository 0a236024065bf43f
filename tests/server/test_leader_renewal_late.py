"""A leader renews its lease a third of the TTL after the last renewal was sent, not after its
answer came: a renewal etcd took but whose answer outlasted the store's timeout (2 s on a
starved machine) was followed by the next one the whole TTL (3 s) after it was sent, and the
leader lost a lease it had renewed in time. Real etcd; the leader's clock is injected, moved
by the time the late answer took."""

from __future__ import annotations

import contextlib

from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.leadership import Leadership
from mission_control.server.store import EtcdStore, StoreUnavailable

TIMEOUT = 2.0  # the store's own bound on a call


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class LateAnswers(EtcdStore):
    """Renewals reach etcd, which takes them; their answers come after the timeout."""

    def __init__(self, endpoint: str, clock: Clock) -> None:
        super().__init__([endpoint])
        self.clock = clock
        self.late = False

    async def refresh_lease(self, lease_id: int) -> int:
        left = await super().refresh_lease(lease_id)
        if not self.late:
            return left
        self.clock.now += TIMEOUT
        raise StoreUnavailable(f"etcd lease keep-alive: did not answer within {TIMEOUT:g}s")


async def test_a_renewal_answered_late_is_followed_by_the_next_at_once(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    clock = Clock()
    store = LateAnswers(etcd_server.endpoint, clock)
    await store.connect()
    leadership = Leadership(store, prefix, "r0", "127.0.0.1:1", ttl=3, clock=clock)
    try:
        await leadership._campaign()
        assert leadership.leading
        assert leadership.next_round() == 1.0  # a third of the TTL after the grant was sent
        clock.now += 1.0
        await leadership._hold()  # answered at once
        assert leadership.next_round() == 1.0
        clock.now += 1.0
        store.late = True
        with contextlib.suppress(StoreUnavailable):  # as run() does: leading still
            await leadership._hold()
        assert leadership.leading
        # sent 2 s ago, a third of the TTL is past: the next renewal goes now, while the
        # lease etcd renewed 2 s ago still holds (at the old pace it went 3 s after)
        assert leadership.next_round() == 0.0
        store.late = False
        await leadership._hold()
        assert leadership.leading
    finally:
        await leadership.resign()
        await store.close()
