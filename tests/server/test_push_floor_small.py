"""The push-floor case in small (``make bench`` runs it at 1,000 to 10,000 streams): a bare
grpc.aio server and the control plane's push path (its hub, Connect's send loop and
serializer, its interceptor), 40 streams of each variant held open by another process.
Every push reaches every stream of its variant. Nothing timed."""

from __future__ import annotations

from bench import push_floor


def test_every_push_reaches_every_stream_of_each_variant() -> None:
    rows = push_floor.run((40,), rounds=1)
    assert [row["variant"] for row in rows] == list(push_floor.KINDS)
    for row in rows:
        assert row["connected"] == 40 and row["pushes"] == 1, row
        assert row["unfinished"] == 0 and row["missing"] == 0 and row["errors"] == 0, row
        assert row["cpu_ms"] > 0 and row["issue_cpu_ms"] > 0, row
