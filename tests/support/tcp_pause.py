"""A TCP proxy a test can pause (bytes held in both directions, as on a stalled link, or only
the answers: requests go through, nothing comes back) and cut (every connection reset, what
it held never delivered)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class PausableProxy:
    """Forwards connections to ``target`` (set once known); runs on the test's event loop."""

    def __init__(self) -> None:
        self.target: str | None = None
        self.address = ""
        self._flowing = asyncio.Event()
        self._flowing.set()
        #: Bytes from the target back to the client (answers, acknowledgements).
        self._answering = asyncio.Event()
        self._answering.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        #: New connections are reset at once (those open go on): a link that broke now
        #: cannot be made again.
        self.refusing = False

    async def start(self) -> PausableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def hold_answers(self) -> None:
        """Hold what the target sends back; what the client sends still goes through."""
        self._answering.clear()

    def release_answers(self) -> None:
        self._answering.set()

    def cut(self) -> None:
        """Reset every connection now; bytes held by a pause are dropped."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.target is None or self.refusing:
            writer.transport.abort()
            return
        host, port = self.target.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, pair)),
            asyncio.ensure_future(self._pipe(up_reader, writer, pair, self._answering)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for each in pair:
                each.transport.abort()
            self._writers -= pair

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: set[asyncio.StreamWriter],
        gate: asyncio.Event | None = None,
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if gate is not None:
                    await gate.wait()
                if not pair <= self._writers:
                    return  # cut while this was held: never delivered
                writer.write(data)
                await writer.drain()


@contextlib.contextmanager
def proxy_in_thread() -> Iterator[tuple[PausableProxy, asyncio.AbstractEventLoop]]:
    """A started proxy whose event loop runs in a thread of its own (for tests that block),
    with that loop: ``asyncio.run_coroutine_threadsafe(..., loop)`` reaches it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = asyncio.run_coroutine_threadsafe(PausableProxy().start(), loop).result(10)
    try:
        yield started, loop
    finally:
        asyncio.run_coroutine_threadsafe(started.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
