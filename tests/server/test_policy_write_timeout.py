"""A policy write etcd does not answer in time may still be applied: the operator is told the
outcome is unknown, never that nothing was stored (a real etcd paused with SIGSTOP, as a disk
busy with another writer's fsyncs holds it; a control plane in this process)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server import writes
from mission_control.server.app import start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.operator import EXIT_NOT_STORED, CommandError, Operator
from mission_control.server.store import EtcdStore

from tests.support.fleets import put_policy

#: The operator's write bound, shortened so that the test waits one second, not eight.
BOUND_SECS = 1.0


def put_through_the_cli(address: str, policy: policy_pb2.ServicePolicy) -> CommandError | None:
    """What the CLI would tell of a PutPolicy (its error, or None when it was stored)."""
    operator = Operator(address, as_json=False)
    try:
        operator._call(operator.stub.PutPolicy, pb.PutPolicyRequest(policy=policy))
    except CommandError as err:
        return err
    finally:
        operator.close()
    return None


async def test_a_policy_write_etcd_did_not_answer_is_an_unknown_outcome(
    etcd: EtcdProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writes, "OPERATOR_WRITE_SECS", BOUND_SECS)
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    assert etcd.pid is not None
    address = f"127.0.0.1:{running.port}"
    try:
        await asyncio.wait_for(running.plane.sync.loaded.wait(), 30)
        first = policy_pb2.ServicePolicy(service="paused", failure_threshold=4)
        assert await asyncio.to_thread(put_through_the_cli, address, first) is None
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            second = policy_pb2.ServicePolicy(service="paused", failure_threshold=7)
            error = await asyncio.to_thread(put_through_the_cli, address, second)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert error is not None and error.code == EXIT_NOT_STORED
        # the old text: "not stored: the store did not take the write" (etcd may take it yet)
        assert str(error).startswith(f"outcome unknown: etcd: did not answer within {BOUND_SECS:g}s;"), error
    finally:
        await running.stop(grace=0.5)


async def test_a_set_up_puts_a_policy_again_that_etcd_did_not_confirm(
    etcd: EtcdProcess, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tests.support.fleets.put_policy, as an operator would, puts again a write left unconfirmed."""
    monkeypatch.setattr(writes, "OPERATOR_WRITE_SECS", BOUND_SECS)
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    assert etcd.pid is not None
    address = f"127.0.0.1:{running.port}"
    policy = policy_pb2.ServicePolicy(service="paused", failure_threshold=7)
    try:
        await asyncio.wait_for(running.plane.sync.loaded.wait(), 30)
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            put = asyncio.ensure_future(asyncio.to_thread(put_policy, address, policy))
            said = ""
            deadline = asyncio.get_running_loop().time() + 30
            while "attempt 1 not confirmed" not in said:
                assert asyncio.get_running_loop().time() < deadline and not put.done(), said
                said += capsys.readouterr().out
                await asyncio.sleep(0.05)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        await asyncio.wait_for(put, 60)
        found = running.plane.policies.stored("paused")
        assert found is not None and found[0].failure_threshold == 7
    finally:
        await running.stop(grace=0.5)


def force_open_through_the_cli(address: str, name: str) -> CommandError | None:
    operator = Operator(address, as_json=False)
    request = pb.SetBreakerStateRequest(
        name=name, state=pb.BREAKER_STATE_FORCED_OPEN, reason="x", create=True
    )
    try:
        operator._call(operator.stub.SetBreakerState, request)
    except CommandError as err:
        return err
    finally:
        operator.close()
    return None


async def test_an_operator_write_while_health_says_etcd_is_away_is_refused_at_once(
    etcd: EtcdProcess, prefix: str
) -> None:
    """While the control plane's health is NOT_SERVING (etcd did not answer its check), an
    operator write is refused at once, "not stored": nothing was sent, so nothing can be
    applied later (it used to be sent, wait 8 s and end "outcome unknown")."""
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    assert etcd.pid is not None
    address = f"127.0.0.1:{running.port}"
    plane = running.plane
    try:
        await asyncio.wait_for(plane.sync.loaded.wait(), 30)
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while plane.healthy:
                assert asyncio.get_running_loop().time() < deadline, "health never went NOT_SERVING"
                await asyncio.sleep(0.05)
            policy = policy_pb2.ServicePolicy(service="away", failure_threshold=7)
            for error in (
                await asyncio.to_thread(put_through_the_cli, address, policy),
                await asyncio.to_thread(force_open_through_the_cli, address, "away"),
            ):
                assert error is not None and error.code == EXIT_NOT_STORED
                assert str(error).startswith("not stored:") and "nothing was sent" in str(error), error
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        deadline = asyncio.get_running_loop().time() + 60
        while not plane.healthy:
            assert asyncio.get_running_loop().time() < deadline, "health never came back"
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(force_open_through_the_cli, address, "away") is None
        assert plane.policies.stored("away") is None  # the refused put was never applied
    finally:
        await running.stop(grace=0.5)
