"""The two ways a protected channel is built — grpc's interceptor machinery, or our channel
whose multi-callables decide each call — so one test runs against both."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from mission_control.client.agent import MissionControl
from mission_control.interceptors import (
    aio_client_interceptors,
    aio_protected_channel,
    client_interceptor,
    protected_channel,
)

PATHS = ("interceptor", "channel")


def sync_channel(path: str, channel: grpc.Channel, mc: MissionControl, **protection: Any) -> grpc.Channel:
    """``channel`` protected by ``mc``, the ``path`` way."""
    if path == "interceptor":
        return grpc.intercept_channel(channel, client_interceptor(mc, **protection))
    assert path == "channel", path
    return protected_channel(channel, mc, **protection)


def aio_channel(path: str, address: str, mc: MissionControl, **protection: Any) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``address`` protected by ``mc``, the ``path`` way."""
    if path == "interceptor":
        return grpc.aio.insecure_channel(address, interceptors=aio_client_interceptors(mc, **protection))
    assert path == "channel", path
    return aio_protected_channel(address, mc, **protection)
