"""Connect's responses serialised once per message, not once per stream.

A push to every agent is one ``ConnectResponse`` object queued to every stream (see
``Hub.broadcast``); grpc serialises what a stream yields, so the same object was serialised
as many times as there are agents. The streams woken by one push write in turn, one after
another on the event loop, so remembering the last message serialised is enough for a push
to be serialised once: ~1.5 µs saved per stream for a breaker change, the whole ~40-55 µs
for a snapshot of 50 breakers (README, case 11b). A message is never changed once it is
queued to a stream: the hub and its callers build a new one for every push.

Each stream's copy then gets this process's wall clock at the time it is written
(``ConnectResponse.sent_at``, appended as its own field to the bytes shared): the receiver
measures this clock's offset from its own with it (``client/clock_offset.py``). Stamped when
grpc takes the message, not when it was queued: a message waiting in a stream's queue
counts as delayed, which only makes the receiver's sample larger, never too small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc


class SerializeOnce:
    """A response serializer that reuses the bytes of the message it serialised last when
    given that very object again (identity, not equality: the object is held, so its id is
    not reused while it is remembered)."""

    __slots__ = ("_data", "_last", "_stamp", "_stamp_ms", "_wall")

    def __init__(self, wall: Callable[[], float] | None = time.time) -> None:
        self._last: pb.ConnectResponse | None = None
        self._data = b""
        #: The wall clock stamped as ``sent_at`` (None: not stamped).
        self._wall = wall
        #: The stamp last made (bytes) and its millisecond: the streams a push wakes write
        #: within a millisecond or so, and share it (~5 µs saved per stream).
        self._stamp = b""
        self._stamp_ms = -1

    def __call__(self, message: pb.ConnectResponse) -> bytes:
        if message is not self._last:
            if message.HasField("sent_at"):  # its own stamp, below, must not merge into one
                copy = pb.ConnectResponse()
                copy.CopyFrom(message)
                copy.ClearField("sent_at")
                self._data = copy.SerializeToString()
            else:
                self._data = message.SerializeToString()
            self._last = message
        if self._wall is None:
            return self._data
        # rounded up: a stamp a little late only makes the receiver's sample smaller, which
        # reads a hold as ending earlier than it does (never later)
        ms = math.ceil(self._wall() * 1000)
        if ms != self._stamp_ms:
            stamp = pb.ConnectResponse()
            stamp.sent_at.FromMilliseconds(ms)
            self._stamp, self._stamp_ms = stamp.SerializeToString(), ms
        return self._data + self._stamp


class _Captured:
    """Stands in for a server to take the generated handlers before they are added."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass  # the same handlers come again, by name, to add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_servicer(servicer: pb_grpc.ControlPlaneServiceServicer, server: Any) -> None:
    """Add the servicer to ``server`` as ``add_ControlPlaneServiceServicer_to_server`` does,
    with Connect's responses serialised by a :class:`SerializeOnce`."""
    captured = _Captured()
    pb_grpc.add_ControlPlaneServiceServicer_to_server(servicer, captured)
    connect = captured.handlers["Connect"]  # KeyError: generated code of another shape
    captured.handlers["Connect"] = grpc.stream_stream_rpc_method_handler(
        connect.stream_stream,
        request_deserializer=connect.request_deserializer,
        response_serializer=SerializeOnce(),
    )
    generic = grpc.method_handlers_generic_handler(captured.service, captured.handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(captured.service, captured.handlers)
