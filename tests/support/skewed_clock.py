"""Run a module with this process's wall clock SKEW seconds off (a host whose clock is wrong):
time.time and time.time_ns are shifted, the monotonic clocks are not. gRPC's own deadline
arithmetic stays on the true clock: grpc-core compares deadlines with the host's clock, so a
deadline computed from a shifted time.time would expire at once (or far too late).

    python -m tests.support.skewed_clock SKEW MODULE ARGS...

SKEW ``@path``: the skew is read from that file, and read again every 10 ms, so a test can
step the clock during the run (an NTP step) by writing a new number to it.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time
import types
from collections.abc import Callable


def from_file(path: str) -> Callable[[], float]:
    """The skew written in ``path``, followed as the file changes (read every 10 ms)."""
    skew = [0.0]
    sleep = time.sleep

    def read() -> None:
        try:
            with open(path) as f:
                skew[0] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass  # written half-way: the next read has it

    def follow() -> None:
        while True:
            sleep(0.01)
            read()

    read()
    threading.Thread(target=follow, daemon=True).start()
    return lambda: skew[0]


def shift(skew: float | Callable[[], float]) -> None:
    """Shift time.time by ``skew`` seconds (or by what ``skew()`` says at each reading) for
    everything but gRPC."""
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
    off = skew if callable(skew) else (lambda: skew)
    time.time = lambda: wall() + off()
    time.time_ns = lambda: wall_ns() + int(off() * 1e9)


def main() -> None:
    given, module = sys.argv[1], sys.argv[2]
    if given.startswith("@"):
        shift(from_file(given[1:]))
    elif float(given):
        shift(float(given))
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
