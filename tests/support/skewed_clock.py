"""Run a module with this process's wall clock SKEW seconds off (a host whose clock is wrong):
time.time and time.time_ns are shifted, the monotonic clocks are not. gRPC's own deadline
arithmetic stays on the true clock: grpc-core compares deadlines with the host's clock, so a
deadline computed from a shifted time.time would expire at once (or far too late).

    python -m tests.support.skewed_clock SKEW MODULE ARGS...
"""

from __future__ import annotations

import runpy
import sys
import time
import types


def shift(skew: float) -> None:
    """Shift time.time by ``skew`` seconds for everything but gRPC."""
    # imported first (two of them are otherwise imported lazily): they keep the true clock
    import grpc
    import grpc._channel
    import grpc._server
    import grpc.aio  # noqa: F401

    true = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("__")})
    for name, module in list(sys.modules.items()):
        if name.startswith("grpc") and getattr(module, "time", None) is time:
            module.time = true  # type: ignore[attr-defined]
    wall, wall_ns = time.time, time.time_ns
    time.time = lambda: wall() + skew
    time.time_ns = lambda: wall_ns() + int(skew * 1e9)


def main() -> None:
    skew, module = float(sys.argv[1]), sys.argv[2]
    if skew:
        shift(skew)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
