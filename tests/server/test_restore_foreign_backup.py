"""A backup of another deployment (same key prefix, its own etcd cluster) restored into this
one's etcd while both fleets run. Real processes: two etcds, one control plane on the
other one's, a leader and a follower on this one's. The backup's leader key names the
other deployment's leader, alive and answering, and its history token is the one that
leader's snapshot names. This fleet's replicas refuse to relay to it (its snapshot says
another etcd cluster), log it, and keep what they hold until one of them leads this store
and writes it back: the force-open made here is in etcd and held by both. Before: they
relayed to the other leader, took its snapshot for a leader that had seen this store's
loss, reloaded, and the force-open was gone for good with nothing logged."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_restore_backup import restore
from tests.support.etcd import etcdctl, start_etcd
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probers import stored
from tests.support.procs import Proc, control_plane, logging_to, tail

SERVICE = "foreign"
FORCED = "held-here"


def policy(timeout: float) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=SERVICE, timeout_secs=timeout, rate_limit_requests=1_000_000, rate_limit_window_secs=1.0
    )


def serve(etcd: str, prefix: str, instance: str, log: Path) -> tuple[Proc, str]:
    args = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd, "--etcd-prefix", prefix]
    proc = Proc(
        logging_to(
            log, [sys.executable, "-m", "mission_control.server.cli", *args, "--instance-id", instance]
        )
    )
    try:
        line = proc.wait_for("mission-control: serving on ", timeout=60)
    except AssertionError:
        proc.kill()
        raise
    return proc, line.split()[3]


def held(address: str, name: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        try:
            return int(stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=10).breaker.state)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            return 0


def force_open(address: str, name: str) -> pb.Breaker:
    request = pb.SetBreakerStateRequest(
        name=name, state=pb.BREAKER_STATE_FORCED_OPEN, reason="INC-9 held here", create=True
    )
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(request, timeout=30).breaker


@pytest.mark.timeout(300)
def test_a_backup_of_another_cluster_restored_here_is_not_led_by_that_clusters_leader(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    other = start_etcd(tmp_path / "other", "other")
    logs = [tmp_path / "here-lead.log", tmp_path / "here-follow.log"]
    try:
        theirs, theirs_at = control_plane(other.endpoint, prefix, "--instance-id", "theirs")
        spawned.append(theirs)
        poll(lambda: leader_of(other.endpoint, prefix) == "theirs", 60)
        put_policy(theirs_at, policy(3.0))

        lead, lead_at = serve(etcd.endpoint, prefix, "here-lead", logs[0])
        spawned.append(lead)
        poll(lambda: leader_of(etcd.endpoint, prefix) == "here-lead", 60)
        follow, follow_at = serve(etcd.endpoint, prefix, "here-follow", logs[1])
        spawned.append(follow)
        put_policy(lead_at, policy(9.0))
        force_open(lead_at, FORCED)
        poll(lambda: held(follow_at, FORCED) == held(lead_at, FORCED) == pb.BREAKER_STATE_FORCED_OPEN, 30)

        token_key = f"{prefix}/store-history"
        poll(lambda: etcdctl(other.endpoint, "get", token_key, "--print-value-only").strip() != "", 30)
        etcdctl(other.endpoint, "snapshot", "save", str(tmp_path / "theirs.db"))
        restore(etcd, tmp_path / "theirs.db")

        def refused() -> bool:
            return any("is attached to etcd cluster" in log.read_text(errors="replace") for log in logs)

        def own_leader_wrote_it_back() -> bool:
            return leader_of(etcd.endpoint, prefix) in ("here-lead", "here-follow") and str(
                stored(etcd.endpoint, prefix, FORCED).get("state", "")
            ).endswith("FORCED_OPEN")

        try:
            poll(own_leader_wrote_it_back, 60)
            poll(lambda: held(follow_at, FORCED) == held(lead_at, FORCED) == pb.BREAKER_STATE_FORCED_OPEN, 30)
            poll(refused, 30)
        except AssertionError:
            print(tail(logs[0], 40), "\n----\n", tail(logs[1], 40))
            raise
        # the other deployment's store is left as it was: nothing of this fleet reached it
        assert not stored(other.endpoint, prefix, FORCED)
    finally:
        other.stop()
