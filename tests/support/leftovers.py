"""etcd processes a test run left running: found by their data directory under the run's
temporary folder, and stopped.

A test's etcd runs in a session of its own (a Ctrl-C at the terminal must not stop it under
a test that is stopping it itself), so when a worker process of a parallel run is killed
before its fixtures stop their etcd — pytest-xdist kills a worker that does not end within
10 s of a Ctrl-C — nothing else would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path


def etcds_under(folder: Path) -> set[int]:
    """The etcd processes whose command line names a path under ``folder``."""
    found = set()
    needle = str(folder).rstrip("/").encode() + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if Path(argv[0].decode(errors="replace")).name == "etcd" and any(needle in arg for arg in argv):
            found.add(int(entry.name))
    return found


def stop_etcds_under(folder: Path, wait: float = 10.0) -> set[int]:
    """Stop (SIGTERM, then SIGKILL after ``wait`` s) every etcd running under ``folder``;
    returns their pids."""
    found = etcds_under(folder)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found & etcds_under(folder):
            print(f"stopping etcd {pid}, left running under {folder}", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while found & etcds_under(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
    return found
