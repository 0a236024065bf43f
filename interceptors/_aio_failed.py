"""An aio unary call that ended in one of our errors: awaiting it raises that error, while
``code()``, ``details()`` and the metadata answer as the call that decided it would (a
refused call, which never reached a server, or one that timed out answers with the error's
own status)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio
from mission_control.client.errors import MissionControlError, OperationTimeout
from mission_control.client.status import to_grpc_status


class FailedCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    _initial: Any
    _trailing: Any

    def __init__(self, error: BaseException) -> None:
        self._error = error
        rpc = error if isinstance(error, grpc.aio.AioRpcError) else error.__cause__
        if isinstance(error, OperationTimeout):  # ours, whichever clock saw it first
            rpc = None
        if isinstance(rpc, grpc.aio.AioRpcError):  # the upstream's answer, as it came
            self._code, self._details = rpc.code(), rpc.details() or ""
            self._initial, self._trailing = rpc.initial_metadata(), rpc.trailing_metadata()
        elif isinstance(error, MissionControlError):  # refused before any call
            status = to_grpc_status(error)
            self._code, self._details = status.code, status.details
            self._initial, self._trailing = grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata)
        else:
            self._code, self._details = grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
            self._initial, self._trailing = grpc.aio.Metadata(), grpc.aio.Metadata()

    def __await__(self) -> Generator[Any, None, Any]:
        raise self._error
        yield  # a generator, as __await__ must be

    def __aiter__(self) -> Any:  # pragma: no cover - a unary call is not iterated
        raise TypeError("a unary call is not iterable")

    async def read(self) -> Any:  # pragma: no cover - as above
        raise TypeError("a unary call is not readable")

    async def initial_metadata(self) -> Any:
        return self._initial

    async def trailing_metadata(self) -> Any:
        return self._trailing

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def details(self) -> str:
        return self._details

    async def wait_for_connection(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, callback: Any) -> None:
        callback(self)
