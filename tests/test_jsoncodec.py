"""orjson where it can, the standard library where it refuses: the same results either way."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from worker import jsoncodec


@pytest.mark.parametrize("value", [
    {"task_id": 2**70, "user_id": "u"},  # beyond 64 bits: orjson refuses, json does not
    {"title": "caf\u00e9 \u2603", "n": -(2**63), "f": 0.1},
    [1, "x", None, True, {"a": []}],
])
def test_dumps_gives_what_json_parses_back(value: Any) -> None:
    assert json.loads(jsoncodec.dumps(value)) == value


@pytest.mark.parametrize("raw", [
    b'{"task_id": 123456789012345678901234567890}',
    b'{"x": NaN}',
    b'{"s": "\\ud800"}',  # a lone surrogate
    '{"t": "\u00e9"}'.encode("utf-16"),
    b'{"a": 1, "a": 2}',
    b"[1.5e300, -0.0, 1e-320]",
])
def test_loads_agrees_with_json(raw: bytes) -> None:
    got, want = jsoncodec.loads(raw), json.loads(raw)
    assert repr(got) == repr(want) or (isinstance(got, dict) and math.isnan(got["x"]))


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000])
def test_loads_raises_what_json_raises(raw: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as want:
        json.loads(raw)
    with pytest.raises(type(want.value)):
        jsoncodec.loads(raw)


def test_log_lines_take_any_value() -> None:
    line = jsoncodec.log_serializer({"id": 2**70, "e": ValueError("x")}, default=repr)
    assert json.loads(line) == {"id": 2**70, "e": "ValueError('x')"}


_VALUES: list[Any] = [
    "plain", "caf\u00e9 \u2603 \"q\" \\ \n \x7f \ud800", 0, -(2**63), 2**70, 0.1, -0.0,
    1e300, math.inf, math.nan, True, None, [], {},
    ("job", "user-x", 7, "2030-01-01T07:00:00Z", ["2026-11-26T10:00:00Z", "abc"]),
    ["task.created", "ev-1", {"z": 1, "a": [1, {"y": None, "b": "\u00e9"}], "m": 2.5}],
    [{"when": __import__("datetime").date(2030, 1, 1)}],  # only `default=str` takes it
]


@pytest.mark.parametrize("options", [
    {"ensure_ascii": True, "separators": (",", ":")},  # keys: ids and job names
    {"sort_keys": True, "default": str},  # events: fingerprints
    {"ensure_ascii": False, "separators": (", ", ": ")},
])
def test_stable_encoder_writes_what_json_writes(options: dict[str, Any]) -> None:
    # Digests are made of this text: one changed byte renames every job and record.
    encode = jsoncodec.stable_encoder(**options)
    reference = json.JSONEncoder(**options)
    for value in _VALUES:
        try:
            want = reference.encode(value)
        except TypeError:
            with pytest.raises(TypeError):
                encode(value)
            continue
        assert encode(value) == want, value
