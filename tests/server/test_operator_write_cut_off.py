"""An operator's write through a FOLLOWER, which the leader (cut off from etcd) never saw,
holds for the follower's agents once etcd goes away for the follower too, with real
processes: a real etcd, two control planes each reaching it through a TCP proxy of its own,
one agent process on the follower (its one address) calling a real upstream.

The breaker is stored (CLOSED, or FORCED_OPEN for the mirror case) and both replicas read
it. The leader's etcd link stops answering; the operator forces the breaker open (resets
it) through the follower, which stores it at a later revision and reads it; the follower's
etcd link stops too, before the leader's lease could lapse. Both replicas rest on the same
etcd history (``server/store_history.py``), so the follower keeps telling its agents the
later revision, its own (``server/leader_states.py``). Before: once the follower found etcd
away (~2.5 s after the cut) its agents were told the leader's older state for the whole
outage — the forced-open service called (9 of 9 runs), the reset one rejected.

The agent's own counts are the clock: the outcome is taken once it has made ``MORE`` calls
since the follower reported etcd away (NOT_SERVING; the flow is
``tests/support/follower_write.py``'s)."""

from __future__ import annotations

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.follower_write import (
    LEADERS_AND_OPERATORS,
    STATE,
    Link,
    etcd_back,
    links,
    start_pair,
    write_and_cut_off,
)
from tests.support.probe_upstream import ProbeUpstream
from tests.support.procs import Proc

__all__ = ["links"]  # (the fixture)


@pytest.mark.timeout(240)
@LEADERS_AND_OPERATORS
def test_an_operators_write_through_the_follower_holds_for_its_agents_once_etcd_is_away_for_both(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    links: tuple[Link, Link],
    leaders: int,
    operators: int,
) -> None:
    with ProbeUpstream(0.05) as upstream:
        pair = start_pair(etcd_server.endpoint, prefix, spawned, links, upstream, leaders)
        outcome = write_and_cut_off(pair, operators)
        shown, told = STATE[operators], outcome.told
        assert outcome.state["state"] == shown and outcome.state["connected"], told
        if operators == pb.BREAKER_STATE_FORCED_OPEN:
            assert outcome.served == 0, told
        else:
            assert outcome.refused == 0, told
        print(told)

        etcd_back(pair, shown)  # etcd back: everyone holds the operator's
