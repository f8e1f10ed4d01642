"""The blocking-call guard itself (tests/blocking.py): it must see a blocked loop,
and must not see one that only waits."""

from __future__ import annotations

import asyncio
import time

from tests.blocking import THRESHOLD, Guard


def run_guarded(coro_fn: object) -> list[str]:
    loop = asyncio.new_event_loop()
    guard = Guard(loop)
    guard.start()
    try:
        loop.run_until_complete(coro_fn())  # type: ignore[operator]
    finally:
        guard.stop()
        loop.close()
    return guard.incidents


def test_a_sync_sleep_in_a_coroutine_is_reported_with_its_stack() -> None:
    async def blocks() -> None:
        await asyncio.sleep(0.1)
        time.sleep(THRESHOLD + 0.5)  # noqa: ASYNC251 - the blocking call under test

    [incident] = run_guarded(blocks)
    assert "blocked for over" in incident and "time.sleep(THRESHOLD + 0.5)" in incident


def test_a_loop_that_only_waits_is_not_reported() -> None:
    async def waits() -> None:
        await asyncio.sleep(THRESHOLD + 0.5)

    assert run_guarded(waits) == []
