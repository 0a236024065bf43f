"""The ``mission-control`` console command: Ctrl-C is answered from the first moment.

Importing the command (gRPC, protobuf, aiohttp, OpenTelemetry) takes most of a second; a
Ctrl-C then would print a ``KeyboardInterrupt`` traceback from deep inside an import. This
module imports nothing heavy: it answers SIGINT with one line until the rest is imported,
then hands over to :func:`mission_control.server.cli.main`, which handles it from there.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _interrupted_while_importing(signum: int, frame: FrameType | None) -> None:
    # nothing is started yet: nothing to stop, and no Python state worth unwinding
    os.write(2, b"mission-control: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main() -> int:
    """Run ``mission-control`` with the arguments of this process."""
    early = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when ignored
    if early:
        signal.signal(signal.SIGINT, _interrupted_while_importing)
    from .cli import main as run

    if early:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return run()


if __name__ == "__main__":
    sys.exit(main())
