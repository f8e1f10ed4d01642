"""Port limits, for real: `python -m worker` as a subprocess beside a development sidecar
in this process, attacked over raw sockets on 127.0.0.1 (bounded in count and time).
Oversized heads are refused without memory growth, slow and idle connections are
closed, each port caps its connections while the other keeps answering probes, idle
connections on the ops port give way to probes and close within seconds, the
open-file limit is raised, accept errors never flood the log, and uvicorn's own log
records are JSON like every other line."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from tests.harness import free_port
from worker.server.serving import MAX_HEAD_BYTES, MAX_HEADERS, OPS_IDLE_SECONDS, REQUEST_TIMEOUT

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


@dataclass
class Worker:
    proc: Process
    app_port: int
    ops_port: int
    log: Path
    client: httpx.AsyncClient

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def ready_line(self) -> dict[str, Any]:
        return next(json.loads(line) for line in self.lines() if '"worker ready"' in line)

    def rss(self) -> int:
        """Resident memory of the worker process, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def soft_nofile(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-file limit")


@asynccontextmanager
async def worker(tmp_path: Path, nofile: tuple[int, int] | None = None) -> AsyncIterator[Worker]:
    """A worker process serving; `nofile` (soft, hard) is set before it starts."""
    app_port, ops_port = free_port(), free_port()
    sidecar = DevSidecar(SidecarConfig(app_base_url=f"http://127.0.0.1:{app_port}"))
    log = tmp_path / "worker.log"
    code = "import runpy, sys; sys.argv = ['reminder-worker']; "
    if nofile:
        code += f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, {nofile}); "
    code += "runpy.run_module('worker', run_name='__main__')"
    async with httpx.AsyncClient(timeout=5) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        env = {**os.environ, "DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(app_port),
               "REMINDER_OPS_PORT": str(ops_port), "REMINDER_OPS_HOST": "127.0.0.1"}
        with log.open("ab") as err:
            proc = await anyio.open_process([sys.executable, "-c", code], env=env,
                                            stdout=err, stderr=err)
        w = Worker(proc, app_port, ops_port, log, client)
        try:
            with anyio.fail_after(20):
                while True:
                    assert proc.returncode is None, log.read_text()[-2000:]
                    try:
                        if (await client.get(f"http://127.0.0.1:{ops_port}/readyz")
                                ).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
            yield w
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            tg.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], within: float) -> None:
    """Poll `predicate` every 50 ms; TimeoutError after `within` seconds."""
    with anyio.fail_after(within):
        for _ in range(int(within / 0.05) + 2):
            if predicate():
                return
            await anyio.sleep(0.05)
    raise TimeoutError


async def send_head(port: int, head: bytes, wait: float = 5.0) -> bytes:
    """Send `head` (written whole, without waiting for the server to read it) and
    return the first bytes of the answer, b"" when the server closed without one."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        with anyio.fail_after(wait):
            async with anyio.create_task_group() as tg:
                async def write() -> None:
                    try:
                        view = memoryview(head)
                        for start in range(0, len(view), MiB):
                            await stream.send(view[start:start + MiB])
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass  # the server stopped reading, as it should

                tg.start_soon(write)
                try:
                    answer = await stream.receive(200)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    answer = b""
                tg.cancel_scope.cancel()
    return answer


def request(path: str = "/healthz", *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: w\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"\r\n"


async def test_oversized_heads_are_refused_431_and_memory_stays_bounded(tmp_path: Path) -> None:
    async with worker(tmp_path) as w:
        before = w.rss()
        for port in (w.ops_port, w.app_port):
            # just under the bound: served
            ok = await send_head(port, request("/healthz", b"x-big: " + b"a" * (60 * 1024)))
            assert ok.startswith((b"HTTP/1.1 200", b"HTTP/1.1 204")), ok
            # over the bound in size, in count, and by far (three 14 MiB heads, one 64 MiB)
            too_many = request("/healthz", *[b"x-h%d: 1" % i for i in range(MAX_HEADERS + 1)])
            assert (await send_head(port, too_many)).startswith(b"HTTP/1.1 431")
            big = request("/healthz", b"x-big: " + b"a" * (2 * MAX_HEAD_BYTES))
            assert (await send_head(port, big)).startswith(b"HTTP/1.1 431")
            one_value = request("/healthz", b"x-big: " + b"a" * (14 * MiB))
            many = request("/healthz", *[b"x-h%d: %s" % (i, b"a" * 90)
                                         for i in range(14 * MiB // 100)])
            for huge in (one_value, many, one_value):
                assert (await send_head(port, huge)).startswith(b"HTTP/1.1 431")
        answer = await send_head(w.ops_port, request("/healthz", b"x-big: " + b"a" * (64 * MiB)),
                                 wait=10)
        assert answer.startswith(b"HTTP/1.1 431")
        grown = w.rss() - before
        assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        assert (await w.client.get(f"http://127.0.0.1:{w.ops_port}/healthz")).status_code == 200


async def closed_after(port: int, first: bytes = b"", drip: bytes = b"",
                       limit: float = REQUEST_TIMEOUT + 3) -> float:
    """Seconds until the server closes a connection that sends `first`, then one byte of
    `drip` every 0.5 s; `limit` when it is still open by then."""
    start = time.monotonic()
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        with anyio.move_on_after(limit):
            if first:
                await stream.send(first)
            async with anyio.create_task_group() as tg:
                async def dripping() -> None:
                    for byte in drip:
                        await anyio.sleep(0.5)
                        await stream.send(bytes([byte]))

                tg.start_soon(dripping)
                try:
                    while await stream.receive():  # answers to `first`, then the close
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()
    return time.monotonic() - start


async def test_slowloris_and_idle_connections_are_closed_within_seconds(tmp_path: Path) -> None:
    async with worker(tmp_path) as w:
        results: dict[str, float] = {}

        async def measure(name: str, port: int, first: bytes = b"", drip: bytes = b"") -> None:
            results[name] = await closed_after(port, first, drip)

        slow = b"x-slow: " + b"a" * 40  # one byte every 0.5 s: 24 s for the whole head
        async with anyio.create_task_group() as tg:
            for label, port in (("ops", w.ops_port), ("app", w.app_port)):
                tg.start_soon(measure, f"{label} silent", port)
                tg.start_soon(measure, f"{label} slowloris", port, b"GET /healthz HTTP/1.1\r\n",
                              slow)
                tg.start_soon(measure, f"{label} idle keep-alive", port, request("/healthz"))
        for name, seconds in results.items():
            assert seconds < REQUEST_TIMEOUT + 2, f"{name}: still open after {seconds:.1f} s"


async def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connected, silent sockets; connected without blocking the loop that
    serves `port` (the blocking-call guard caught the old blocking connect)."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        with anyio.fail_after(2):
            await loop.sock_connect(s, ("127.0.0.1", port))
        socks.append(s)
    return socks


class Refusals:
    """Which of these connections the server answered (503) or closed, remembered."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.answered: dict[int, bytes] = {}
        self.closed: set[int] = set()

    def count(self) -> int:
        for s in self.socks:
            key = id(s)
            if key in self.closed:
                continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                self.closed.add(key)
                continue
            if not data:
                self.closed.add(key)
            else:
                self.answered[key] = self.answered.get(key, b"") + data
                assert self.answered[key].startswith(b"HTTP/1.1 503"[:len(self.answered[key])])
        return len(self.closed | set(self.answered))


async def test_connection_caps_per_port_and_probes_answer_while_the_app_port_is_full(
        tmp_path: Path) -> None:
    async with worker(tmp_path) as w:
        ready = w.ready_line()
        app_cap, ops_cap = ready["app_max_connections"], ready["ops_max_connections"]
        ops = f"http://127.0.0.1:{w.ops_port}"
        socks = await open_idle(w.app_port, app_cap + 10)
        try:
            with anyio.fail_after(REQUEST_TIMEOUT - 1):  # before the idle ones time out
                beyond = Refusals(socks[app_cap:])
                await until(lambda: beyond.count() == 10, 2)
                # the first `cap` are served (the sidecar's own keep-alive may hold one)
                assert Refusals(socks[:app_cap]).count() <= 1
                # the app port is full: the ops port still answers its probes at once
                for path in ("/healthz", "/readyz"):
                    start = time.monotonic()
                    assert (await w.client.get(ops + path)).status_code == 200
                    assert time.monotonic() - start < 2
            # the ops port over its cap: the longest-idle connections give way (closed,
            # no answer), the newest stay open for the request they may yet send
            over = await open_idle(w.ops_port, ops_cap + 5)
            socks += over
            oldest, newest = Refusals(over[:5]), Refusals(over[5:])
            await until(lambda: oldest.count() == 5, 1)
            assert not oldest.answered and newest.count() == 0
        finally:
            for s in socks:
                s.close()
        # connections of the past are not counted: both ports serve again
        with anyio.fail_after(5):
            while True:
                try:
                    if (await w.client.get(ops + "/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)


async def probe(port: int, path: str) -> bytes:
    """One probe as the kubelet sends it: a new connection, one request, the status line."""
    answer = await send_head(port, request(path), wait=1.0)
    return answer.split(b"\r\n", 1)[0]


async def test_idle_connections_on_the_ops_port_never_fail_a_probe_and_close_within_seconds(
        tmp_path: Path) -> None:
    """600 connections opened on the ops port and forgotten, then more at 20 a second
    (a scraper that leaks connections): every probe, each on a new connection, answers
    200, and each idle connection is closed within seconds of its opening."""
    async with worker(tmp_path) as w:
        opened: list[tuple[float, socket.socket]] = []
        closed: dict[int, float] = {}
        statuses: list[bytes] = []
        done = anyio.Event()

        async def leak() -> None:
            for s in await open_idle(w.ops_port, 600):
                opened.append((time.monotonic(), s))
            for _ in range(60):
                opened.extend((time.monotonic(), s) for s in await open_idle(w.ops_port, 1))
                await anyio.sleep(0.05)

        async def probes() -> None:
            for i in range(30):
                statuses.append(await probe(w.ops_port, ("/healthz", "/readyz")[i % 2]))
                await anyio.sleep(0.1)

        async def watch() -> None:
            while not done.is_set() or len(closed) < len(opened):
                now = time.monotonic()
                for _, s in opened:
                    if id(s) in closed:
                        continue
                    try:
                        if s.recv(4096, socket.MSG_PEEK) is not None:
                            closed[id(s)] = now  # answered (a 503 over the cap) or closed
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed[id(s)] = now
                await anyio.sleep(0.05)

        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    async with anyio.create_task_group() as load:
                        load.start_soon(leak)
                        load.start_soon(probes)
                    done.set()
        finally:
            for _, s in opened:
                s.close()
        assert statuses == [b"HTTP/1.1 200 OK"] * 30, statuses
        longest = max(closed[id(s)] - at for at, s in opened)
        assert longest < OPS_IDLE_SECONDS + 1.5, f"an idle connection lived {longest:.1f} s"


async def test_open_file_limit_raised_and_accept_errors_never_flood_the_log(
        tmp_path: Path) -> None:
    """Started with a soft limit of 256 files: the worker raises it to the hard limit,
    and 400 connections to the ops port neither exhaust it nor flood the log."""
    hard = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    async with worker(tmp_path, nofile=(256, hard)) as w:
        assert w.soft_nofile() == hard
        lines_before = len(w.lines())
        socks = await open_idle(w.ops_port, 400)
        try:
            app = f"http://127.0.0.1:{w.app_port}/healthz"
            assert (await w.client.get(app)).status_code == 204  # the app port still serves
            # every one is answered: refused over the cap, closed idle after the timeout
            refusals = Refusals(socks)
            await until(lambda: refusals.count() == 400, REQUEST_TIMEOUT + 3)
        finally:
            for s in socks:
                s.close()
        assert w.proc.returncode is None
        new_lines = len(w.lines()) - lines_before
        assert new_lines < 20, w.lines()[-5:]


async def test_uvicorn_records_are_json_lines(tmp_path: Path) -> None:
    async with worker(tmp_path) as w:
        answer = await send_head(w.ops_port, b"NOT HTTP AT ALL\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        await until(lambda: "Invalid HTTP request" in w.log.read_text(), 5)
        for line in w.lines():
            record = json.loads(line)  # no plain-text line from uvicorn
            assert "level" in record and "timestamp" in record
        warning = next(json.loads(line) for line in w.lines() if "Invalid HTTP" in line)
        assert warning["logger"] == "uvicorn.error" and warning["level"] == "warning"
