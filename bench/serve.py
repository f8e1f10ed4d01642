"""Serve one benchmark app under uvicorn (the daemon's own server set-up), pinned to a core.

    python -m bench.serve KIND --port P --sidecar-port S --cpu N [--client C]

KIND: fake (the fake daprd), hello (B), reference (S), noop (R0), answer (A),
spin (W, --spin-us), worker.
The fake runs on uvloop with httptools so that it stays far cheaper than the
worker; the others get the daemon's set-up (anyio.run, uvicorn's "auto" parser).
--client picks the worker's HTTP client: default (worker.dapr.sidecar.make_client),
httpx, httpx+sniffio, httpx2, httpx+aiohttp, httpx2+aiohttp. `httpx` hides
sniffio (as on an install without it); every other kind keeps it importable.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

CLIENTS = ("default", "httpx", "httpx+sniffio", "httpx2", "httpx+aiohttp", "httpx2+aiohttp")


def make_variant(name: str) -> Any:
    """An AsyncClient with the limits and timeouts of worker.dapr.sidecar.make_client."""
    from worker.dapr import sidecar

    if name == "default":
        return sidecar.make_client()
    conc = sidecar.DEFAULT_CONCURRENCY * 2
    if name.startswith("httpx2"):
        import httpx2 as lib
    else:
        import httpx as lib  # type: ignore[no-redef]
    limits = lib.Limits(max_connections=conc, max_keepalive_connections=conc)
    timeout = lib.Timeout(10.0, connect=2.0)
    transport = None
    if name == "httpx+aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    elif name == "httpx2+aiohttp":
        from httpx_aiohttp.httpx2 import AiohttpTransport as Aiohttp2Transport

        transport = Aiohttp2Transport(limits=limits)
    return lib.AsyncClient(timeout=timeout, limits=limits, transport=transport)


async def serve(args: argparse.Namespace) -> None:
    from worker.commands.daemon import make_worker_server
    from worker.logs import configure
    from worker.server.serving import bind_socket
    from worker.settings import load_settings

    settings = load_settings({"DAPR_HTTP_PORT": str(args.sidecar_port),
                              "REMINDER_PORT": str(args.port)})
    configure(settings.log_format, settings.log_level)  # as the CLI does: JSON, info
    app: Any
    if args.kind == "fake":
        from bench.fakesidecar import FakeSidecar

        app = FakeSidecar()
    elif args.kind == "hello":
        from bench.apps import hello

        app = hello
    elif args.kind == "reference":
        from bench.apps import reference_app

        app = reference_app(settings.sidecar_url)
    elif args.kind in ("answer", "spin"):
        from bench.apps import answer_app

        app = answer_app(settings, args.spin_us if args.kind == "spin" else 0.0)
    elif args.kind == "noop":
        from bench.apps import noop_worker_app

        app = noop_worker_app(settings)
    else:
        from bench.apps import worker_app

        app = worker_app(settings, make_variant(args.client))
    server = make_worker_server(app, 100_000)  # wrk's connections are not an attack
    if args.kind == "fake" or args.http != "auto":  # the fake always takes the fastest parser
        server.config.http = "httptools" if args.kind == "fake" else args.http
    await server.serve([bind_socket("127.0.0.1", args.port)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("fake", "hello", "reference", "noop", "answer", "spin",
                                     "worker"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sidecar-port", type=int, default=3500)
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--client", choices=CLIENTS, default="default")
    p.add_argument("--spin-us", type=float, default=0.0,
                   help="spin: CPU microseconds the service burns per delivery")
    p.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                   help="uvicorn's HTTP parser (auto: what the daemon gets)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (the fake always does)")
    args = p.parse_args()
    if args.client == "httpx":
        sys.modules["sniffio"] = None  # type: ignore[assignment]  # import fails, as uninstalled
    os.sched_setaffinity(0, {args.cpu})
    import anyio

    uvloop = args.uvloop or args.kind == "fake"
    anyio.run(serve, args, backend_options={"use_uvloop": uvloop})


if __name__ == "__main__":
    main()
