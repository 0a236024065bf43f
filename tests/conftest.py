from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mission_control.server.app import RunningControlPlane, start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.support.etcd import start_etcd
from tests.support.leftovers import stop_etcds_under
from tests.support.procs import Proc, python

#: ``make soak`` sets it: the larger cases marked ``soak`` run too (``make test`` leaves them out).
SOAK = os.environ.get("MC_SOAK") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the cases marked ``soak`` unless ``MC_SOAK=1``: each repeats a claim that a
    smaller case beside it checks in ``make test``."""
    if SOAK:
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def pytest_unconfigure(config: pytest.Config) -> None:
    """At the end of a run, also one stopped with Ctrl-C, no etcd started under its temporary
    folder keeps running (see tests.support.leftovers). In a parallel run the main process
    does this after its workers ended, however they ended."""
    # The factory's folder only when this run made one: asking for it would make one, and
    # clean up older runs' folders.
    factory = getattr(config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is not None:
        stop_etcds_under(basetemp)


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


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One real etcd for the session; tests keep apart with their own key prefix."""
    proc = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield proc
    proc.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd of this test's own, which it may stop, wipe and start again."""
    proc = start_etcd(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return f"/mc-test/{request.node.name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def control_plane(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[RunningControlPlane]:
    """A control plane in this process (gRPC on a free port), on the session etcd."""
    running = await start_control_plane(EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix)
    yield running
    await running.stop(grace=0.5)
