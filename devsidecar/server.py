"""Serve a `DevSidecar` (or any ASGI app) with uvicorn on a port that may be 0."""

from __future__ import annotations

from functools import partial

import anyio
from anyio.abc import TaskStatus

from worker.server.serving import (
    DEV_SIDECAR_MAX_CONNECTIONS,
    bind_socket,
    make_server,
    serve_socket,
)

from .app import DevSidecar
from .asgi import ASGIApp

# Bound how long a stop waits for open requests (the sidecar holds none for long).
GRACEFUL_SHUTDOWN_SECONDS = 2


async def serve_asgi(
    app: ASGIApp, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run uvicorn for `app` until cancelled; `task_status.started(bound_port)`.

    On cancellation the server is asked to exit and awaited (shielded), so
    connections are closed cleanly rather than abandoned.
    """
    sock = bind_socket(host, port)
    bound_port: int = sock.getsockname()[1]
    # The same limits as the worker's ports (head size, timeouts, a connection cap).
    server = make_server(app, DEV_SIDECAR_MAX_CONNECTIONS, interface="asgi3",
                         timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_socket, server, sock, shield=True))
            task_status.started(bound_port)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
    finally:
        sock.close()


async def serve_sidecar(
    sidecar: DevSidecar,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The sidecar's HTTP server on host:port plus `sidecar.run()`, until cancelled."""
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(sidecar.run)
            bound_port: int = await tg.start(serve_asgi, sidecar.asgi, host, port)
            task_status.started(bound_port)
    finally:
        with anyio.CancelScope(shield=True):
            await sidecar.close()
