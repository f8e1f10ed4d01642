"""The sidecar client that ships (worker.dapr.sidecar.make_client) against raw-socket servers
that misbehave on purpose: connections closed or spoken on while the worker's loop is
busy, bursts, header injection, trailers, a 101.

The servers run on their own asyncio loop in a thread, so that they can act while the
test's (the client's) loop is blocked: `Server.run` blocks the client's loop until the
server has done what it was told, which is how a busy worker meets a peer that closes
an idle connection or writes onto it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client import CollectorRegistry

from tests.test_limits import until
from worker.dapr import sidecar as sidecar_module
from worker.dapr.sidecar import Sidecar, make_client
from worker.errors import SettingsError, SidecarUnavailable
from worker.metrics import Metrics

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
# What a peer writes onto an idle connection before closing it: an answer to nothing.
STRAY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-stray: 1\r\n\r\n{}"


class ThenClose(bytes):
    """An answer after which the server hangs up."""


Answer = Callable[[bytes], Awaitable[bytes | None]]  # None: hang up without answering


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


async def answer_ok(request: bytes) -> bytes | None:
    return NO_CONTENT if request.startswith(b"POST") else OK


class Server:
    """An HTTP/1.1 server written byte by byte, on its own loop in a thread."""

    def __init__(self, answer: Answer = answer_ok) -> None:
        self.answer = answer
        self.loop = asyncio.new_event_loop()
        self.requests: list[bytes] = []  # every request read, in order
        self.writers: list[asyncio.StreamWriter] = []  # open connections, oldest first
        self.accepted = 0
        self.peak = 0  # most connections open at once
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        self.peak = max(self.peak, len(self.writers))
        try:
            while True:
                try:
                    request = await read_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                self.requests.append(request)
                out = await self.answer(request)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if isinstance(out, ThenClose):
                    return
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()

    def run(self, coro: Callable[[], Awaitable[Any]]) -> Any:
        """Run `coro` on the server's loop and wait for it here: the caller's loop is
        blocked meanwhile, as a busy worker's is."""
        async def wrapped() -> Any:
            return await coro()
        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=5)

    def start(self) -> None:
        self._thread.start()

        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self.server: asyncio.Server = self.run(listen)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shut() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()
            handlers = asyncio.all_tasks() - {asyncio.current_task()}
            for task in handlers:  # a handler still waiting (a test that failed early)
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        self.run(shut)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def speak_idle(self, stray: bytes) -> None:
        """On the server's loop: write `stray` onto every open connection and keep it
        open (a peer speaking out of turn)."""
        for writer in list(self.writers):
            writer.write(stray)
            await writer.drain()

    async def hang_up_idle(self, stray: bytes = b"") -> None:
        """On the server's loop: write `stray` onto every open connection, then close it
        (an idle timeout; a peer speaking out of turn)."""
        writers = list(self.writers)
        for writer in writers:
            if stray:
                writer.write(stray)
            writer.close()
        for writer in writers:
            with suppress(ConnectionError):
                await writer.wait_closed()


@contextmanager
def serving(answer: Answer = answer_ok) -> Iterator[Server]:
    server = Server(answer)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sidecar(url: str, *, token: str | None = None, timeout: float | None = 2.0) -> Sidecar:
    metrics = Metrics.create(CollectorRegistry(), process=False)
    return Sidecar(url, make_client(timeout=timeout), metrics, api_token=token)


def publishes(server: Server) -> list[bytes]:
    return [r for r in server.requests if r.startswith(b"POST /v1.0/publish/")]


# -- (a) a connection the server closed while the worker's loop was busy ---------------

async def test_a_connection_closed_while_the_loop_was_busy_is_not_reused() -> None:
    with serving() as server:
        sc = sidecar(server.url)
        async with sc.client:
            assert await sc.state_get("statestore", "k") == ({}, None)
            assert server.accepted == 1
            server.run(server.hang_up_idle)  # the loop is busy while the server closes
            # A POST is never retried by the client: it must go out on a live connection.
            await sc.publish("pubsub", "topic", {"id": "e1"})
        assert len(publishes(server)) == 1
        assert server.accepted == 2


async def test_an_idle_connection_expires_before_a_go_server_would_close_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client drops a connection idle for longer than its keep-alive expiry (the
    real one is checked below; here it is shortened so that the test takes 0.2 s)."""
    assert sidecar_module.KEEPALIVE_EXPIRY <= 5.0  # below any Go server's idle timeout
    monkeypatch.setattr(sidecar_module, "KEEPALIVE_EXPIRY", 0.1, raising=False)
    with serving() as server:
        async with make_client() as client:
            assert (await client.get(server.url + "/v1.0/healthz")).status_code == 200
            await asyncio.sleep(0.15)  # not a synchronisation: the idle time under test
            assert (await client.get(server.url + "/v1.0/healthz")).status_code == 200
            assert server.accepted == 2
            # the expired connection was closed by the client, not left open
            await until(lambda: len(server.writers) == 1, within=2)


async def test_an_idempotent_call_is_sent_again_once_when_a_kept_alive_connection_dies(
        ) -> None:
    """The peer closes the reused connection after reading the request (an idle timeout
    racing it), before a byte of the answer: a GET is sent again on a new connection."""
    async def answer(request: bytes) -> bytes | None:
        return None if len(server.requests) == 2 else OK

    with serving(answer) as server:
        async with make_client() as client:
            assert (await client.get(server.url + "/v1.0/state/s/a")).status_code == 200
            assert (await client.get(server.url + "/v1.0/state/s/b")).json() == {}
        assert [r.split(b" ")[1] for r in server.requests] == [
            b"/v1.0/state/s/a", b"/v1.0/state/s/b", b"/v1.0/state/s/b"]
        assert server.accepted == 2


async def test_an_idempotent_call_is_sent_again_only_once() -> None:
    async def answer(request: bytes) -> bytes | None:
        return OK if len(server.requests) == 1 else None

    with serving(answer) as server:
        async with make_client() as client:
            await client.get(server.url + "/v1.0/state/s/a")
            with pytest.raises(httpx2.RemoteProtocolError):
                await client.get(server.url + "/v1.0/state/s/b")
        assert len(server.requests) == 3  # the first try and one more
        assert server.accepted == 2


async def test_a_post_is_not_sent_again_when_its_connection_dies_after_it_was_written(
        ) -> None:
    """The server may have acted on it: the transport must not repeat it (nor does
    Sidecar._call, for a publish), whatever the failure looks like."""
    async def answer(request: bytes) -> bytes | None:
        return None if request.startswith(b"POST") else OK

    with serving(answer) as server:
        sc = sidecar(server.url)
        async with sc.client:
            await sc.state_get("statestore", "k")
            with pytest.raises(SidecarUnavailable, match="RemoteProtocolError"):
                await sc.publish("pubsub", "topic", {"id": "e4"})
        assert len(publishes(server)) == 1
        assert server.accepted == 1


async def test_an_idempotent_call_is_not_sent_again_once_an_answer_byte_arrived() -> None:
    cut = ThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}")

    async def answer(request: bytes) -> bytes | None:
        return cut if len(server.requests) == 2 else OK

    with serving(answer) as server:
        async with make_client() as client:
            await client.get(server.url + "/v1.0/state/s/a")
            with pytest.raises(httpx2.RemoteProtocolError):
                await client.get(server.url + "/v1.0/state/s/b")
        assert len(server.requests) == 2
        assert server.accepted == 1


# -- (b) bytes arriving on an idle pooled connection while the loop is busy -----------

async def test_the_checkout_check_finds_bytes_the_busy_loop_has_not_read() -> None:
    """A stray answer written onto an idle connection that stays open, while the
    worker's loop is busy: only the check when the connection is taken can see it."""
    with serving() as server:
        sc = sidecar(server.url)
        async with sc.client:
            await sc.state_get("statestore", "k")
            server.run(lambda: server.speak_idle(STRAY))
            await sc.publish("pubsub", "topic", {"id": "e5"})
            assert len(publishes(server)) == 1  # answered by a server that received it
            assert server.accepted == 2
            # the connection that spoke out of turn was closed by the client, not kept
            await until(lambda: len(server.writers) == 1, within=2)


async def test_bytes_the_loop_reads_on_an_idle_connection_close_it() -> None:
    with serving() as server:
        sc = sidecar(server.url)
        async with sc.client:
            await sc.state_get("statestore", "k")
            server.loop.call_soon_threadsafe(
                lambda: server.writers[0].write(STRAY))  # the worker's loop is free
            await until(lambda: not server.writers, within=2)  # the client hung up
            await sc.publish("pubsub", "topic", {"id": "e6"})
        assert len(publishes(server)) == 1
        assert server.accepted == 2


async def test_a_stray_answer_on_an_idle_connection_is_not_taken_for_the_next_one() -> None:
    with serving() as server:
        sc = sidecar(server.url)
        async with sc.client:
            await sc.state_get("statestore", "k")
            # a stray `200` then a close, written while the worker's loop is busy
            server.run(lambda: server.hang_up_idle(STRAY))
            await sc.publish("pubsub", "topic", {"id": "e2"})
        # the publish was answered by a server that received it
        assert len(publishes(server)) == 1
        assert server.accepted == 2


# -- (c) a burst: connections bounded by the client's limit -----------------------------

async def test_a_burst_of_200_calls_opens_no_more_connections_than_the_limit() -> None:
    with serving() as server:
        async with make_client() as client:
            answers = await asyncio.gather(
                *(client.get(f"{server.url}/v1.0/state/s/k{i}") for i in range(200)))
        assert [a.status_code for a in answers] == [200] * 200
        assert len(server.requests) == 200
        assert server.peak <= sidecar_module.MAX_CONNECTIONS
        assert server.accepted <= sidecar_module.MAX_CONNECTIONS


async def test_health_does_not_queue_behind_a_full_gate() -> None:
    """The gate's calls fill their connections; health and metadata still get one."""
    release = asyncio.Event()  # on the server's loop

    async def hold(request: bytes) -> bytes | None:
        if b"/v1.0/healthz" not in request:
            await release.wait()
        return await answer_ok(request)

    with serving(hold) as server:
        sc = sidecar(server.url, timeout=None)  # the held calls wait up to 6 s
        async with sc.client:
            held = [asyncio.ensure_future(sc.state_get("statestore", f"k{i}"))
                    for i in range(sidecar_module.DEFAULT_CONCURRENCY)]
            await until(lambda: len(server.requests) == sidecar_module.DEFAULT_CONCURRENCY,
                        within=5)
            with anyio.fail_after(1):  # /readyz answers within 2 s
                assert await sc.outbound_healthy()
            server.loop.call_soon_threadsafe(release.set)
            assert all(v is not None for v in await asyncio.gather(*held))


# -- (d) request header values are checked ---------------------------------------------

@pytest.mark.parametrize("token", ["s3cret\n", "s3cret\r\nx-injected: 1", "s3cret\x00",
                                   "s3cret "])
async def test_a_token_that_is_no_header_value_never_reaches_the_server(token: str) -> None:
    with serving() as server:
        async with make_client() as client:
            with pytest.raises(httpx2.LocalProtocolError):
                await client.post(server.url + "/v1.0/publish/p/t", content=b"{}",
                                  headers={"dapr-api-token": token})
            assert server.requests == []
            assert (await client.get(server.url + "/v1.0/healthz")).status_code == 200
        assert not any(b"x-injected" in r for r in server.requests)
        # The Sidecar refuses it before any call, naming the setting, not the value.
        with pytest.raises(SettingsError, match="DAPR_API_TOKEN") as info:
            sidecar(server.url, token=token)
        assert "s3cret" not in str(info.value)


# -- (e) trailers and a 101 --------------------------------------------------------------

async def test_trailers_are_not_headers() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n"
               b"3\r\n[1,\r\n2\r\n2]\r\n0\r\nx-trailer: sneaky\r\netag: 9\r\n\r\n")

    async def answer(request: bytes) -> bytes | None:
        return chunked if b"/chunked" in request else OK

    with serving(answer) as server:
        async with make_client() as client:
            resp = await client.get(server.url + "/chunked")
            assert resp.json() == [1, 2]
            assert "x-trailer" not in resp.headers and "etag" not in resp.headers
            # the connection stays in step after the trailers
            assert (await client.get(server.url + "/next")).json() == {}
        assert server.accepted == 1


@pytest.mark.parametrize("then", [b"", OK], ids=["then-close", "then-200"])
async def test_a_101_answer_is_a_sidecar_failure_not_a_crash(then: bytes) -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    loop = asyncio.get_running_loop()
    uncaught: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: uncaught.append(context))

    async def answer(request: bytes) -> bytes | None:
        if b"/v1.0/publish/" in request:
            return switching + then if then else ThenClose(switching)
        return await answer_ok(request)

    try:
        with serving(answer) as server:
            sc = sidecar(server.url, timeout=1.0)
            async with sc.client:
                with pytest.raises(SidecarUnavailable):
                    await sc.publish("pubsub", "topic", {"id": "e3"})
                server.run(server.hang_up_idle)
                assert await sc.state_get("statestore", "k") == ({}, None)
    finally:
        loop.set_exception_handler(previous)
    assert uncaught == []
