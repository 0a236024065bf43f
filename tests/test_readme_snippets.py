"""The README's "Linking an agent" snippets, executed as written against a real control
plane (etcd and ``mission-control serve``) and an echo upstream standing in for the LLM
gateway; only the addresses and the user's own objects (stub, database, bucket) are filled in."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from mission_control.server.etcd_process import EtcdProcess

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.procs import Proc, control_plane
from tests.support.upstream import Upstream

ROOT = Path(__file__).resolve().parents[1]


def snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Linking an agent\n(.*?)^## ", text, re.S | re.M)
    assert section, "README lost its 'Linking an agent' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert len(blocks) >= 2
    return blocks


class _Generator:
    """The reader's generated stub, played by the echo service."""

    def __init__(self, channel: Any) -> None:
        self.Generate = pb_grpc.EchoServiceStub(channel).Echo


class _Http:
    def __init__(self) -> None:
        self.posts = 0

    async def post(self, *args: Any) -> str:
        self.posts += 1
        return "generated"


class _Bucket:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, key: str, data: bytes) -> None:
        self.objects[key] = data


def test_linking_an_agent_snippets_run_as_written(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    database = sqlite3.connect(":memory:")
    database.execute("CREATE TABLE notes (text)")
    with Upstream("llm-gateway") as up:
        names: dict[str, Any] = {
            "GeneratorStub": _Generator,
            "request": pb.EchoRequest(text="hello"),
            "duckdb_conn": database,
            "http_client": _Http(),
            "backup_generate": lambda prompt: "backup",
            "bucket": _Bucket(),
            "key": "notes/1",
            "data": b"note",
        }
        first, second = snippets()[:2]
        first = first.replace("127.0.0.1:50051", address).replace("llm-gateway:443", up.address)
        exec(compile(first, "README.md", "exec"), names)
        mc = names["mc"]
        try:
            assert mc.wait_connected(10)  # the policies in force are the control plane's
            assert names["reply"].text == "hello"
            exec(compile(second, "README.md", "exec"), names)
            names["save"](("a note",))
            assert asyncio.run(names["generate"]("a prompt")) == "generated"
        finally:
            mc.close()
    assert database.execute("SELECT text FROM notes").fetchall() == [("a note",)]
    assert names["bucket"].objects == {"notes/1": b"note"}
    assert names["http_client"].posts == 1


def test_the_runnable_linking_example_runs(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    """The README points to ``docs/examples/link_agent.py`` for the lines that run as is."""
    example = "docs/examples/link_agent.py"
    assert example in (ROOT / "README.md").read_text()
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    result = subprocess.run(
        [sys.executable, example],
        cwd=ROOT,
        env={**os.environ, "MISSION_CONTROL_SERVER": address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connected to the control plane: True" in result.stdout, result.stdout
    assert "upstream answered: SERVING" in result.stdout, result.stdout
