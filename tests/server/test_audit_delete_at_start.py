"""A hand delete made while a control plane starts is recorded once, against real etcd and
a real control-plane process: made after the start's load read the keys and before the
changes made while none watched were looked for, both the watch (which delivers every
change after the load) and that look see it. The look leaves what changed after the load
to the watch (it delivers the deletion with its revision; the look knows none, and both
recorded it twice: the hand edits of another key just before the delete kept the watch
busy while the look found the key gone)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, Write

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "deleted_at_start"
#: Deleted while no control plane ran: recorded by the start's look after SERVICE's key.
GONE = "zz_deleted_before"
#: Put by hand once the control plane serves: its record follows the delete's in the watch.
LATER = "put_after"
#: Edited by hand that many times as the control plane starts, before the delete.
BUSY, BURST = "edited_at_start", 40
#: Policies the start's load applies besides: enough that it takes a while.
FILLERS = 1_000


def _outside(server: str, service: str) -> list[Any]:
    """The records of changes from outside of ``service``."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=service)
        return [r for r in stub.ListAuditRecords(request, timeout=30).records if r.identity == "etcd"]


def _put_policy(server: str, service: str) -> None:
    with grpc.insecure_channel(server) as channel:
        policy = policy_pb2.ServicePolicy(service=service, timeout_secs=7)
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=30)


def _fill(endpoint: str, prefix: str, count: int) -> None:
    """``count`` policies, each written with its mark as a control plane writes them: the
    start's load takes a while to apply them (the window a delete is made in), the look for
    changes made while none watched finds each as recorded."""

    async def put_all() -> None:
        store = await EtcdStore([endpoint]).connect()
        try:
            for start in range(0, count, 50):
                writes = []
                for n in range(start, start + 50):
                    name = f"filler_{n:05d}"
                    value = json.dumps({"service": name, "timeout_secs": 5}).encode()
                    writes.append(Write(f"{prefix}/policies/{name}", value))
                    writes.append(Write(f"{prefix}/audited/policies/{name}", f"{prefix}-audit/none".encode()))
                await store.commit(writes)
        finally:
            await store.close()

    asyncio.run(put_all())


def _delete_at_first_write(
    endpoint: str, prefix: str, key: str
) -> tuple[subprocess.Popen[str], threading.Thread]:
    """The moment a control plane first writes (its leader key, as its load applies what it
    read): ``BURST`` hand edits of one other key, which its watch delivers before the
    delete, then ``key`` deleted by hand."""
    watch = subprocess.Popen(
        [shutil.which("etcdctl") or "etcdctl", f"--endpoints={endpoint}", "watch", f"{prefix}/leader"],
        stdout=subprocess.PIPE, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    async def edit() -> None:
        store = await EtcdStore([endpoint]).connect()
        try:
            for n in range(BURST):
                await store.put(
                    f"{prefix}/policies/{BUSY}", json.dumps({"service": BUSY, "timeout_secs": n + 1}).encode()
                )
            await store.commit([Write(key, None)])
        finally:
            await store.close()

    def delete() -> None:
        assert watch.stdout is not None
        watch.stdout.readline()
        asyncio.run(edit())

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    return watch, thread


def test_a_hand_delete_made_while_a_control_plane_starts_is_recorded_once(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    first, server = control_plane(endpoint, prefix)
    spawned.append(first)
    _put_policy(server, SERVICE)
    _put_policy(server, GONE)
    first.kill(signal.SIGTERM)
    first.popen.wait(timeout=30)
    etcdctl(endpoint, "del", f"{prefix}/policies/{GONE}")
    _fill(endpoint, prefix, FILLERS)
    watch, deleting = _delete_at_first_write(endpoint, prefix, key)
    try:
        again, server = control_plane(endpoint, prefix)
        spawned.append(again)
        deleting.join(timeout=60)
    finally:
        watch.kill()
        watch.wait()
    assert not deleting.is_alive()
    etcdctl(endpoint, "put", f"{prefix}/policies/{LATER}", json.dumps({"service": LATER, "timeout_secs": 3}))
    # Both ways a start finds changes are through: the look at the marks reached the
    # deletion made while none ran (after SERVICE's mark), the watch the put after serving.
    poll(lambda: _outside(server, GONE) and _outside(server, LATER), timeout=60)
    deletes = _outside(server, SERVICE)
    assert [r.action for r in deletes] == ["etcd.delete"], deletes
