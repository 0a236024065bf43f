"""An agent process that trips a breaker, takes a HALF_OPEN probe permit, says so, and then
holds it (never probes, never gives it back) until it is killed.

    python -m tests.support.probe_holder CONTROL_PLANE AGENT_ID SERVICE
"""

from __future__ import annotations

import asyncio
import json
import sys

from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.support.agents import RawAgent


async def main(address: str, agent_id: str, service: str) -> None:
    async with RawAgent(address, agent_id, (service,)) as agent:
        await agent.report(service, failures=1, trailing_failures=1)
        await agent.wait_for(lambda: agent.state(service) == pb.BREAKER_STATE_HALF_OPEN, timeout=30)
        while not agent.grants:
            await agent.ask_probe(service)
            await asyncio.sleep(0.1)
        print(json.dumps({"granted": agent.grants[0].generation}), flush=True)
        await asyncio.Event().wait()  # held until killed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
