"""Name lookups of the HTTP recovery checks, on a few threads of their own.

aiohttp's default resolver looks names up on the event loop's default executor, a pool of a
few threads the rest of the server shares. A lookup does not end when the check that asked
for it times out: a name server that never answers would hold those threads for as long as
the system resolver waits, and every check of such a target would take one more. Here the
lookups run on :data:`LOOKUP_THREADS` threads of their own; more wait in its queue (aiohttp
shares one lookup per host among the checks asking, so a check that times out does not end
it), and those still queued when the asker closes are dropped unrun.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

from aiohttp.abc import AbstractResolver, ResolveResult

#: Lookups running at once; more wait (within their check's timeout) for a free thread.
LOOKUP_THREADS = 4


class CheckLookups(AbstractResolver):
    """An aiohttp resolver whose lookups run on a bounded pool of their own."""

    def __init__(self, threads: int = LOOKUP_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="recovery-check-lookup")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``. Raises OSError (no such name, no answer)."""
        found = await asyncio.get_running_loop().run_in_executor(
            self._pool, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM
        )
        numeric = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(
                hostname=host,
                host=str(address[0]),
                port=int(address[1]),
                family=kind,
                proto=proto,
                flags=numeric,
            )
            for kind, _, proto, _, address in found
        ]

    async def close(self) -> None:
        """Stop taking lookups; one still running ends on its own thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
