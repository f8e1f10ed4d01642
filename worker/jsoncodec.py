"""JSON on the hot path: orjson, with the standard library where orjson refuses.

orjson encodes and decodes several times faster (bench/RESULTS.md), but refuses
what the standard library accepts and the worker must keep accepting: NaN and
Infinity, lone surrogates, encodings other than UTF-8 on input, and integers
beyond 64 bits (task ids are any JSON integer), which it even reads as floats
without an error. Those go to `json`, which then gives the same result, or
raises the same error, as before.
Digests (`keys`, event fingerprints) keep the standard library's encoding
(`stable_encoder`): their bytes must never change.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from json.encoder import encode_basestring, encode_basestring_ascii
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


def stable_encoder(*, ensure_ascii: bool = True, separators: tuple[str, str] = (", ", ": "),
                   sort_keys: bool = False,
                   default: Callable[[Any], Any] | None = None) -> Callable[[Any], str]:
    """`json.JSONEncoder(...).encode`, byte for byte, for values without cycles.

    The standard encoder builds its C encoder again on every call (over half the
    cost for a short list); this one is built once. No circular check: the values
    come from parsed JSON and our own tuples, which cannot hold a cycle.
    """
    reference = json.JSONEncoder(ensure_ascii=ensure_ascii, separators=separators,
                                 sort_keys=sort_keys, default=default)
    # Not in typeshed: the C accelerator JSONEncoder.iterencode itself uses.
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return reference.encode
    item_sep, key_sep = separators
    escape = encode_basestring_ascii if ensure_ascii else encode_basestring
    iterencode = c_make_encoder(None, reference.default, escape, None, key_sep, item_sep,
                                sort_keys, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):  # the C encoder takes containers and scalars alike,
            return escape(value)    # but JSONEncoder.encode special-cases str: same text
        return "".join(iterencode(value, 0))

    return encode
