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

from tests.support.etcd import etcdctl, write_history
from tests.support.follower_write import (
    LEADERS_AND_OPERATORS,
    SERVICE,
    STATE,
    Link,
    do,
    etcd_back,
    held,
    links,
    start_pair,
    write_and_cut_off,
)
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import stored
from tests.support.procs import Proc

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
    key = f"{prefix}/store-history"
    with ProbeUpstream(0.05) as upstream:
        pair = start_pair(endpoint, prefix, spawned, links, upstream, pb.BREAKER_STATE_FORCED_OPEN)
        lead_at, follow_at, agent, stored_at = pair.lead_at, pair.follow_at, pair.agent, pair.stored_at
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
@LEADERS_AND_OPERATORS
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
    endpoint = etcd_server.endpoint
    key = f"{prefix}/store-history"
    with ProbeUpstream(0.05) as upstream:
        pair = start_pair(endpoint, prefix, spawned, links, upstream, leaders)

        def edit_token() -> None:
            """The token deleted or garbled by hand, then written back as held: no new token."""
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

        outcome = write_and_cut_off(pair, operators, edit_token)
        shown, told = STATE[operators], outcome.told
        assert outcome.state["state"] == shown and outcome.state["connected"], told
        assert (outcome.served if operators == pb.BREAKER_STATE_FORCED_OPEN else outcome.refused) == 0, told

        etcd_back(pair, shown)
