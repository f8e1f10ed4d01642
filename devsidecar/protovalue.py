"""Job data the way daprd keeps it: a `google.protobuf.Value`, re-serialised by protojson.

A Value has one number type, float64: every JSON number is rounded to it, and
comes back printed the way Go's protojson prints a double (shortest digits that
round-trip; fixed notation from 1e-6 up to 1e21, so 1234567890123456789 comes
back as 1234567890123456800; exponent form outside, `1e+21`, `1e-7`).
Strings, booleans and null pass unchanged.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any


class NotAValue(ValueError):
    """A JSON number a float64 cannot hold (daprd rejects the request)."""


def go_double(number: float) -> str:
    """`number` as protojson prints a double."""
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    if not math.isfinite(number):
        raise NotAValue(f"{number} is not a finite number")
    if abs(number) < 1e-6 or abs(number) >= 1e21:
        mantissa, exponent = repr(number).split("e")  # Python's repr: shortest digits
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        return f"{mantissa}e{sign}{digits}" if sign == "-" else f"{mantissa}e+{digits}"
    text = format(Decimal(repr(number)), "f")
    return text[:-2] if text.endswith(".0") else text


def as_value_json(data: Any) -> bytes:
    """The JSON daprd sends back for job data `data` (parsed JSON)."""
    return _encode(data).encode()


def _encode(data: Any) -> str:
    if data is None or isinstance(data, bool | str):
        return json.dumps(data)
    if isinstance(data, int | float):
        try:
            return go_double(float(data))
        except OverflowError:
            raise NotAValue(f"{data} does not fit a float64") from None
    if isinstance(data, list):
        return "[" + ",".join(_encode(item) for item in data) + "]"
    if isinstance(data, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_encode(v)}"
                              for k, v in data.items()) + "}"
    raise NotAValue(f"{type(data).__name__} is not JSON")
