"""Shared fixtures: anyio on asyncio with a blocking-call guard, structlog reset per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests import blocking


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"loop_factory": blocking.guarded_loop}


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    """Fails a test whose event loop was blocked (tests/blocking.py)."""
    yield
    incidents = [i for guard in blocking.guards for i in guard.incidents]
    for guard in list(blocking.guards):
        guard.incidents.clear()
        if guard.loop.is_closed():
            guard.stop()
            blocking.guards.remove(guard)
    if incidents:
        pytest.fail("\n\n".join(incidents), pytrace=False)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
