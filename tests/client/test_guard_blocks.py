"""``with`` / ``async with mc.guard(...)`` blocks that do not nest: generators holding a block
across ``yield``, and an async generator finalised by asyncio in another task."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import OperationTimeout
from mission_control.client.executor import current_deadline

from tests.interceptors.conftest import policy


def _counts(mc: MissionControl, service: str) -> tuple[int, int, int]:
    state = mc.view.get(service)
    return state.tally.successes, state.tally.failures, state.bulkhead.in_flight


def test_interleaved_generators_each_record_their_own_block() -> None:
    mc = MissionControl("a", config={s: policy(s, max_concurrent=1) for s in ("svc_a", "svc_b")})

    def rows(service: str, fail: bool) -> Iterator[str]:
        with mc.guard(service):
            yield service
            if fail:
                raise ConnectionResetError(f"{service} dropped the connection")

    failing, working = rows("svc_a", True), rows("svc_b", False)
    next(failing)
    next(working)
    with pytest.raises(ConnectionResetError):
        next(failing)
    with pytest.raises(StopIteration):
        next(working)
    assert _counts(mc, "svc_a") == (0, 1, 0)
    assert _counts(mc, "svc_b") == (1, 0, 0)
    assert current_deadline() is None  # nothing left behind in this context


async def test_interleaved_async_generators_keep_their_own_timer() -> None:
    mc = MissionControl("a", config={"svc_a": policy("svc_a"), "svc_b": policy("svc_b", timeout_secs=0.3)})

    async def rows(service: str, n: int, pause: float) -> AsyncIterator[str]:
        async with mc.guard(service):
            for i in range(n):
                yield f"{service} {i}"
                await asyncio.sleep(pause)

    long, short = rows("svc_a", 1, 0.0), rows("svc_b", 20, 0.1)  # svc_b would need 2 s
    await long.__anext__()
    await short.__anext__()
    with pytest.raises(StopAsyncIteration):
        await long.__anext__()  # svc_a's block ends first
    with pytest.raises(OperationTimeout):
        async for _row in short:  # svc_b's own 0.3 s still bound it
            pass
    assert _counts(mc, "svc_a") == (1, 0, 0)
    assert _counts(mc, "svc_b") == (0, 1, 0)


async def test_an_abandoned_async_generator_gives_its_place_back() -> None:
    mc = MissionControl("a", config={"svc": policy("svc", max_concurrent=2)})
    errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))

    async def rows() -> AsyncIterator[int]:
        async with mc.guard("svc"):
            for i in range(10):
                yield i
                await asyncio.sleep(0)

    async def first() -> None:
        async for _row in rows():
            break  # left early: asyncio finalises the generator later, in another task

    for _ in range(2):
        await first()
    gc.collect()
    for _ in range(100):
        if mc.view.get("svc").bulkhead.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert _counts(mc, "svc")[2] == 0
    assert errors == []
    async with mc.guard("svc"):
        pass


def test_the_decorator_refuses_generator_functions() -> None:
    mc = MissionControl("a", config={"storage_backend": policy("storage_backend")})

    def rows() -> Iterator[int]:
        yield 1

    async def arows() -> AsyncIterator[int]:
        yield 1

    for function in (rows, arows):
        with pytest.raises(TypeError, match="generator function"):
            mc.guard("storage_backend")(function)
