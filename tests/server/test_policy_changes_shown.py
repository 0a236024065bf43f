"""``audit``, ``policies history`` and ``policies diff`` show only the fields that changed,
each value in one form, after a partial ``etcdctl put`` as in the README's walkthrough; their
``--json`` output keeps the values stored, whole."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policy_changes import changed_fields

from tests.server.test_cli import SEED, cli
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

SERVICE = "llm_provider"
#: The walkthrough's hand-written policy: two fields, the rest left out.
PARTIAL = '{"service": "llm_provider", "timeout_secs": 20, "max_retries": 2}'


def _poll(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value


def test_a_partial_put_shows_only_what_changed(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    assert cli("config", "import", str(SEED), server=server).returncode == 0
    key = f"{prefix}/policies/{SERVICE}"
    etcdctl(etcd_server.endpoint, "put", key, PARTIAL)

    def recorded() -> list[dict[str, Any]]:
        result = cli("audit", "--json", "--service", SERVICE, server=server)
        return [r for r in json.loads(result.stdout) if r["action"] == "etcd.put"]

    [record] = _poll(recorded)
    # the seed's llm_provider holds 30 s and 3 retries; the fields left out keep their values
    expected = "max_retries: 3 -> 2; timeout_secs: 30.0 -> 20.0"
    table = cli("audit", "--service", SERVICE, server=server).stdout
    [row] = [line for line in table.splitlines() if "etcd.put" in line]
    assert expected in row, table
    assert "unset" not in table and len(row) < 300, table
    history = cli("policies", "history", SERVICE, server=server).stdout
    assert expected in history and "unset" not in history, history
    diff = cli(
        "policies", "diff", SERVICE, str(record["revision"] - 1), str(record["revision"]), server=server
    )
    assert diff.stdout.splitlines() == expected.split("; "), diff.stdout
    # machine output: the values as stored, every field
    assert json.loads(record["new_value"]) == json.loads(PARTIAL)
    assert json.loads(record["old_value"])["failure_threshold"] == 5
    as_json = cli("policies", "diff", SERVICE, str(record["revision"] - 1), str(record["revision"]), "--json",
                  server=server)  # fmt: skip
    fields = json.loads(as_json.stdout)
    assert fields["timeout_secs"] == {"old": 30.0, "new": 20} and "new" not in fields["quotas"], fields


def test_fields_left_out_that_keep_their_value_are_no_change() -> None:
    full = json.dumps({"service": "s", "timeout_secs": 30.0, "max_retries": 3, "failure_threshold": 5})
    assert changed_fields(full, '{"service": "s", "timeout_secs": 30}', "s") == []
    assert changed_fields(full, '{"service": "s", "timeout_secs": 20}', "s") == [
        ("timeout_secs", "30.0", "20.0")
    ]
    # nested fields are named with dots
    assert changed_fields('{"backoff": {"initial_ms": 100}}', '{"backoff": {"initial_ms": 50}}', "s") == [
        ("backoff.initial_ms", "100", "50")
    ]


def test_a_value_that_is_no_policy_shows_the_fields_it_holds() -> None:
    good = '{"service": "s", "timeout_secs": 10}'
    assert changed_fields(good, '{"service": "s", "timeout_secs": -3}', "s") == [
        ("timeout_secs", "10.0", "-3")
    ]
    # integers written as strings (protobuf JSON's 64-bit form) show as numbers
    refused = '{"service": "s", "bogus": 1, "quotas": [{"limit": "7"}]}'
    assert ("quotas", "[]", '[{"limit": 7}]') in changed_fields(good, refused, "s")
    assert changed_fields("", good, "s")[0][1] == "(no policy)"
