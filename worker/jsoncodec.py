"""JSON on the hot path: orjson, with the standard library where orjson refuses.

orjson encodes and decodes several times faster (bench/RESULTS.md), but refuses
what the standard library accepts and the worker must keep accepting: NaN and
Infinity, lone surrogates, encodings other than UTF-8 on input, and integers
beyond 64 bits (task ids are any JSON integer), which it even reads as floats
without an error. Those go to `json`, which then gives the same result, or
raises the same error, as before.
Digests (`keys`, event fingerprints) keep their own encoders: their bytes must
never change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # the fallback, built once
# orjson reads integers in [-2**63, 2**64) exactly; 19 digits or more may be outside.
# Found by mapping every digit to "0" (C speed; a regex costs ten times as much).
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def dumps(value: Any) -> bytes:
    """Compact JSON bytes."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, or a type only `json` knows
        return _ENCODER.encode(value).encode()


def loads(data: bytes) -> Any:
    """Parse JSON; raises what `json.loads` raises on input neither accepts."""
    if _LONG_RUN in data.translate(_DIGITS_AS_ZERO):  # maybe an integer orjson makes a float
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def log_serializer(value: Any, default: Callable[[Any], Any] | None = None,
                   **_: Any) -> bytes:
    """structlog's JSONRenderer serializer: one log line as bytes."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        return json.dumps(value, default=default).encode()
