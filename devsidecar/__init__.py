"""The development sidecar: a faithful subset of daprd's HTTP API, in process.

FOR LAPTOPS AND TESTS ONLY, NEVER PRODUCTION: no persistence, no security
beyond a shared token, one process.

It answers like daprd 1.16-1.19 (as seen end to end: docs/development.md): jobs that really
fire (`POST {app}/job/{name}`), pub/sub with subscription discovery and
delivery (SUCCESS / RETRY / DROP, dead letters), state with ETags,
first-write, TTL and transactions, secrets from local JSON files, service
invocation, health, metadata, API tokens in both directions. Faults can be
injected per API. `/dev/...` paths (not Dapr) expose what it saw.

Layout: `app` (DevSidecar, routing), `asgi` (ASGI types and responses),
`state`, `pubsub`, `jobs`, `cron` and `timeparse` (pure time math),
`secretstores`, `faults`, `records` (inspection data), `server`
(uvicorn).
"""

from worker.clock import Clock, ManualClock

from .app import DevSidecar, SidecarConfig
from .asgi import ASGIApp
from .faults import Faults
from .records import (
    Delivery,
    FailurePolicy,
    Invocation,
    Job,
    Published,
    StateItem,
    StateWrite,
    Trigger,
)
from .server import serve_asgi, serve_sidecar

__all__ = [
    "ASGIApp",
    "Clock",
    "Delivery",
    "DevSidecar",
    "FailurePolicy",
    "Faults",
    "Invocation",
    "Job",
    "ManualClock",
    "Published",
    "SidecarConfig",
    "StateItem",
    "StateWrite",
    "Trigger",
    "serve_asgi",
    "serve_sidecar",
]
