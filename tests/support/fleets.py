"""Start-ups that several process tests share: two control-plane replicas with a policy put
on the leader, or one control plane with a policy, an upstream and two agent processes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import grpc
from mission_control.client.errors import StorageFailure
from mission_control.client.status import error_from_rpc_error
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, agent, control_plane, python

#: How often a set-up puts a policy before it gives up.
PUT_ATTEMPTS = 3
#: How long a put refused unsent (etcd away) is tried again.
REFUSED_SECS = 60.0


def put_policy(address: str, policy: policy_pb2.ServicePolicy) -> None:
    """Put ``policy`` as an operator would: a write etcd did not confirm in time (UNAVAILABLE:
    StorageFailure; or the control plane's own answer late) is put again, up to PUT_ATTEMPTS
    times. The same unconditional put twice stores the same value, so a first one that etcd
    applied after all does no harm. On a loaded machine an fsync of etcd's log alone can pass
    the write's 8-s bound; the control plane is right to refuse to confirm it."""
    request = pb.PutPolicyRequest(policy=policy)
    refused_until = time.monotonic() + REFUSED_SECS
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        attempt = 1
        while True:
            try:
                stub.PutPolicy(request, timeout=10)
                return
            except grpc.RpcError as err:
                if _not_sent(err) and time.monotonic() < refused_until:
                    time.sleep(0.2)  # etcd away (health NOT_SERVING): wait for it, as an operator would
                    continue
                if attempt == PUT_ATTEMPTS or not _unconfirmed(err):
                    raise
                print(f"put_policy {policy.service}: attempt {attempt} not confirmed: {err.details()}")  # type: ignore[attr-defined]
                attempt += 1


def _not_sent(err: grpc.RpcError) -> bool:
    """Whether ``err`` is a refusal of a write never sent, etcd being away."""
    error = error_from_rpc_error(err)
    return isinstance(error, StorageFailure) and "nothing was sent" in error.details


def _unconfirmed(err: grpc.RpcError) -> bool:
    """Whether ``err`` leaves the write unconfirmed rather than refused (nothing else is retried)."""
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
        return True
    return isinstance(error_from_rpc_error(err), StorageFailure)


def leader_of(etcd: str, prefix: str) -> str | None:
    """The instance id of the replica leading now, if any."""
    text = etcdctl(etcd, "get", f"{prefix}/leader", "--print-value-only").strip()
    return json.loads(text)["instance"] if text else None


def leader_and_follower(
    etcd: str, prefix: str, spawned: list[Proc], policy: policy_pb2.ServicePolicy
) -> tuple[str, str]:
    """Two replicas ("one", "two") on ``etcd``, ``policy`` put on the leader once one leads:
    (leader's address, follower's address)."""
    addresses = {}
    for name in ("one", "two"):
        proc, addresses[name] = control_plane(etcd, prefix, "--instance-id", name)
        spawned.append(proc)
    leader = poll(lambda: leader_of(etcd, prefix)) or ""
    put_policy(addresses[leader], policy)
    return addresses[leader], addresses["two" if leader == "one" else "one"]


@dataclass(frozen=True, slots=True)
class Fleet:
    """A control plane, an upstream (tests.support.upstream, "llm") and two agent processes."""

    address: str
    upstream: str
    agents: tuple[Proc, Proc]

    @property
    def stub(self) -> pb_grpc.ControlPlaneServiceStub:
        return pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(self.address))


def fleet_of_two(
    etcd: str, prefix: str, spawned: list[Proc], policy: policy_pb2.ServicePolicy, names: tuple[str, str]
) -> Fleet:
    """A control plane with ``policy`` put, an upstream, and agents ``names`` of its service,
    each started once it holds the policy (all processes go to ``spawned``)."""
    plane, address = control_plane(etcd, prefix)
    upstream_proc = python("tests.support.upstream", "llm")
    spawned += [plane, upstream_proc]
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    put_policy(address, policy)
    first = agent(names[0], address, upstream, policy.service)
    spawned.append(first)
    second = agent(names[1], address, upstream, policy.service)
    spawned.append(second)
    limit = policy.rate_limit_requests
    for proc in (first, second):
        poll(lambda p=proc: p.ask("policy")["rate_limit_requests"] == limit)  # type: ignore[misc]
    return Fleet(address, upstream, (first, second))
