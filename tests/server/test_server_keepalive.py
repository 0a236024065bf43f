"""The control plane's server pings its peers, and permits the pings agents and relays send."""

from __future__ import annotations

from mission_control.client.connection import KEEPALIVE as AGENT_KEEPALIVE
from mission_control.server.app import server_options
from mission_control.server.relay import KEEPALIVE as RELAY_KEEPALIVE
from mission_control.server.service import Limits


def test_the_server_pings_its_peers_and_ends_a_stalled_connection() -> None:
    options = dict(server_options(Limits()))
    # a peer whose link stalled (no reset, no close) is noticed: pinged, and cut if silent
    assert 0 < options["grpc.keepalive_time_ms"] <= 30_000
    assert 0 < options["grpc.keepalive_timeout_ms"] <= options["grpc.keepalive_time_ms"]
    assert options["grpc.http2.max_pings_without_data"] == 0  # on a quiet stream too


def test_the_server_permits_the_pings_of_agents_and_relays() -> None:
    # a stricter policy answers their pings with GOAWAY too_many_pings and cuts them off
    allowed = dict(server_options(Limits()))["grpc.http2.min_ping_interval_without_data_ms"]
    for peer in (AGENT_KEEPALIVE, RELAY_KEEPALIVE):
        assert dict(peer)["grpc.keepalive_time_ms"] >= allowed
