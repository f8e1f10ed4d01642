"""worker.dapr.http1 against real sockets: servers written byte by byte, so that each
answer is exactly what a peer can send (keep-alive, close, chunks, silence, garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx2
import pytest

from tests.test_limits import until
from worker.dapr.http1 import Http1Transport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # a connection ended
        self.got = asyncio.Event()  # a request arrived
        self.hang_up = False  # close each connection after its first answer
        self.reader: asyncio.StreamReader | None = None  # the connection being answered


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


@asynccontextmanager
async def serving(answer: Callable[[Server, int], Awaitable[bytes | None] | bytes | None],
                  ) -> AsyncIterator[tuple[Server, str]]:
    """A server that reads each request and writes `answer(server, n)` (None: hang up)."""
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while True:
                try:
                    request = await read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                server.reader = reader
                server.requests.append(request)
                server.got.set()
                out = answer(server, len(server.requests))
                if not isinstance(out, bytes | None):
                    out = await out
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if server.hang_up:
                    return
        finally:
            writer.close()
            server.closed.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server, f"http://127.0.0.1:{port}"


class Fallback(httpx2.AsyncBaseTransport):
    def __init__(self) -> None:
        self.seen: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        return httpx2.Response(299)


def client(timeout: float = 2.0) -> tuple[httpx2.AsyncClient, Fallback]:
    fallback = Fallback()
    return (httpx2.AsyncClient(transport=Http1Transport(fallback),
                               timeout=httpx2.Timeout(timeout)), fallback)


async def test_keep_alive_reuses_one_connection_and_passes_status_headers_and_body() -> None:
    async with serving(lambda s, n: OK) as (server, url):
        c, _ = client()
        first = await c.post(url + "/v1.0/state/s?x=1", content=b'{"a":1}',
                             headers={"dapr-api-token": "t"})
        second = await c.get(url + "/v1.0/healthz")
        assert (first.status_code, first.json(), first.headers["content-type"]) == (
            200, {}, "application/json")
        assert second.status_code == 200
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1.0/state/s?x=1 HTTP/1.1\r\n")
        assert b"\r\ndapr-api-token: t" in head and b"\r\nContent-Length: 7" in head
        assert body == b'{"a":1}'
        await c.aclose()


async def test_chunked_and_204_answers() -> None:
    answers = {1: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
               2: b"HTTP/1.1 204 No Content\r\netag: 7\r\n\r\n",
               3: OK}
    async with serving(lambda s, n: answers[n]) as (server, url):
        c, _ = client()
        assert (await c.get(url + "/a")).json() == [1, 2]
        empty = await c.get(url + "/b")
        assert (empty.status_code, empty.content, empty.headers["etag"]) == (204, b"", "7")
        assert (await c.get(url + "/c")).json() == {}  # the 204 left the stream in step
        assert server.connections == 1
        await c.aclose()


async def test_interim_100_answer_is_skipped() -> None:
    async with serving(lambda s, n: b"HTTP/1.1 100 Continue\r\n\r\n" + OK) as (_, url):
        c, _ = client()
        assert (await c.get(url + "/")).status_code == 200
        await c.aclose()


async def test_answer_without_length_ends_with_the_connection() -> None:
    unframed = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n[1, 2]"
    async with serving(lambda s, n: unframed) as (server, url):
        server.hang_up = True
        c, _ = client()
        assert (await c.get(url + "/")).json() == [1, 2]
        assert (await c.get(url + "/")).json() == [1, 2]
        assert server.connections == 2
        await c.aclose()


async def test_connection_close_answer_is_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
    async with serving(lambda s, n: close) as (server, url):
        c, _ = client()
        for _ in range(3):
            assert (await c.get(url + "/")).status_code == 200
        assert server.connections == 3
        await c.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async with serving(lambda s, n: OK) as (server, url):
        server.hang_up = True  # answer, then close (an idle timeout, a restart)
        c, _ = client()
        assert (await c.get(url + "/")).status_code == 200
        await asyncio.wait_for(server.closed.wait(), 2)
        transport = c._transport
        assert isinstance(transport, Http1Transport)
        # the client's loop reads the FIN
        await until(lambda: all(cn.closed for pool in transport._pools.values()
                                for cn in pool.idle), within=2)
        assert (await c.get(url + "/")).status_code == 200
        assert server.connections == 2
        await c.aclose()


async def test_server_hanging_up_without_answer_is_a_remote_protocol_error() -> None:
    async with serving(lambda s, n: None) as (_, url):
        c, _ = client()
        with pytest.raises(httpx2.RemoteProtocolError):
            await c.get(url + "/")
        await c.aclose()


async def test_answer_cut_mid_body_is_an_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"
    async with serving(lambda s, n: cut) as (server, url):
        c, _ = client(timeout=0.5)
        # 2 of 10 bytes, the connection kept open: a read timeout
        with pytest.raises(httpx2.ReadTimeout):
            await c.get(url + "/")
        server.hang_up = True  # 2 of 10 bytes, then the connection closed
        with pytest.raises(httpx2.RemoteProtocolError):
            await c.get(url + "/")
        await c.aclose()


async def test_garbage_answer_is_a_remote_protocol_error() -> None:
    async with serving(lambda s, n: b"SMTP ready\r\n\r\n") as (_, url):
        c, _ = client()
        with pytest.raises(httpx2.RemoteProtocolError):
            await c.get(url + "/")
        await c.aclose()


async def test_silent_server_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    async def silent(server: Server, n: int) -> bytes | None:
        if n == 1:
            await asyncio.sleep(5)
        return OK

    async with serving(silent) as (server, url):
        c, _ = client(timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(httpx2.ReadTimeout):
            await c.get(url + "/")
        assert 0.15 < loop.time() - started < 1.5
        c2, _ = client(timeout=2)
        c2._transport = c._transport  # same pool: the timed-out connection is not in it
        assert (await c2.get(url + "/")).status_code == 200
        assert server.connections == 2
        await c.aclose()


async def test_cancelled_request_closes_its_connection() -> None:
    eof = asyncio.Event()

    async def slow(server: Server, n: int) -> bytes | None:
        if n == 1:  # no answer: wait for the client to hang up
            assert server.reader is not None
            await server.reader.read()
            eof.set()
            return None
        return OK

    async with serving(slow) as (server, url):
        c, _ = client()
        task = asyncio.ensure_future(c.get(url + "/"))
        await asyncio.wait_for(server.got.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eof.wait(), 2)  # its answer can never be misread
        assert (await c.get(url + "/")).status_code == 200
        assert server.connections == 2
        await c.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    c, _ = client()
    with pytest.raises(httpx2.ConnectError):
        await c.get(f"http://127.0.0.1:{port}/")
    await c.aclose()


async def test_https_and_head_go_to_the_fallback() -> None:
    c, fallback = client()
    assert (await c.get("https://dapr.example:443/v1.0/healthz")).status_code == 299
    assert (await c.head("http://127.0.0.1:9/")).status_code == 299
    assert [r.method for r in fallback.seen] == ["GET", "HEAD"]
    await c.aclose()


async def test_closed_transport_refuses_and_closes_idle_connections() -> None:
    async with serving(lambda s, n: OK) as (server, url):
        transport = Http1Transport(Fallback())
        c = httpx2.AsyncClient(transport=transport)
        assert (await c.get(url + "/")).status_code == 200
        await transport.aclose()
        await asyncio.wait_for(server.closed.wait(), 2)
        with pytest.raises(RuntimeError):
            await transport.handle_async_request(httpx2.Request("GET", url + "/"))


async def test_bytes_after_the_answer_in_the_same_read_are_never_the_next_answer() -> None:
    """A stray head right behind the answer (one read): the connection is not reused,
    so that the stray head never swallows the next answer's first bytes as its body."""
    stray = b"HTTP/1.1 200 OK\r\nx-stray: 1\r\ncontent-length: 2\r\n\r\n"
    async with serving(lambda s, n: OK + stray if n == 1 else OK) as (server, url):
        c, _ = client()
        assert (await c.get(url + "/a")).json() == {}
        second = await c.get(url + "/b")
        assert (second.json(), "x-stray" in second.headers) == ({}, False)
        assert server.connections == 2
        await c.aclose()


@pytest.mark.parametrize("fields", [b"", b"upgrade: h2c\r\nconnection: upgrade\r\n"],
                         ids=["bare", "upgrade"])
async def test_a_101_fails_the_call_and_the_answer_behind_it_is_not_taken(
        fields: bytes) -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\n"
    async with serving(lambda s, n: switching + OK if n == 1 else OK) as (server, url):
        c, _ = client()
        with pytest.raises(httpx2.RemoteProtocolError, match=r"101|Upgrade"):
            await c.get(url + "/")
        assert (await c.get(url + "/")).status_code == 200
        assert server.connections == 2
        await c.aclose()


async def test_trailers_are_dropped_not_merged_into_the_headers() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-head: 1\r\n\r\n"
               b"2\r\n{}\r\n0\r\nx-trailer: 2\r\ncontent-type: text/html\r\n\r\n")
    async with serving(lambda s, n: chunked if n == 1 else OK) as (server, url):
        c, _ = client()
        first = await c.get(url + "/")
        assert (first.json(), first.headers.get("x-head")) == ({}, "1")
        assert "x-trailer" not in first.headers and "content-type" not in first.headers
        assert (await c.get(url + "/")).json() == {}
        assert server.connections == 1
        await c.aclose()


# -- request heads that cannot be sent --------------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("x-a", "s3\rcret"), ("x-a", "s3\ncret"), ("x-a", "s3cret\r\nx-injected: 1"),
    ("x-a", "s3\x00cret"), ("x-a", " s3cret"), ("x-a", "s3cret\t"), ("x-a", "s3\x01cret"),
    ("x-a", "s3cret\x7f"), ("x a", "v"), ("x:a", "v"), ("x\ra", "v"), ("x\na", "v"),
    ("", "v"),
])
async def test_a_header_that_cannot_be_sent_is_refused_before_anything_is_written(
        name: str, value: str) -> None:
    async with serving(lambda s, n: OK) as (server, url):
        c, _ = client()
        with pytest.raises(httpx2.LocalProtocolError) as info:
            await c.post(url + "/", content=b"{}", headers={name: value})
        assert "s3" not in str(info.value) and "cret" not in str(info.value)  # a secret?
        assert (server.connections, server.requests) == (0, [])
        assert (await c.get(url + "/")).status_code == 200  # no slot was taken
        assert server.connections == 1 and len(server.requests) == 1
        await c.aclose()


async def test_a_method_that_is_no_token_is_refused() -> None:
    async with serving(lambda s, n: OK) as (server, url):
        c, _ = client()
        with pytest.raises(httpx2.LocalProtocolError, match="method"):
            await c.request("GET /x HTTP/1.1\r\nX-Injected: 1\r\nY", url + "/")
        assert server.requests == []
        await c.aclose()


async def test_header_values_that_can_be_sent_are_sent_as_given() -> None:
    values = {"x-empty": b"", "x-inner": b"a b\tc", "x-obs": "\u00fc".encode("latin-1"),
              "x-punct": b"\"a\";q=1, b/c"}
    async with serving(lambda s, n: OK) as (server, url):
        c, _ = client()
        assert (await c.get(url + "/", headers=values)).status_code == 200
        head = server.requests[0]
        for name, value in values.items():
            assert b"\r\n" + name.encode() + b": " + value + b"\r\n" in head
        await c.aclose()


# -- the pool's bound --------------------------------------------------------------------

def bounded(limit: int) -> tuple[httpx2.AsyncClient, Http1Transport]:
    transport = Http1Transport(Fallback(), max_connections=limit)
    return httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(2.0)), transport


def held() -> tuple[asyncio.Event, Callable[[Server, int], Awaitable[bytes | None]]]:
    """An answer that waits for the returned event."""
    release = asyncio.Event()

    async def answer(server: Server, n: int) -> bytes | None:
        await release.wait()
        return OK

    return release, answer


async def test_callers_beyond_the_limit_wait_and_are_served_in_order() -> None:
    release, answer = held()
    async with serving(answer) as (server, url):
        c, transport = bounded(1)
        calls = [asyncio.ensure_future(c.get(f"{url}/{i}")) for i in range(5)]
        await asyncio.wait_for(server.got.wait(), 2)
        pool = transport._pools["127.0.0.1", int(url.rsplit(":", 1)[1])]
        await until(lambda: len(pool.waiters) == 4, within=2)
        release.set()
        assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 5
        assert [r.split(b" ")[1] for r in server.requests] == [
            b"/0", b"/1", b"/2", b"/3", b"/4"]
        assert server.connections == 1
        assert (pool.opened, len(pool.idle), len(pool.waiters)) == (1, 1, 0)
        await c.aclose()


async def test_a_caller_waiting_longer_than_its_pool_timeout_fails_and_takes_no_slot(
        ) -> None:
    release, answer = held()
    async with serving(answer) as (server, url):
        c, _ = bounded(1)
        first = asyncio.ensure_future(c.get(url + "/1"))
        await asyncio.wait_for(server.got.wait(), 2)
        with pytest.raises(httpx2.PoolTimeout):
            await c.get(url + "/2", timeout=httpx2.Timeout(2.0, pool=0.1))
        release.set()
        assert (await first).status_code == 200
        assert (await c.get(url + "/3")).status_code == 200
        assert server.connections == 1
        assert [r.split(b" ")[1] for r in server.requests] == [b"/1", b"/3"]
        await c.aclose()


async def test_a_caller_cancelled_while_waiting_takes_no_slot() -> None:
    release, answer = held()
    async with serving(answer) as (server, url):
        c, transport = bounded(1)
        first = asyncio.ensure_future(c.get(url + "/1"))
        await asyncio.wait_for(server.got.wait(), 2)
        waiting = asyncio.ensure_future(c.get(url + "/2"))
        pool = transport._pools["127.0.0.1", int(url.rsplit(":", 1)[1])]
        await until(lambda: len(pool.waiters) == 1, within=2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not pool.waiters
        release.set()
        assert (await first).status_code == 200
        assert (await c.get(url + "/3")).status_code == 200
        assert server.connections == 1 and pool.opened == 1
        await c.aclose()


@pytest.mark.parametrize("handed", ["a connection", "a slot"])
async def test_a_caller_cancelled_just_after_it_was_handed_a_connection_gives_it_back(
        handed: str) -> None:
    """The hand-over and the cancellation in one step of the loop: the waiter's future
    has its result, and the caller sees CancelledError. What it was handed goes back."""
    async with serving(lambda s, n: OK) as (_, url):
        c, transport = bounded(1)
        assert (await c.get(url + "/")).status_code == 200
        key = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        pool = transport._pools[key]
        conn = pool.idle.pop()  # as a caller holding it would (its slot stays taken)
        waiting = asyncio.ensure_future(transport._checkout(pool, key, {"pool": 2.0}))
        await until(lambda: len(pool.waiters) == 1, within=2)
        if handed == "a connection":
            transport._checkin(pool, conn)
        else:
            conn.close()
            transport._release(pool)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not pool.waiters
        if handed == "a connection":
            assert (pool.opened, list(pool.idle)) == (1, [conn])
        else:
            assert (pool.opened, list(pool.idle)) == (0, [])
        assert (await c.get(url + "/")).status_code == 200
        await c.aclose()


async def test_closing_the_transport_fails_the_callers_waiting_for_a_connection() -> None:
    release, answer = held()
    async with serving(answer) as (server, url):
        c, transport = bounded(1)
        first = asyncio.ensure_future(c.get(url + "/1"))
        await asyncio.wait_for(server.got.wait(), 2)
        waiting = asyncio.ensure_future(c.get(url + "/2"))
        pool = transport._pools["127.0.0.1", int(url.rsplit(":", 1)[1])]
        await until(lambda: len(pool.waiters) == 1, within=2)
        await transport.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
        release.set()
        assert (await first).status_code == 200
        await asyncio.wait_for(server.closed.wait(), 2)  # not kept after the close
        assert server.requests[-1].split(b" ")[1] == b"/1"
