"""Each step of a control plane's stop is bounded and a step that does not end is named
(server/shutdown.py); the watchdog ends a process whose stop outlasts its bound."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from mission_control.server.app import RunningControlPlane
from mission_control.server.shutdown import (
    EXIT_STOP_TIMEOUT,
    STEP_SECS,
    STOP_BOUND_SECS,
    StopSteps,
    Watchdog,
    in_daemon_thread,
)

#: A ceiling for a stop whose steps are bounded (every bound, and room to be scheduled).
CEILING = sum(STEP_SECS.values()) + 30.0


async def _never() -> None:
    await asyncio.Event().wait()


async def test_a_stop_goes_on_past_an_etcd_client_that_never_closes(
    control_plane: RunningControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    store = control_plane.plane.store
    closing = store.close
    store.close = _never  # type: ignore[method-assign]
    steps = StopSteps()
    try:
        with caplog.at_level(logging.ERROR, "mission_control.server.shutdown"):
            await asyncio.wait_for(control_plane.stop(grace=0.1, steps=steps), CEILING)
    finally:
        store.close = closing  # type: ignore[method-assign]
        await closing()
    assert steps.unfinished == ["etcd client"]
    assert "etcd client did not end within" in caplog.text
    # the control plane's own steps ended (its loops are gone)
    assert not control_plane.plane._tasks


def test_the_bound_the_readme_states_is_every_step_s() -> None:
    assert STOP_BOUND_SECS == 45.0  # README, High availability: "serve exits within 45 s"


async def test_a_step_that_fails_is_logged_and_the_stop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise OSError("gone")

    steps = StopSteps()
    assert not await steps.run("health", broken())
    assert await steps.run("health", asyncio.sleep(0))
    assert steps.unfinished == [] and "health failed (OSError: gone)" in caplog.text


async def test_a_thread_that_never_returns_does_not_hold_the_stop() -> None:
    stuck = threading.Event()
    steps = StopSteps()
    assert not await steps.run("telemetry", in_daemon_thread(stuck.wait, "stuck"), 0.2)
    assert steps.unfinished == ["telemetry"]
    stuck.set()


def test_the_watchdog_ends_the_process_naming_the_step_that_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exited = threading.Event()
    codes: list[int] = []
    stopped: list[str] = []

    def exit_(code: int) -> None:
        codes.append(code)
        exited.set()

    steps = StopSteps()
    steps.current = "control plane"
    dog = Watchdog(steps, bound=0.1, last=lambda: stopped.append("etcd"), exit=exit_)
    dog.arm()
    assert exited.wait(30)
    dog.now()  # once only
    assert codes == [EXIT_STOP_TIMEOUT] and stopped == ["etcd"]
    assert "stopping took longer than 0.1 s (unfinished: control plane); exiting" in capsys.readouterr().err
