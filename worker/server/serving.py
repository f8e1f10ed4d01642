"""uvicorn plumbing shared by the worker and the development sidecar, with limits.

Every port is served by `LimitedProtocol` (uvicorn's httptools protocol plus
bounds uvicorn does not have): a request head (request line and headers) over
`MAX_HEAD_BYTES` or `MAX_HEADERS` is answered 431 without buffering the rest; a
connection that has not sent a whole request `REQUEST_TIMEOUT` seconds after it
opened (or after its request began) is closed (slowloris, idle sockets); an idle
keep-alive connection is closed after `KEEP_ALIVE_SECONDS`; a connection above the
port's cap is answered 503 and closed as soon as it is accepted.

The ops port (`ops_limits`) is probed by the kubelet, which opens a connection per
probe: there idle connections are closed after `OPS_IDLE_SECONDS`, and a connection
above the cap closes the longest-idle connection (one waiting for a request: none
begun, no answer pending, and no byte waiting in its socket) instead of being
refused, so clients that open connections and forget them cannot make a probe fail:
a probe sends its request as soon as it connects, and its bytes wait in the socket
until the loop reads them (refusing the newcomer instead would fail every probe
while the forgotten connections keep coming).

Why a cap at accept and not uvicorn's `limit_concurrency`: that option answers 503
only once a request has been read, so idle or slow connections still each hold a
file handle and memory. Pausing accept would need asyncio internals; closing at
once holds the handle for one loop iteration only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import resource
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import httptools
import structlog
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Message = MutableMapping[str, Any]

# daprd sends a handful of short headers; 64 KiB and 100 headers leave room for
# tracing baggage and bound what one connection can make us buffer.
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
# Loopback callers (daprd, kubelet, Prometheus) send a whole request in
# milliseconds; a few seconds is generous and stops slowloris.
REQUEST_TIMEOUT: Final = 5.0
KEEP_ALIVE_SECONDS: Final = 5  # uvicorn's default, named: idle keep-alive is closed after it
# After a 431 the rest of the request is read and discarded this long, so the
# client sees the answer instead of a reset.
LINGER_SECONDS: Final = 1.0
# Each port's accept loop takes at most this many connections per loop iteration
# (asyncio uses the listen backlog for both); bounds file handles between checks.
BACKLOG: Final = 64
# Connection caps per port: bodies of up to 1 MiB are buffered per request, so
# the app port's cap bounds memory too (the sidecar gate lets 32 calls through).
APP_MAX_CONNECTIONS: Final = 128
OPS_MAX_CONNECTIONS: Final = 32
DEV_SIDECAR_MAX_CONNECTIONS: Final = 512
# File handles the process needs besides its ports: the sidecar client's pool (64),
# listening sockets, logs, the interpreter.
RESERVED_FDS: Final = 128
MIN_CAP: Final = 4
# The ops port: an idle connection (nothing sent, or keep-alive after an answer) is
# closed after this long (the kubelet and Prometheus send at once).
OPS_IDLE_SECONDS: Final = 2.0
ACCEPT_ERROR_LOG_INTERVAL: Final = 10.0  # seconds between "out of file handles" lines

log = structlog.get_logger("worker")


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    request_timeout: float = REQUEST_TIMEOUT
    linger: float = LINGER_SECONDS
    keep_alive: float = KEEP_ALIVE_SECONDS
    # At the cap: close the longest-idle connection instead of refusing the newcomer
    # (which is refused when none is idle).
    evict_idle: bool = False


def ops_limits(max_connections: int) -> Limits:
    """The ops port's: idle connections go after OPS_IDLE_SECONDS and give way at the cap."""
    return Limits(max_connections, request_timeout=OPS_IDLE_SECONDS,
                  keep_alive=OPS_IDLE_SECONDS, evict_idle=True)


class LimitedConfig(uvicorn.Config):
    """uvicorn.Config carrying the port's `Limits` to `LimitedProtocol`."""

    def __init__(self, app: Any, limits: Limits, **kwargs: Any) -> None:
        self.limits = limits
        # proxy_headers off: no X-Forwarded-* rewriting; nothing here reads the
        # client's address, and the callers are the local sidecar and probes.
        for name, value in (("lifespan", "off"), ("access_log", False), ("ws", "none"),
                            ("log_level", "warning"), ("proxy_headers", False)):
            kwargs.setdefault(name, value)
        # log_config None: uvicorn's records go to the root logger, which worker.logs
        # renders with structlog (uvicorn's own config would print plain text).
        # uvicorn takes whole seconds; the protocol sets the exact keep-alive itself.
        super().__init__(app, http=LimitedProtocol, backlog=BACKLOG,
                         timeout_keep_alive=max(1, round(limits.keep_alive)), log_config=None,
                         **kwargs)


class _HeadTooLarge(Exception):
    pass


_REFUSE_431: Final = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                      b"content-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n"
                      b"\r\nrequest header fields too large\n")
_REFUSE_503: Final = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                      b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections")
_REFUSE_408: Final = (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                      b"connection: close\r\n\r\n")


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head bound, a request timer and a connection cap."""

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = (config.limits if isinstance(config, LimitedConfig)
                               else Limits(APP_MAX_CONNECTIONS))
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._head_bytes = 0
        self._header_count = 0
        self._heads_done = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self.timeout_keep_alive = self.limits.keep_alive  # type: ignore[assignment]
        self._idle_since = self.loop.time()  # waiting for a request since

    # -- connection -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict_idle():
            self._refused = True
            self.transport = transport
            transport.write(_REFUSE_503)
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self.limits.request_timeout)

    def _evict_idle(self) -> bool:
        """With `Limits.evict_idle`, close the longest-idle connection of this port;
        False when none is idle (or eviction is off)."""
        if not self.limits.evict_idle:
            return False
        oldest: LimitedProtocol | None = None
        for other in self.connections:
            if (isinstance(other, LimitedProtocol) and other._waiting()
                    and (oldest is None or other._idle_since < oldest._idle_since)):
                oldest = other
        if oldest is None:
            return False
        oldest._disarm()
        oldest.transport.close()
        return True

    def _waiting(self) -> bool:
        """Waiting for a request: none begun, no answer pending, nothing sent and not
        read yet (idle since `_idle_since`)."""
        return (not self._refused and not self.transport.is_closing()
                and self._in_head and not self._head_bytes and not self.pipeline
                and (self.cycle is None or self.cycle.response_complete)
                and not _unread_bytes(self.transport))

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused and self.flow is None:  # refused at accept: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: read and discard
        if self._in_head:
            self._head_bytes += len(data)
            over = self._head_bytes - self.limits.max_head_bytes
            if over > 0:
                # Feed only what fits: if the head ends within it, go on with the rest.
                heads, fits = self._heads_done, len(data) - over
                if not self._feed(data[:fits]):
                    return
                if self._heads_done == heads:
                    self._refuse_head()
                    return
                if fits < len(data):
                    self.data_received(data[fits:])
                return
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when the connection is being refused."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return True  # no upgrade is served (ws="none"): answered as plain HTTP
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return False
        return True

    def _refuse_head(self) -> None:
        self._refused = True
        self._disarm()
        self.transport.write(_REFUSE_431)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(self.limits.linger, self.transport.close)

    # -- parser callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_count = True, 0
        if self._timer is None:
            self._arm(self.limits.request_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head, self._head_bytes = True, 0

    # -- the request timer -------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._request_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _request_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes:  # a request began and never finished its head
            self.transport.write(_REFUSE_408)
        self.transport.close()  # a running handler sees http.disconnect


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the peer sent that wait in the socket, unread (1 when that cannot be told:
    such a connection is never taken for an idle one)."""
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 1
    return int(struct.unpack("i", raw)[0])


class Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the embedding process owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: Any, max_connections: int, *, limits: Limits | None = None,
                **options: Any) -> Server:
    """A uvicorn server for `app` with this module's limits (`limits` None: the default
    ones with a cap of `max_connections`; `options`: uvicorn.Config)."""
    return Server(LimitedConfig(app, limits or Limits(max_connections), **options))


async def serve_socket(server: Server, sock: socket.socket, *, shield: bool = False,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve on `sock` until the server exits (`server.should_exit`); started once it
    listens. `shield`: a cancellation does not abandon open connections (set
    should_exit to stop). RuntimeError when the server ends before it started."""
    ended = False

    async def run() -> None:
        nonlocal ended
        try:
            with anyio.CancelScope(shield=shield):
                await server.serve(sockets=[sock])
        finally:
            ended = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not server.started:
            if ended:
                raise RuntimeError(f"server on {sock.getsockname()} did not start")
            await anyio.sleep(0.005)
        task_status.started()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off on accepted sockets only when
    # sock.proto == IPPROTO_TCP; with proto 0 every two-write response (headers,
    # then body) waits ~40 ms for the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_caps(nofile: int) -> tuple[int, int]:
    """(app port, ops port) connection caps that fit `nofile` open files.

    Each port may also hold up to BACKLOG just-accepted connections before its cap
    closes them; what is left after RESERVED_FDS is split 4:1.
    """
    budget = max(0, nofile - RESERVED_FDS - 2 * BACKLOG)
    return (max(MIN_CAP, min(APP_MAX_CONNECTIONS, budget * 4 // 5)),
            max(MIN_CAP, min(OPS_MAX_CONNECTIONS, budget // 5)))


class AcceptErrorFilter:
    """A loop exception handler: "out of file handles" on accept is logged once per
    interval with a count (asyncio before 3.13 logs it with a traceback for every
    retry, millions of lines a minute); everything else goes to the default handler."""

    def __init__(self, interval: float = ACCEPT_ERROR_LOG_INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.monotonic = monotonic
        self.suppressed = 0
        self.last: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE,
                                                      errno.ENOBUFS, errno.ENOMEM):
            now = self.monotonic()
            if self.last is not None and now - self.last < self.interval:
                self.suppressed += 1
                return
            log.error("cannot accept connections: out of file handles or memory",
                      error=exc.strerror, suppressed=self.suppressed)
            self.last, self.suppressed = now, 0
            return
        loop.default_exception_handler(context)


def install_accept_error_filter() -> None:
    asyncio.get_running_loop().set_exception_handler(AcceptErrorFilter())


async def lifespan(receive: Callable[[], Awaitable[Message]],
                   send: Callable[[Message], Awaitable[None]]) -> None:
    """Answer the ASGI lifespan protocol (nothing to set up or tear down)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
