"""What the sync and the async spool agents (:mod:`tests.support.spool_agent`,
:mod:`tests.support.spool_agent_aio`) share: their arguments, commands and output."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from mission_control.client.spool import Spooled


@dataclass(frozen=True, slots=True)
class Arguments:
    spool_dir: str
    upstream: str
    parallel: int


def arguments() -> Arguments:
    """``SPOOL_DIR UPSTREAM [PARALLEL]`` from the command line."""
    spool_dir, upstream = sys.argv[1:3]
    return Arguments(spool_dir, upstream, int(sys.argv[3]) if len(sys.argv) > 3 else 1)


def say(value: Any) -> None:
    print(value if isinstance(value, str) else json.dumps(value), flush=True)


def ready(spool: Any) -> None:
    say({"ready": True, "pending": len(spool)})


def command(line: str) -> tuple[str, int]:
    """A command line as (name, count): ``write N``, ``state``, ``quit``; ("", 0) for a blank one."""
    words = line.split()
    if not words:
        return "", 0
    return words[0], int(words[1]) if len(words) > 1 else 0


def written(result: Any) -> None:
    """One line per write, as soon as it returns."""
    say(f"spooled {result.seq} {result.write_id}" if isinstance(result, Spooled) else f"made {result}")


def state(spool: Any) -> None:
    counts = {"pending": len(spool), "spooled": spool.spooled, "replayed": spool.replayed}
    say({**counts, "dropped": spool.dropped})
