"""Issue 12 items 2 and 6 (logs): with no sidecar at all, the worker repeats a warning
at growing intervals with a hint; on a terminal the lines are readable, not JSON."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from typing import IO

from tests.harness import free_port


def env(**extra: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("REMINDER_", "DAPR_", "APP_API"))}
    # nothing listens on the sidecar port: no sidecar at all
    return full | {"DAPR_HTTP_PORT": str(free_port()), "REMINDER_PORT": str(free_port()),
                   "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1", **extra}


def read_until(stream: IO[bytes] | int, count: int, needle: bytes,
               deadline: float) -> list[bytes]:
    """Lines of `stream` (a pipe, or a pty's fd) until `count` hold `needle`."""
    found: list[bytes] = []
    buffer = b""
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {found} before the deadline"
        chunk = os.read(stream if isinstance(stream, int) else stream.fileno(), 4096)
        assert chunk, f"stream ended after {found}"
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        found += [line for line in lines if needle in line]
    return found[:count]


def test_no_sidecar_warns_again_and_again_at_growing_intervals() -> None:
    with subprocess.Popen([sys.executable, "-m", "worker"], env=env(),
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL) as proc:
        try:
            assert proc.stderr is not None
            lines = read_until(proc.stderr, 3, b"waiting for the Dapr sidecar",
                               time.monotonic() + 20)
        finally:
            proc.terminate()
            proc.wait(10)
    warnings = [json.loads(line) for line in lines]  # not a terminal: JSON lines
    assert [w["level"] for w in warnings] == ["warning"] * 3
    assert all(w["hint"] == "start daprd beside it, or try --dev" for w in warnings)
    assert all(w["waits_for"] == "GET /v1.0/healthz/outbound" for w in warnings)
    waited = [w["waited_seconds"] for w in warnings]
    assert waited[0] == 0 and 1 <= waited[1] <= 2 and 3 <= waited[2] <= 4  # 1 s, then 2 s


def test_a_terminal_gets_readable_lines_unless_json_is_asked_for() -> None:
    for fmt, readable in ((None, True), ("json", False)):
        extra = {"REMINDER_LOG_FORMAT": fmt} if fmt else {}
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "worker"], env=env(**extra),
                                stderr=follower, stdout=subprocess.DEVNULL)
        os.close(follower)
        try:
            line = read_until(leader, 1, b"waiting for the Dapr sidecar",
                              time.monotonic() + 20)[0]
        finally:
            proc.terminate()
            proc.wait(10)
            os.close(leader)
        assert line.lstrip().startswith(b"{") is not readable, line
        assert b"start daprd beside it, or try --dev" in line
