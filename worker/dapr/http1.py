"""A lean HTTP/1.1 keep-alive transport under httpx2, for plain-http sidecar calls.

Why our own: a sidecar call is a small request and a small answer on a local
keep-alive connection, and the worker makes two to five of them per event. On
aiohttp's pool (the transport before this one; httpx's own was slower still)
about a quarter of the worker's CPU per task event went into its request and
response machinery; here a request is one buffer written to an asyncio transport
and the answer is parsed by httptools (uvicorn's parser, already a dependency),
with no task, lock or stream object per call (bench/RESULTS.md has the figures;
bench/transport_cost.py measures this transport against httpx2's own).

The pool, per host: at most `max_connections` open; callers beyond that wait for
one, first come first served, up to the request's pool timeout (httpx2.PoolTimeout).
An idle connection is kept for `keepalive_expiry` seconds, less than a server's
idle timeout, and is checked when taken: one whose peer closed it, or wrote on it,
while the worker's loop was too busy to read (the kernel holds its FIN or its
bytes) is closed, never used. Bytes the loop does read on an idle connection close
it at once. When the peer closes a reused connection after the request went out
but before any byte of the answer (an idle timeout racing the request), the
request is sent once more, on a new connection, if its method is idempotent; a
POST may have been acted on, so it fails (RemoteProtocolError) and its caller
decides.

A request whose method, target, header names or values could end or split a line
(CR, LF, NUL, other controls, a space or tab around a value) is refused with
httpx2.LocalProtocolError before anything is written. An answer's trailers are
not its headers (they are dropped); a 101 answer (never asked for) fails the call
with httpx2.RemoteProtocolError and closes the connection, as do bytes after an
answer (a connection they arrive on is never used again).

What it does not do it hands to `fallback` (httpx2's own transport): https, HEAD
(an answer's length cannot be known without the method), and streamed request
bodies. Errors are httpx2's, so callers see the same exceptions from either
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import time
from collections import deque
from typing import Any, Final

import httptools
import httpx2

DEFAULT_MAX_CONNECTIONS: Final = 64  # per host; worker.dapr.sidecar passes its own bound
DEFAULT_KEEPALIVE_EXPIRY: Final = 5.0  # seconds an idle connection is kept
DEFAULT_TIMEOUT: Final = 6.0
# Methods a server may receive twice with the effect of once (RFC 9110, 9.2.2);
# only these are sent again when a reused connection dies before any answer byte.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

# A request head as written below: a token method, a target without spaces or
# controls, then `name: value` lines, each a token and a value of visible
# characters (obs-text too) with single spaces or tabs only inside (RFC 9110 5.5),
# as h11 checks. The count of LF in the head is checked too, so that a value
# carrying `\r\nname: value` cannot pass as two well-formed lines.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_VALUE = rb"(?:" + _VCHAR + rb"(?:[\x20\x09\x21-\x7e\x80-\xff]*" + _VCHAR + rb")?)?"
_HEAD: Final = re.compile(_TOKEN + rb" [\x21-\x7e\x80-\xff]+ HTTP/1\.1\r\n(?:"
                          + _TOKEN + rb": " + _VALUE + rb"\r\n)*\r\n")
_NAME_OK: Final = re.compile(_TOKEN)
_VALUE_OK: Final = re.compile(_VALUE)


def _refuse(request: httpx2.Request) -> httpx2.LocalProtocolError:
    """The error for a head that failed the check, naming the part (never a value,
    which may be a secret)."""
    if not _NAME_OK.fullmatch(request.method.encode("ascii", "replace")):
        what = "the method"
    else:
        what = "the request target"
        for name, value in request.headers.raw:
            if not _NAME_OK.fullmatch(name):
                what = "a header name"
                break
            if not _VALUE_OK.fullmatch(value):
                what = f"the value of header {name.decode('ascii')!r}"
                break
    return httpx2.LocalProtocolError(
        f"{what} cannot be sent in HTTP/1.1 (a line break, NUL or other control "
        "character, or a space or tab at either end of a value); nothing was sent")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.poller: Any = None  # select.poll on the socket, for the check at checkout
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[httpx2.Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.closed = False
        self.reusable = True
        self.reused = False  # taken from the pool (not opened for this request)
        self.idle_since = 0.0  # time.monotonic() when it was last put back
        self.framed = False  # the answer has a length or chunks; else it ends at EOF
        self.headed = False  # the final answer's head is complete: later fields are trailers
        self.got = False  # a byte of the answer arrived
        self.answered = False  # the final answer is complete: any further byte is stray

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.poller = select.poll()
        self.poller.register(transport.get_extra_info("socket").fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.answered:
            # nothing was asked, or it was answered: a server speaking out of turn,
            # whose bytes must never be taken for the next request's answer
            self.close()
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx2.RemoteProtocolError(
                "the sidecar answered 101 Switching Protocols, which was never asked for"))
        except httptools.HttpParserError as exc:
            self._fail(httpx2.RemoteProtocolError(f"bad answer from the sidecar: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.headed and not self.framed:
            self.on_message_complete()  # an answer without length ends where the stream ends
        self._fail(httpx2.RemoteProtocolError(
            "the server closed the connection before answering"
            + (f": {exc}" if exc else "")))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        if self.answered:  # bytes after the answer, in the same read: out of turn
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headed:  # a trailer (or a stray answer's field): not a header
            return
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.answered:
            return
        self.reusable = self.parser.should_keep_alive()
        status = self.parser.get_status_code()
        self.headed = status >= 200
        if status in (204, 304):
            self.framed = True  # never a body

    def on_body(self, body: bytes) -> None:
        if not self.answered:
            self.body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done() or self.answered:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer, the real one follows (101 fails above)
            self.headers, self.body, self.framed = [], [], False
            return
        self.answered = True
        waiter.set_result(httpx2.Response(
            status, headers=self.headers, stream=httpx2.ByteStream(b"".join(self.body)),
            extensions={"http_version": b"HTTP/1.1"}))

    # --
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def unread(self) -> bool:
        """Whether the kernel holds something for this idle connection that the loop has
        not read yet: the peer's FIN, a reset, or bytes (all mean: never use it)."""
        return bool(self.poller.poll(0))

    async def send(self, data: bytes, read_timeout: float | None) -> httpx2.Response:
        if self.closed:
            raise httpx2.RemoteProtocolError("the connection was closed before the request")
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.headers, self.body = [], []
        self.framed = self.headed = self.got = self.answered = False
        assert self.transport is not None
        self.transport.write(data)  # one send; sidecar bodies are small
        timer = None
        if read_timeout is not None:
            timer = loop.call_later(read_timeout, self._fail,
                                    httpx2.ReadTimeout(f"no answer within {read_timeout:g} s"))
        try:
            response: httpx2.Response = await waiter
            return response
        except BaseException:
            self.close()  # cancelled or failed mid-request: its state is unknown
            raise
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()


class _Pool:
    """One host's connections. `opened` counts the slots taken: connections open
    (idle or in use) or being opened, and slots handed to a waiter."""

    __slots__ = ("idle", "opened", "waiters")

    def __init__(self) -> None:
        self.idle: deque[_Connection] = deque()  # oldest first
        self.opened = 0
        # FIFO; each gets a connection, or None: a slot to open one with
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()


def _hand_over(pool: _Pool, conn: _Connection | None) -> bool:
    """Give `conn` (None: a free slot) to the first waiter still waiting; False if none."""
    while pool.waiters:
        waiter = pool.waiters.popleft()
        if not waiter.done():
            waiter.set_result(conn)
            return True
    return False


class Http1Transport(httpx2.AsyncBaseTransport):
    def __init__(self, fallback: httpx2.AsyncBaseTransport, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.fallback = fallback
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        method = request.method
        if (url.scheme != "http" or method == "HEAD"
                or not isinstance(request.stream, httpx2.ByteStream)):
            return await self.fallback.handle_async_request(request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        raw = request.headers.raw
        head = b"".join((method.encode("ascii", "replace"), b" ", url.raw_path,
                         b" HTTP/1.1\r\n", *(b"%s: %s\r\n" % kv for kv in raw), b"\r\n"))
        if head.count(b"\n") != len(raw) + 2 or _HEAD.fullmatch(head) is None:
            raise _refuse(request)
        data = head + request.content
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read", DEFAULT_TIMEOUT)
        key = (url.host, url.port or 80)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool()
        conn = await self._checkout(pool, key, timeouts)
        try:
            try:
                response = await conn.send(data, read_timeout)
            except httpx2.RemoteProtocolError:
                # A kept-alive connection the peer closed (an idle timeout racing the
                # request) before a byte of the answer: a server that received nothing,
                # or an idempotent request; once, on a new connection.
                if not (conn.reused and not conn.got and method in IDEMPOTENT):
                    raise
                conn = await self._open(key, timeouts.get("connect", DEFAULT_TIMEOUT))
                response = await conn.send(data, read_timeout)
        except BaseException:
            self._release(pool)  # the connection is closed (send closes it on failure)
            raise
        self._checkin(pool, conn)
        response.request = request
        return response

    # -- the pool
    async def _checkout(self, pool: _Pool, key: tuple[str, int],
                        timeouts: dict[str, Any]) -> _Connection:
        """A connection to `key`, holding one of its pool's slots."""
        idle = pool.idle
        if idle:
            expired = time.monotonic() - self.keepalive_expiry
            while idle and idle[0].idle_since <= expired:  # before the peer drops it
                idle.popleft().close()
                pool.opened -= 1
            while idle:
                conn = idle.pop()  # the most recently used
                if conn.closed or conn.unread():
                    conn.close()
                    pool.opened -= 1
                    continue
                conn.reused = True
                return conn
        if pool.opened < self.max_connections:
            pool.opened += 1
        else:
            got = await self._wait(pool, timeouts.get("pool", DEFAULT_TIMEOUT))
            if got is not None:
                if not (got.closed or got.unread()):
                    got.reused = True
                    return got
                got.close()  # its slot is ours: open a new one with it
        try:
            return await self._open(key, timeouts.get("connect", DEFAULT_TIMEOUT))
        except BaseException:
            self._release(pool)
            raise

    async def _wait(self, pool: _Pool, patience: float | None) -> _Connection | None:
        """Queue for a slot: a connection another caller is done with, or None (a slot
        to open a connection with). A caller that stops waiting gives back what it
        was handed meanwhile, so that no slot is lost."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        try:
            async with asyncio.timeout(patience):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()
                if got is None:
                    self._release(pool)
                else:
                    self._checkin(pool, got)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise httpx2.PoolTimeout(
                    f"no free connection within {patience:g} s "
                    f"({self.max_connections} in use)") from None
            raise

    def _checkin(self, pool: _Pool, conn: _Connection) -> None:
        """After a complete answer: to the first waiter, else to the idle list."""
        if not conn.reusable or conn.closed or self._closed:
            conn.close()
            self._release(pool)
            return
        if not _hand_over(pool, conn):
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)

    def _release(self, pool: _Pool) -> None:
        """A slot freed (its connection closed): to the first waiter, else counted off."""
        if not _hand_over(pool, None):
            pool.opened -= 1

    async def _open(self, key: tuple[str, int], patience: float | None) -> _Connection:
        host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(patience):
                _, conn = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"no connection to {host}:{port} within {patience} s") \
                from None
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.popleft().close()
                pool.opened -= 1
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the transport is closed"))
        self._pools.clear()
        await self.fallback.aclose()
