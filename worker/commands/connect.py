"""The composition root: settings, clock and transport in, a connected worker out.

The daemon and `--replay` build the same object graph here: one HTTP client, the
sidecar client on it, metrics on a registry passed in, and, once the sidecar has
proved it can run this worker and the secrets are resolved, the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import anyio
import httpx2
import structlog
from prometheus_client import CollectorRegistry

from worker.clock import Clock, system_clock
from worker.dapr.sidecar import Sidecar, make_client
from worker.errors import PermanentSidecarError, SettingsError, StartupError, TransientError
from worker.metrics import Metrics
from worker.service import Service
from worker.settings import Settings, env_name, with_secrets

SIDECAR_POLL: Final = 0.5
CLOSE_PATIENCE: Final = 2.0  # seconds a (cancelled) worker waits for its client to close
log = structlog.get_logger("worker")


@dataclass
class Connection:
    """The worker's parts that talk to the sidecar; `settings` are resolved by `ready`."""

    settings: Settings
    sidecar: Sidecar
    metrics: Metrics
    clock: Clock

    async def ready(self, *, patience: float = 0.0) -> tuple[str, Service]:
        """Check the sidecar (StartupError if it cannot run this worker), resolve the
        `secret:` settings, and build the service: (jobs API path, service)."""
        jobs_api = await check_sidecar(self.sidecar, patience=patience)
        self.settings = await resolve_secrets(self.settings, self.sidecar, patience=patience)
        return jobs_api, Service(self.settings, self.sidecar, self.metrics, self.clock)


@asynccontextmanager
async def connect(
    settings: Settings, *, clock: Clock = system_clock,
    registry: CollectorRegistry | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> AsyncIterator[Connection]:
    """The one place the worker is wired. `registry` None: a private one without the
    process collectors (replay); `transport` None: worker.dapr.http1's (tests pass one)."""
    metrics = (Metrics.create(CollectorRegistry(), process=False) if registry is None
               else Metrics.create(registry))
    token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    client = make_client(transport, timeout=settings.sidecar_timeout)
    await client.__aenter__()
    try:
        sidecar = Sidecar(settings.sidecar_url, client, metrics, api_token=token)
        yield Connection(settings, sidecar, metrics, clock)
    finally:
        # Shielded: a cancelled worker still closes its connection pool (unclosed
        # sockets leak and warn when collected); bounded, so a close
        # that waits on a peer can never hold a cancelled worker.
        with anyio.move_on_after(CLOSE_PATIENCE, shield=True):
            await client.__aexit__(None, None, None)


async def resolve_secrets(settings: Settings, sidecar: Sidecar, *,
                          patience: float = 0.0) -> Settings:
    """Replace `secret:` settings by their values; a failing secret store (5xx, no
    answer) is retried for `patience` seconds before it is a SettingsError."""
    refs = settings.secret_refs()
    if not refs:
        return settings
    assert settings.secret_store is not None
    resolved: dict[str, str] = {}
    deadline = anyio.current_time() + patience
    for field_name, (name, key) in refs.items():
        while True:
            try:
                values = await sidecar.secret(settings.secret_store, name)
                break
            except TransientError as exc:
                if anyio.current_time() >= deadline:
                    raise SettingsError(
                        f"{env_name(field_name)}: cannot read secret {name}: {exc}") from None
                log.warning("secret store not answering; retrying", secret=name, error=str(exc))
                await anyio.sleep(SIDECAR_POLL)
            except PermanentSidecarError as exc:
                raise SettingsError(
                    f"{env_name(field_name)}: cannot read secret {name}: {exc}") from None
        if key not in values:
            raise SettingsError(f"{env_name(field_name)}: secret {name} has no key {key}")
        resolved[field_name] = values[key]
    return with_secrets(settings, resolved)


async def check_sidecar(sidecar: Sidecar, *, patience: float = 0.0) -> str:
    """The jobs path of a sidecar that can run this worker (token accepted, daprd 1.16 or
    later); its metadata failing (5xx, no answer) is retried for `patience` seconds.
    Raises StartupError (SettingsError for a rejected DAPR_API_TOKEN)."""
    deadline = anyio.current_time() + patience
    while True:
        try:
            return await sidecar.choose_jobs_api()
        except TransientError as exc:
            if anyio.current_time() >= deadline:
                raise StartupError(f"the Dapr sidecar's metadata does not answer: {exc}") from None
            log.warning("sidecar metadata not answering; retrying", error=str(exc))
            await anyio.sleep(SIDECAR_POLL)
        except PermanentSidecarError as exc:
            raise StartupError(f"the Dapr sidecar refuses its metadata: {exc}") from None
