"""The dashboard's JSON: always what a browser's ``JSON.parse`` reads.

Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats, which no page can
parse: one such value anywhere in the picture would leave every page waiting. Here they are
written as ``null`` instead, whatever part of the control plane produced them.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any) -> bytes:
    """``value`` as strict JSON bytes; a non-finite float becomes ``null``."""
    try:
        return json.dumps(value, allow_nan=False).encode()
    except ValueError:  # rare: pay for the walk only when a non-finite number is there
        return json.dumps(finite(value), allow_nan=False).encode()


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
