"""structlog set-up: JSON lines by default, a console renderer on request.

Records of the standard library's logging (uvicorn's warnings and tracebacks,
asyncio's) are rendered by the same processors, so stderr stays one format.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

import structlog

from worker import jsoncodec

# The fields of the event being handled, added to every line logged while it is
# (one ContextVar: structlog.contextvars keeps one per key and its merge walks the
# whole context on every line).
_bound: ContextVar[dict[str, Any] | None] = ContextVar("worker_log_fields", default=None)


def bind(**fields: Any) -> Token[dict[str, Any] | None]:
    """Add `fields` to the lines logged in this task until `unbind(token)`."""
    outer = _bound.get()
    return _bound.set({**outer, **fields} if outer else fields)


def unbind(token: Token[dict[str, Any] | None]) -> None:
    _bound.reset(token)


def merge_bound(_: Any, __: str, event_dict: MutableMapping[str, Any]
                ) -> MutableMapping[str, Any]:
    """Processor: the bound fields; a field given to the call itself wins."""
    bound = _bound.get()
    if bound:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    return event_dict


class _Stamper:
    """Processor: "timestamp", RFC 3339 UTC with microseconds, e.g.
    "2026-11-29T18:47:17.377877Z". The text up to the second is formatted once a
    second (structlog's TimeStamper formats a datetime per line)."""

    def __init__(self) -> None:
        # One attribute, replaced whole: a line logged from another thread (the
        # standard library's records) never pairs one second with another's text.
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        last = self.last
        if last[0] != second:
            last = self.last = (second, datetime.fromtimestamp(second, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S."))
        event_dict["timestamp"] = f"{last[1]}{micro:06d}Z"
        return event_dict

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(fmt: str = "json", level: str = "info") -> None:
    """Configure structlog once, from the CLI (tests use structlog.testing.capture_logs)."""
    console = fmt == "console"
    # The worker's own lines: JSON bytes by orjson, written to stderr's buffer (one
    # write per line); the standard library's records go through a str renderer.
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if console
        else structlog.processors.JSONRenderer(serializer=jsoncodec.log_serializer)
    )
    text_renderer: structlog.types.Processor = (
        renderer if console else structlog.processors.JSONRenderer())
    timestamper = _Stamper()
    structlog.configure(
        processors=[
            merge_bound,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=(structlog.PrintLoggerFactory(file=sys.stderr) if console
                        else structlog.BytesLoggerFactory(file=sys.stderr.buffer)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           timestamper],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, text_renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))  # libraries' info lines are noise
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
