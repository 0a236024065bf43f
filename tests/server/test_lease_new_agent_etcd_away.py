"""What holds for a new agent while etcd is away, with real processes (README, "A new agent
while etcd is away"): behind a follower restarted during the outage (it has not read etcd,
and it learns who leads from etcd only), an agent goes by its own config after
``start_wait``. One whose config names the fleet limit spends nothing under it until its
first lease, which comes once etcd is back; one whose config does not name it is bounded by
nothing fleet-wide meanwhile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import spawned  # noqa: F401
from tests.support.etcd import start_etcd
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane, python
from tests.support.replicas import fleet_limit, stop_agents, usage

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON, RATE = "newcomer", 0.5, 100, 2.0, 8.0, 30.0
UNITS = LIMIT * PERIOD / WINDOW
CONFIG = f"""
[service_specific.{SERVICE}]
rate_limit_requests = {LIMIT}
rate_limit_window_secs = {WINDOW:g}

[service_specific.{SERVICE}.fleet]
rate_limit = true
lease_secs = {PERIOD:g}
unleased_secs = {HORIZON:g}
"""


def _spender(procs: list[Proc], name: str, address: str, upstream: str, *config: str) -> Proc:
    proc = python("tests.support.upstream_spender", name, address, upstream, SERVICE, str(RATE), *config)
    procs.append(proc)
    ready = proc.wait_for('{"ready"', timeout=60)
    assert '"ready": true' in ready, ready  # connected (to a replica that has not read etcd)
    return proc


@pytest.mark.timeout(240)
def test_a_new_agent_behind_a_replica_started_while_etcd_is_away_goes_by_its_config(
    tmp_path: Path,
    spawned: list[Proc],  # noqa: F811
) -> None:
    etcd_proc = start_etcd(tmp_path)
    try:
        etcd, prefix = etcd_proc.endpoint, "/newcomer"
        up = python("tests.support.upstream", "up")
        spawned.append(up)
        upstream = f"127.0.0.1:{up.port()}"
        r1, a1 = control_plane(etcd, prefix, "--instance-id", "r1")
        spawned.append(r1)
        poll(lambda: leader_of(etcd, prefix) == "r1", timeout=30)
        put_policy(a1, fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON))
        etcd_proc.kill()
        r2, a2 = control_plane(etcd, prefix, "--instance-id", "r2")  # started while etcd is away
        spawned.append(r2)
        config = tmp_path / "agent.toml"
        config.write_text(CONFIG)
        named = _spender(spawned, "named", a2, upstream, str(config))
        unnamed = _spender(spawned, "unnamed", a2, upstream)
        # both went by their configs (past start_wait): the one without the limit spends
        unnamed.wait_for('{"first"', timeout=60)
        away_until = time.time()
        etcd_proc.start()
        # r2 reads etcd, finds the leader and relays the named agent's demand: it is leased
        poll(lambda: (u := usage(a1, SERVICE)) is not None and u.agents >= 1 and u.leased >= UNITS - 1, 60)
        leased = time.monotonic()
        poll(lambda: time.monotonic() >= leased + 4 * PERIOD, timeout=30)
        got = dict(zip(("named", "unnamed"), stop_agents([named, unnamed]), strict=True))
    finally:
        etcd_proc.kill()
    shown = json.dumps({k: [len(v["admitted"]), v["refused"]] for k, v in got.items()})
    away = {k: sum(1 for t in v["admitted"] if t <= away_until) for k, v in got.items()}
    assert away["named"] == 0, f"spent under a fleet limit it was never leased: {away} {shown}"
    assert away["unnamed"] >= 1, f"{away} {shown}"
    assert len(got["named"]["admitted"]) >= 1, f"never leased once etcd was back: {shown}"
