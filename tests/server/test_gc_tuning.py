"""mission-control serve tunes the collector once started (checked in a fresh interpreter,
since the setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from mission_control.server.gc_tuning import YOUNG_THRESHOLD

_PROBE = """
import gc, json
before = gc.get_threshold()
from mission_control.server.gc_tuning import tune_gc
tune_gc()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_young_objects_are_collected_less_often_and_startup_objects_are_left_out() -> None:
    command = [sys.executable, "-c", _PROBE]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(out.stdout)
    assert found["before"][0] < YOUNG_THRESHOLD == found["after"][0]
    assert found["after"][1:] == found["before"][1:] and found["frozen"] > 1000
