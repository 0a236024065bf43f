"""The policy books and the hub tell time by the wall clock their control plane is given:
when a value was refused and when a stream opened follow it (the simulation drives them)."""

from __future__ import annotations

import random

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.hub import Hub
from mission_control.server.policies import PolicyBook
from mission_control.server.shadow import shadow_book

from tests.sim_fleet.memstore import MemEtcd, MemStore

EPOCH = 1_700_000_000.0


def test_a_refused_value_is_told_at_the_books_wall_clock() -> None:
    now = [EPOCH]
    book = PolicyBook("/p", wall=lambda: now[0])
    book.apply("/p/policies/svc", b"{bad", 5)
    now[0] += 30
    book.restate("/p/policies/svc", 5, "the defaults")
    assert [e.at for e in book.errors] == [EPOCH + 30]
    candidates = shadow_book("/p", wall=lambda: now[0])
    candidates.apply(candidates.key("svc"), b"{bad", 6)
    assert [e.at for e in candidates.errors] == [EPOCH + 30]


def test_a_stream_opens_at_the_hubs_wall_clock() -> None:
    hub = Hub(wall=lambda: EPOCH)
    assert hub.connect(pb.AgentHello(agent_id="a1")).since == EPOCH
    assert hub.watch(frozenset()).since == EPOCH


def test_a_control_plane_hands_its_wall_clock_to_its_books_and_hub() -> None:
    plane = ControlPlane(MemStore(MemEtcd(random.Random(1))), prefix="/p", wall=lambda: EPOCH + 5)
    plane.policies.refused("/p/policies/svc", "bad", 3)
    plane.shadows.refused(plane.shadows.key("svc"), "bad", 4)
    assert [e.at for e in plane.policies.errors] == [EPOCH + 5, EPOCH + 5]  # one list for both
    assert plane.hub.connect(pb.AgentHello(agent_id="a1")).since == EPOCH + 5
