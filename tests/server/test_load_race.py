"""A full load that takes long (a big prefix on a busy machine) while the health check
sees the cluster's revision move on: not a store that lost its data (a real etcd and a
control plane in this process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mission_control.server.app import start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import Entry, EtcdStore


class MeanwhileStore(EtcdStore):
    """Runs ``meanwhile`` once, after a read of ``loading`` and before it returns."""

    loading = ""
    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[Entry], int]:
        read = await super().get_prefix(prefix, revision=revision)
        if prefix != self.loading:
            return read
        hook, self.meanwhile = self.meanwhile, None
        if hook is not None:
            await hook()
        return read


async def test_a_revision_seen_during_a_load_is_not_a_lost_store(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = MeanwhileStore([etcd_server.endpoint])
    running = await start_control_plane(store, "127.0.0.1:0", prefix=prefix)
    sync = running.plane.sync
    try:
        await asyncio.wait_for(sync.loaded.wait(), 30)

        async def elsewhere() -> None:
            await store.put(f"{prefix}-elsewhere/key", b"x")  # the cluster moves on
            await sync.check()  # ... and the health check sees its newer revision

        reloaded = asyncio.Event()
        on_loaded = sync.on_loaded
        sync.on_loaded = lambda: (reloaded.set(), on_loaded())  # type: ignore[func-returns-value]
        store.loading, store.meanwhile = sync.prefix, elsewhere
        sync.reload()
        await asyncio.wait_for(reloaded.wait(), 30)
        assert store.meanwhile is None  # the load did overlap the check
        assert sync.wipes == 0
        assert not running.plane.writer.restore_pending
    finally:
        await running.stop(grace=0.5)
