"""A blocking-call guard for async tests: anyio has none, so this is ours.

Each test's event loop gets a heartbeat (a callback every 50 ms) and a watchdog
thread. When the loop is running but the heartbeat is more than THRESHOLD late
on two looks in a row, something blocked the loop (a sync call to the network,
a file, a subprocess, `time.sleep`, a long computation): the watchdog records
the main thread's stack at that moment, and the test fails with it at teardown.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from typing import Final

THRESHOLD: Final = 1.0  # s; generous: a loaded 2-core CI machine must not trip it
BEAT: Final = 0.05
LOOK: Final = 0.1


class Guard:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.last = time.monotonic()
        self.incidents: list[str] = []
        self.main = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="blocking-guard", daemon=True)

    def start(self) -> None:
        self.loop.call_soon(self._beat)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

    def _beat(self) -> None:
        self.last = time.monotonic()
        if not self._stop.is_set():
            self.loop.call_later(BEAT, self._beat)

    def _watch(self) -> None:
        suspect: float | None = None  # the beat seen late on the previous look
        reported: float | None = None
        while not self._stop.wait(LOOK):
            last = self.last
            late = self.loop.is_running() and time.monotonic() - last > THRESHOLD
            if not late:
                suspect = None
                continue
            if suspect == last and reported != last:  # late twice on the same beat
                frame = sys._current_frames().get(self.main)
                stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
                self.incidents.append(
                    f"the event loop was blocked for over {THRESHOLD:g} s at:\n{stack}")
                reported = last
            suspect = last


guards: list[Guard] = []


def guarded_loop() -> asyncio.AbstractEventLoop:
    """anyio's loop_factory: a new loop with its guard (see conftest.anyio_backend)."""
    loop = asyncio.new_event_loop()
    guard = Guard(loop)
    guard.start()
    guards.append(guard)
    return loop
