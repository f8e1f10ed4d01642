"""uvicorn plumbing shared by the worker and the development sidecar."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]


class Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the embedding process owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
