"""An agent behind a stalled link to its control plane (a TCP proxy paused: no RST, no FIN,
bytes held both ways) notices within its keepalive — a ping every 10 s, 5 s for the answer —
and goes on reconnecting, while it keeps reporting outcomes (data on the connection: grpc
then waited its default 60 s for a ping's answer, so the dead stream was kept ~70 s)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from mission_control.client import MissionControl
from mission_control.client.errors import ResourceExhausted
from mission_control.server.app import RunningControlPlane

from tests.support.tcp_pause import PausableProxy

#: The keepalive (10 s ping, 5 s answer) and room for a loaded machine; ~70 s before.
NOTICED_WITHIN = 10.0 + 5.0 + 12.0


@pytest.mark.timeout(120)
async def test_an_agent_notices_a_stalled_link_within_its_keepalive(
    control_plane: RunningControlPlane,
) -> None:
    proxy = await PausableProxy().start()
    proxy.target = f"127.0.0.1:{control_plane.port}"
    mc = MissionControl("stalled", control_plane=proxy.address, flush_interval=0.05).start()
    calling = threading.Event()
    calling.set()

    def call_on() -> None:  # outcomes to report: the stream carries data all along
        guarded = mc.guard("llm_provider")(lambda: None)
        while calling.is_set():
            with contextlib.suppress(ResourceExhausted):  # refused calls are reported too
                guarded()
            time.sleep(0.05)

    caller = threading.Thread(target=call_on, daemon=True)
    try:
        assert await asyncio.to_thread(mc.wait_connected, 60)
        caller.start()
        proxy.pause()
        paused = time.monotonic()
        while mc.connected:
            assert time.monotonic() - paused < NOTICED_WITHIN, "the stalled stream was kept"
            await asyncio.sleep(0.1)
        print(f"noticed after {time.monotonic() - paused:.1f} s")
    finally:
        calling.clear()
        caller.join(10)
        mc.close()
        await proxy.close()
