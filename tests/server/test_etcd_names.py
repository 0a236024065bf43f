"""etcd endpoints by DNS name: the gRPC target built from them, and a client that
re-resolves them when members move (a real etcd; the resolver is injected so that a name
can move between two loopback addresses)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from mission_control.server.etcd_names import ResolvingEtcdClient, etcd_target
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl


def fixed(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


def test_targets() -> None:
    names = fixed({"e1": ["10.0.0.1"], "e2": ["10.0.0.2", "10.0.0.3"], "v6": ["fd00::1"]})
    assert etcd_target(["127.0.0.1:2379", "10.1.1.1:2379"], names) == "ipv4:127.0.0.1:2379,10.1.1.1:2379"
    assert etcd_target(["e1:2379", "e2:2380"], names) == "ipv4:10.0.0.1:2379,10.0.0.2:2380,10.0.0.3:2380"
    assert etcd_target(["e1:2379", "e1:2379"], names) == "ipv4:10.0.0.1:2379"
    assert etcd_target(["v6:2379", "[::1]:2379"], names) == "ipv6:[fd00::1]:2379,[::1]:2379"
    # one member's name gone from DNS: the others still serve
    assert etcd_target(["gone:2379", "e1:2379"], names) == "ipv4:10.0.0.1:2379"
    with pytest.raises(OSError, match=r"etcd gone:2379: no address \(gone: Name or service not known\)"):
        etcd_target(["gone:2379"], names)


def test_tls_verifies_the_name_not_the_address() -> None:
    assert ResolvingEtcdClient(["etcd.example:2379"])._tls_server_name == "etcd.example"
    assert ResolvingEtcdClient(["127.0.0.1:2379"])._tls_server_name is None
    chosen = ResolvingEtcdClient(["e1:2379", "e2:2379"], tls_server_name="etcd")
    assert chosen._tls_server_name == "etcd"


async def test_a_moved_member_is_found_again(etcd_server: EtcdProcess) -> None:
    # 127.0.0.2 is loopback too, but etcd listens on 127.0.0.1 only: the name starts wrong
    table = {"etcd-a": ["127.0.0.2"]}
    client = ResolvingEtcdClient(
        [f"etcd-a:{etcd_server.client_port}"], resolve=fixed(table), reresolve_secs=0.2
    )
    await client.connect()
    key = f"/mc-test/names/{uuid.uuid4().hex}"
    try:
        assert client.watch is not None and client.kv is not None
        # watching while unreachable, from now on (wherever its stream gets established)
        revision = json.loads(etcdctl(etcd_server.endpoint, "get", key, "-w", "json"))["header"]["revision"]
        first = asyncio.ensure_future(_first_event(client, key, revision + 1))
        with pytest.raises(Exception, match="UNAVAILABLE"):
            await client.kv.get(key, timeout=1)
        table["etcd-a"] = ["127.0.0.1"]  # the member "moved"; DNS says so
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                await client.kv.get(key, timeout=1)
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, "never re-resolved"
                await asyncio.sleep(0.1)
        etcdctl(etcd_server.endpoint, "put", key, "moved")
        assert await asyncio.wait_for(first, 30) == b"moved"
    finally:
        await client.close()


async def _first_event(client: ResolvingEtcdClient, key: str, revision: int) -> bytes:
    assert client.watch is not None
    async for response in client.watch.watch(key, start_revision=revision):  # retried while unreachable
        for event in response.events:
            return bytes(event.kv.value)
    raise AssertionError("the watch ended")


async def test_a_name_without_address_yet_is_found_later(etcd_server: EtcdProcess) -> None:
    table: dict[str, list[str]] = {}  # etcd's DNS record does not exist yet
    client = ResolvingEtcdClient(
        [f"etcd-0.etcd:{etcd_server.client_port}"], resolve=fixed(table), reresolve_secs=0.2
    )
    await client.connect()  # not an error: an etcd that cannot be reached yet
    try:
        assert client.unresolved == "no address (etcd-0.etcd: Name or service not known)"
        assert client.kv is not None
        with pytest.raises(Exception, match="UNAVAILABLE"):
            await client.kv.get("/mc-test/names/any", timeout=1)
        table["etcd-0.etcd"] = ["127.0.0.1"]  # the record appears
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                await client.kv.get("/mc-test/names/any", timeout=1)
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, "never resolved again"
                await asyncio.sleep(0.1)
        assert client.unresolved is None
    finally:
        await client.close()
