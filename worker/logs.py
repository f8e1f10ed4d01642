"""structlog set-up: JSON lines by default, a console renderer on request.

Records of the standard library's logging (uvicorn's warnings and tracebacks,
asyncio's) are rendered by the same processors, so stderr stays one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

from worker import jsoncodec

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
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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
