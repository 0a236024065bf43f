"""The dashboard's JSON is strict: a non-finite number from anywhere becomes null, never the
``NaN`` a page's ``JSON.parse`` refuses."""

from __future__ import annotations

import json
import math

from mission_control.server.web_json import dumps


def test_non_finite_numbers_anywhere_become_null() -> None:
    picture = {"a": math.nan, "b": [1.5, math.inf, {"c": (-math.inf, "x")}], "d": 10**400, "e": True}
    text = dumps(picture).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda name: 1 / 0) == {
        "a": None, "b": [1.5, None, {"c": [None, "x"]}], "d": 10**400, "e": True,
    }  # fmt: skip


def test_a_finite_picture_is_written_as_json_writes_it() -> None:
    picture = {"breakers": [{"name": "db", "open_remaining": 1.25}], "leader": None}
    assert dumps(picture) == json.dumps(picture).encode()
