"""A spool's replay as the service recovers: an OPEN ended early (by a recovery check) is
seen within a look, and a HALF_OPEN that has not given this agent a probe permit yet is
not a failure of the service — the writes waiting for the spool to drain keep waiting, and
are made directly once it has drained, instead of joining it.

Real spools on a real journal directory; the write function stands for the guarded call
and raises the breaker's own refusal while the breaker says so."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from mission_control.client.errors import CircuitBreakerOpen
from mission_control.client.spool import Spooled, WriteSpool
from mission_control.client.spool_aio import AsyncWriteSpool
from mission_control.client.spool_replay import LOOK_AGAIN_SECS


class Service:
    """A storage service behind a breaker that is OPEN, then HALF_OPEN refusing the first
    ``refusals`` replays (no probe permit for this agent yet), then serving."""

    def __init__(self, refusals: int) -> None:
        self.open_for = 30.0
        self.refusals = refusals
        self.made: list[str] = []
        self.lock = threading.Lock()

    def opened_for(self) -> float:
        return self.open_for

    def take(self, key: str) -> str:
        with self.lock:
            if self.open_for > 0:
                raise CircuitBreakerOpen("storage_backend", 3, retry_after=self.open_for)
            if self.refusals > 0:
                self.refusals -= 1
                raise CircuitBreakerOpen("storage_backend", 3, retry_after=0.05)
            self.made.append(key)
        return f"saved {key}"


def _options(service: Service) -> dict[str, Any]:
    return {
        "service": "storage_backend",
        "function": "save",
        "open_for": service.opened_for,
        "count": lambda *_: None,
        "drain_wait": lambda: 30.0,  # a waiting write is released by the drain or a failure only
    }


def test_an_open_breaker_is_looked_at_again_soon_however_long_its_wait(tmp_path: Path) -> None:
    service = Service(refusals=0)
    spool = WriteSpool(tmp_path, call=lambda args, kwargs: service.take(*args), **_options(service))
    try:
        assert isinstance(spool.write(("k1",), {}), Spooled)
        with spool._lock:
            step = spool._next_step()
        # a recovery check may end this 30-s OPEN at any moment: the replayer must see it
        assert step.action == "wait" and step.seconds <= LOOK_AGAIN_SECS
    finally:
        spool.close()


def test_a_replay_refused_for_want_of_a_probe_permit_does_not_release_the_waiting_writes(
    tmp_path: Path,
) -> None:
    service = Service(refusals=3)
    spool = WriteSpool(tmp_path, call=lambda args, kwargs: service.take(*args), **_options(service))
    try:
        assert isinstance(spool.write(("k1",), {}), Spooled)  # refused while OPEN: kept
        service.open_for = 0.0  # a check ended the OPEN: HALF_OPEN, no permit here yet
        result = spool.write(("k2",), {})  # waits for the spool to drain, then is made
        assert result == "saved k2", result
        assert service.made == ["k1", "k2"]
        assert service.refusals == 0  # the refusals happened while k2 waited
    finally:
        spool.close()


def test_the_async_spool_treats_a_refused_replay_the_same(tmp_path: Path) -> None:
    service = Service(refusals=3)

    async def take(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return service.take(*args)

    async def scenario() -> Any:
        spool = AsyncWriteSpool(tmp_path, call=take, **_options(service))
        try:
            assert isinstance(await spool.write(("k1",), {}), Spooled)
            service.open_for = 0.0
            return await asyncio.wait_for(spool.write(("k2",), {}), timeout=20)
        finally:
            spool.close()

    assert asyncio.run(scenario()) == "saved k2"
    assert service.made == ["k1", "k2"]
    assert service.refusals == 0
