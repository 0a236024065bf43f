"""Durable degraded mode across a crash: an agent process spools its writes while the
upstream is down, is killed with SIGKILL in the middle of writing, and the next process
on the same spool makes every spooled write exactly once, in order, at a real upstream.
Each case runs with a sync write function (a replay thread) and an ``async def`` one (a
replay task on the agent's event loop)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.procs import Proc, python
from tests.support.upstream import EchoServicer


class Ledger(EchoServicer):
    """An upstream that remembers every write it applied (the Echo text is its id)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.applied: list[str] = []
        self._applied_lock = threading.Lock()

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        answer = self._answer(request, context)  # aborts while told to fail
        with self._applied_lock:
            self.applied.append(request.text)
        return answer


AGENTS = ["tests.support.spool_agent", "tests.support.spool_agent_aio"]


@pytest.fixture
def ledger() -> Iterator[tuple[Ledger, str]]:
    servicer = Ledger("storage")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def poll(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def spool_during_outage(upstream: Ledger, address: str, spool: str, agent: str) -> list[str]:
    """Writes while the upstream is down, until the agent is killed (SIGKILL) in the middle
    of writing; the ids of the writes it was told were spooled."""
    upstream.SetMode(pb.SetModeRequest(mode="fail", code="UNAVAILABLE"), None)
    first = python(agent, spool, address)
    first.wait_for('{"ready"', timeout=60)
    first.send("write 1000000")
    first.wait_for("spooled 25 ", timeout=60)
    first.kill()  # while it keeps writing: perhaps in the middle of an append
    printed = [line.split()[2] for line in first.all_lines() if line.startswith("spooled ")]
    assert not any(line.startswith("made ") for line in first.lines)
    assert len(printed) >= 25 and not upstream.applied
    return printed


def drain(agent: Proc) -> dict[str, int]:
    """Wait until the agent's spool is empty; its counts then."""

    def state() -> dict[str, int]:
        agent.lines.clear()
        agent.send("state")
        return json.loads(agent.wait_for("{", 30))  # type: ignore[no-any-return]

    assert poll(lambda: state()["pending"] == 0), "the spool was not replayed"
    return json.loads(agent.lines[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("agent", AGENTS)
def test_spooled_writes_survive_kill_9_and_are_made_once_in_order(
    tmp_path: Path, ledger: tuple[Ledger, str], agent: str
) -> None:
    upstream, address = ledger
    spool = str(tmp_path / "spool")
    printed = spool_during_outage(upstream, address, spool, agent)
    upstream.SetMode(pb.SetModeRequest(mode="ok"), None)  # the upstream is back
    second = python(agent, spool, address)
    try:
        second.wait_for('{"ready"', timeout=60)
        state = drain(second)
        applied = list(upstream.applied)
        counts = Counter(applied)
        assert max(counts.values()) == 1, counts.most_common(3)  # none made twice
        assert applied[: len(printed)] == printed  # each made, in the order spooled
        # + the write being appended when it was killed, if its record was whole
        assert len(applied) in (len(printed), len(printed) + 1)
        assert state["replayed"] == len(applied)
        assert state["spooled"] == 0 and state["dropped"] == 0
        second.send("quit")
        second.popen.wait(timeout=30)
    finally:
        second.kill()


@pytest.mark.parametrize("agent", AGENTS)
def test_a_kill_9_in_the_middle_of_replaying_makes_at_most_one_write_twice(
    tmp_path: Path, ledger: tuple[Ledger, str], agent: str
) -> None:
    upstream, address = ledger
    spool = str(tmp_path / "spool")
    printed = spool_during_outage(upstream, address, spool, agent)
    upstream.SetMode(pb.SetModeRequest(mode="slow", delay_secs=0.02), None)  # back, slowly
    second = python(agent, spool, address)
    second.wait_for('{"ready"', timeout=60)
    assert poll(lambda: len(upstream.applied) >= 10)
    second.kill()  # in the middle of replaying
    third = python(agent, spool, address)
    try:
        third.wait_for('{"ready"', timeout=60)
        drain(third)
        applied = list(upstream.applied)
        counts = Counter(applied)
        # At least once, in order; the one write whose done mark the kill beat is made
        # again, with the same id (the upstream can drop it).
        assert set(printed) <= set(counts)
        assert sum(counts.values()) - len(counts) <= 1, counts.most_common(3)
        assert list(dict.fromkeys(applied))[: len(printed)] == printed
    finally:
        third.kill()


@pytest.mark.parametrize("agent", AGENTS)
def test_a_kill_9_while_replaying_in_parallel_makes_at_most_the_writes_in_flight_twice(
    tmp_path: Path, ledger: tuple[Ledger, str], agent: str
) -> None:
    upstream, address = ledger
    spool = str(tmp_path / "spool")
    printed = spool_during_outage(upstream, address, spool, agent)
    upstream.SetMode(pb.SetModeRequest(mode="slow", delay_secs=0.02), None)
    second = python(agent, spool, address, "4")
    second.wait_for('{"ready"', timeout=60)
    assert poll(lambda: len(upstream.applied) >= 10)
    second.kill()  # with up to 4 replays in flight
    third = python(agent, spool, address, "4")
    try:
        third.wait_for('{"ready"', timeout=60)
        drain(third)
        counts = Counter(upstream.applied)
        assert set(printed) <= set(counts)  # at least once, order aside
        assert sum(counts.values()) - len(counts) <= 4, counts.most_common(5)
    finally:
        third.kill()
