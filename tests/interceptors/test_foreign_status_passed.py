"""An upstream's plain gRPC error let through a servicer behind ``server_interceptor()``
leaves with its code, message and rich status details (google.rpc.ErrorInfo)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from mission_control.interceptors import server_interceptor

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


class _NoSuchDoc(pb_grpc.EchoServiceServicer):
    def Echo(self, request, context):  # type: ignore[no-untyped-def]
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason="NO_SUCH_DOC", domain="docs.example.com"))
        status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no doc 42", details=[info])
        context.abort_with_status(rpc_status.to_status(status))


class _Middle(pb_grpc.EchoServiceServicer):
    def __init__(self, upstream: pb_grpc.EchoServiceStub) -> None:
        self.upstream = upstream

    def Echo(self, request, context):  # type: ignore[no-untyped-def]
        return self.upstream.Echo(request)  # lets the upstream's error through


def _serve(servicer: pb_grpc.EchoServiceServicer, interceptors: list[object]) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=interceptors)  # type: ignore[arg-type]
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def middle() -> Iterator[str]:
    upstream, up_address = _serve(_NoSuchDoc(), [])
    server, address = _serve(
        _Middle(pb_grpc.EchoServiceStub(grpc.insecure_channel(up_address))), [server_interceptor()]
    )
    yield address
    server.stop(0)
    upstream.stop(0)


def test_an_upstreams_rich_status_is_passed_on(middle: str) -> None:
    with grpc.insecure_channel(middle) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
    error = caught.value
    assert error.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert error.details() == "no doc 42"  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("NO_SUCH_DOC", "docs.example.com")
