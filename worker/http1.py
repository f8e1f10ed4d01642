"""A lean HTTP/1.1 keep-alive transport under httpx2, for plain-http sidecar calls.

Why our own: a sidecar call is a small request and a small answer on a local
keep-alive connection, and the worker makes two to five of them per event. On
aiohttp's pool (the transport before this one; httpx's own was slower still)
about a quarter of the worker's CPU per task event went into its request and
response machinery; here a request is one buffer written to an asyncio transport
and the answer is parsed by httptools (uvicorn's parser, already a dependency),
with no task, lock or stream object per call (bench/RESULTS.md has the figures).

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
import re
from typing import Any, Final

import httptools
import httpx2

MAX_IDLE: Final = 64  # kept-alive connections per host; more are closed after use
DEFAULT_TIMEOUT: Final = 6.0

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
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[httpx2.Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.closed = False
        self.reusable = True
        self.framed = False  # the answer has a length or chunks; else it ends at EOF
        self.headed = False  # the final answer's head is complete: later fields are trailers
        self.answered = False  # the final answer is complete: any further byte is stray

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.answered:
            # nothing was asked, or it was answered: a server speaking out of turn,
            # whose bytes must never be taken for the next request's answer
            self.close()
            return
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

    async def send(self, head: bytes, body: bytes, read_timeout: float | None) -> httpx2.Response:
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.headers, self.body = [], []
        self.framed = self.headed = self.answered = False
        assert self.transport is not None
        self.transport.write(head + body)  # one send; sidecar bodies are small
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


class Http1Transport(httpx2.AsyncBaseTransport):
    def __init__(self, fallback: httpx2.AsyncBaseTransport) -> None:
        self.fallback = fallback
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if (url.scheme != "http" or request.method == "HEAD"
                or not isinstance(request.stream, httpx2.ByteStream)):
            return await self.fallback.handle_async_request(request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        raw = request.headers.raw
        head = b"".join((request.method.encode("ascii", "replace"), b" ", url.raw_path,
                         b" HTTP/1.1\r\n", *(b"%s: %s\r\n" % kv for kv in raw), b"\r\n"))
        if head.count(b"\n") != len(raw) + 2 or _HEAD.fullmatch(head) is None:
            raise _refuse(request)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        host, port = url.host, url.port or 80
        body = request.content
        conn = await self._connection(host, port, timeouts.get("connect", DEFAULT_TIMEOUT))
        response = await conn.send(head, body, timeouts.get("read", DEFAULT_TIMEOUT))
        idle = self._idle.setdefault((host, port), [])
        if conn.reusable and not conn.closed and not self._closed and len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()
        response.request = request
        return response

    async def _connection(self, host: str, port: int, patience: float | None) -> _Connection:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
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
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await self.fallback.aclose()
