"""W3C trace context through the worker: the delivery's or trigger's `traceparent`.

daprd traces every call it makes to the app and every call the app makes to it
(a `traceparent` header in, a span per call out). The worker has no tracer of its
own; it passes the `traceparent` it was called with on to every sidecar call made
while handling that call, so daprd's spans for state, jobs, publish and invoke join
the same trace, and puts it on the `reminder.due` it publishes (the CloudEvent
`traceparent` extension), so a notification can be followed back to its trigger.

The app sets `current` per request (a ContextVar: each request is its own task,
and child tasks copy it); the sidecar client reads it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Final

# version 00: 2 hex version, 32 hex trace id (not all zero), 16 hex parent id, 2 hex flags
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}"
                                 r"-[0-9a-f]{2}")

current: ContextVar[str | None] = ContextVar("traceparent", default=None)


def valid(value: str | None) -> str | None:
    """`value` when it is a well-formed traceparent, else None (never forward junk)."""
    if value is None:
        return None
    value = value.strip().lower()
    return value if _TRACEPARENT.fullmatch(value) and not value.startswith("ff") else None
