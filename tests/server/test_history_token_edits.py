"""The etcd history token (``server/store_history.py``) against what it must tell apart, with
real processes: a real etcd, two control planes each reaching it through a TCP proxy of its
own, one agent process on the follower calling a real upstream.

- etcd wiped and started again with the same cluster id, written past every revision the
  replicas saw before they reconnect: their watch reconnects by itself and no key is older
  than one held. The leader finds the token it holds absent at its load: a loss, so it
  writes back what it holds and stores a new token; the follower sees the token replaced:
  a loss too. Before: nothing was restored, the follower kept its breaker at a revision of
  the lost history for good (5 of 5 runs) while etcd held no breaker.
- the token deleted (``etcdctl del``) or garbled by hand while the leader hears nothing from
  etcd: the follower writes back the token it holds (no loss, no new token), so an
  operator's write through it still holds for its agents once etcd is away for both.
  Before: it stored a new token, and the leader's older state was told again."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store_history import parse

from tests.server.test_operator_write_cut_off import (
    MORE,
    POLICY,
    REFUSED,
    SERVICE,
    STATE,
    Link,
    do,
    held,
    links,
    serving,
    set_state,
)
from tests.support.etcd import etcdctl, write_history
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane

__all__ = ["links"]  # (the fixture)


def token(endpoint: str, key: str) -> tuple[str, int]:
    """The token etcd holds ("" if none, or malformed) and its key's mod revision (0: absent)."""
    kvs = json.loads(etcdctl(endpoint, "get", key, "-w", "json")).get("kvs", [])
    if not kvs:
        return "", 0
    return parse(base64.b64decode(kvs[0]["value"])), int(kvs[0]["mod_revision"])


@pytest.mark.timeout(300)
def test_a_wipe_no_replica_noticed_is_told_by_the_token_and_what_they_hold_is_restored(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link]
) -> None:
    lead_link, follow_link = links
    endpoint = etcd.endpoint
    lead_link[0].target = follow_link[0].target = endpoint
    key = f"{prefix}/store-history"
    with ProbeUpstream(0.05) as upstream:
        leader, lead_at = control_plane(lead_link[0].address, prefix, "--instance-id", "lead")
        spawned.append(leader)
        poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
        follower, follow_at = control_plane(follow_link[0].address, prefix, "--instance-id", "follow")
        spawned.append(follower)
        put_policy(lead_at, POLICY)
        stored_at = set_state(lead_at, pb.BREAKER_STATE_FORCED_OPEN).revision
        poll(lambda: held(follow_at).revision == stored_at and held(lead_at).revision == stored_at, 30)
        (agent,) = start_probers(spawned, ["agent"], follow_at, upstream.address, SERVICE, 1)
        poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
        before, _ = token(endpoint, key)
        assert before
        revision = int(json.loads(etcdctl(endpoint, "get", key, "-w", "json"))["header"]["revision"])

        do(lead_link, "pause")
        do(follow_link, "pause")
        etcd.stop()
        shutil.rmtree(etcd.data_dir)
        etcd.start()  # the same cluster id
        write_history(endpoint, "/elsewhere/x", revision + 50)  # past every revision seen
        do(lead_link, "cut", "resume")
        poll(lambda: token(endpoint, key)[0] not in ("", before), 60)  # the leader took it as a loss
        do(follow_link, "cut", "resume")

        def restored() -> bool:
            breaker = stored(endpoint, prefix, SERVICE).get("state", "")
            policy = etcdctl(endpoint, "get", f"{prefix}/policies/{SERVICE}", "--print-value-only")
            return breaker.endswith("FORCED_OPEN") and bool(policy.strip())

        poll(restored, 60)
        revision = stored_at
        poll(lambda: held(follow_at).revision == held(lead_at).revision != revision, 60)
        assert held(follow_at).state == pb.BREAKER_STATE_FORCED_OPEN
        assert agent.ask("state")["state"] == "FORCED_OPEN"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("leaders", "operators"),
    [
        (pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_FORCED_OPEN),
        (pb.BREAKER_STATE_FORCED_OPEN, pb.BREAKER_STATE_CLOSED),
    ],
    ids=["force-open", "reset"],
)
@pytest.mark.parametrize("edit", ["del", "garbage"])
def test_a_token_deleted_or_garbled_by_hand_is_written_back_and_the_operators_write_holds(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    links: tuple[Link, Link],
    leaders: int,
    operators: int,
    edit: str,
) -> None:
    lead_link, follow_link = links
    endpoint = etcd_server.endpoint
    lead_link[0].target = follow_link[0].target = endpoint
    key = f"{prefix}/store-history"
    with ProbeUpstream(0.05) as upstream:
        leader, lead_at = control_plane(lead_link[0].address, prefix, "--instance-id", "lead")
        spawned.append(leader)
        poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
        follower, follow_at = control_plane(follow_link[0].address, prefix, "--instance-id", "follow")
        spawned.append(follower)
        put_policy(lead_at, POLICY)
        stored_at = set_state(lead_at, leaders).revision  # both replicas read it
        poll(lambda: held(follow_at).revision == stored_at and held(lead_at).revision == stored_at, 30)
        (agent,) = start_probers(spawned, ["agent"], follow_at, upstream.address, SERVICE, 1)
        poll(lambda: agent.ask("state")["state"] == STATE[leaders], 30)

        do(lead_link, "hold_answers")  # the leader stops hearing etcd
        written = set_state(follow_at, operators)  # the operator, through the follower
        old, _ = token(endpoint, key)
        assert old
        before_edit = int(json.loads(etcdctl(endpoint, "get", key, "-w", "json"))["header"]["revision"])
        if edit == "del":
            etcdctl(endpoint, "del", key)
        else:
            etcdctl(endpoint, "put", key, "not json")

        def written_back() -> bool:  # as held, after the edit: no new token
            now, at = token(endpoint, key)
            assert now in ("", old), f"a new token {now} was stored"
            return now == old and at > before_edit

        poll(written_back, 30)

        do(follow_link, "pause")
        do(lead_link, "pause")
        assert held(follow_at).revision == written.revision > stored_at
        poll(lambda: not serving(follow_at), 60)  # the follower found etcd away
        before = agent.ask("outcomes")["outcomes"]
        served_before = sum(1 for c in upstream.calls() if c.agent == "agent")

        def calls_since() -> tuple[int, int]:
            now = agent.ask("outcomes")["outcomes"]
            served = sum(1 for c in upstream.calls() if c.agent == "agent") - served_before
            return served, now.get(REFUSED, 0) - before.get(REFUSED, 0)

        try:
            poll(lambda: sum(calls_since()) >= MORE, 120)
        finally:
            counts, state = calls_since(), agent.ask("state")
        told = (
            f"served {counts[0]}, refused {counts[1]} since etcd was away for both; the agent holds {state}"
        )
        shown = STATE[operators]
        assert state["state"] == shown and state["connected"], told
        assert counts[0 if operators == pb.BREAKER_STATE_FORCED_OPEN else 1] == 0, told

        do(follow_link, "resume")
        do(lead_link, "resume", "release_answers")
        poll(
            lambda: stored(endpoint, prefix, SERVICE).get("state", "BREAKER_STATE_CLOSED").endswith(shown), 60
        )
        poll(lambda: agent.ask("state")["state"] == shown, 60)
