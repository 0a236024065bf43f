from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import Proc, python


@pytest.fixture(scope="module", params=["sync", "aio"])
def raising_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Address of a separate server process (sync or aio) that raises taxonomy errors."""
    proc = python("tests.support.raising_server", request.param)
    try:
        yield f"127.0.0.1:{proc.port()}"
    finally:
        proc.kill()


@pytest.fixture
def spawned() -> Iterator[list[Proc]]:
    """Processes a test starts; all killed at the end."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.kill()
