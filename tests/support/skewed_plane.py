"""``mission-control serve`` whose wall clock reads SKEW seconds off (a replica whose clock is
wrong, or was stepped): time.time and time.time_ns are shifted before the server starts.

    python -m tests.support.skewed_plane SKEW serve ARGS...
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    skew = float(sys.argv[1])
    wall, wall_ns = time.time, time.time_ns
    time.time = lambda: wall() + skew
    time.time_ns = lambda: wall_ns() + int(skew * 1e9)
    from mission_control.server.cli import main as serve

    return serve(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
