"""The seam types, named once: ASGI callables and the sidecar the service uses
(the clock's type is `worker.clock.Clock`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import datetime
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SidecarAPI(Protocol):
    """What `Service` asks of the sidecar: `sidecar.Sidecar` over HTTP, or
    `memsidecar.MemorySidecar` in memory. Errors are those of `worker.errors`."""

    async def state_get(self, store: str, key: str) -> tuple[Any, str | None] | None: ...

    async def state_get_many(self, store: str,
                             keys: list[str]) -> list[tuple[Any, str | None] | None]: ...

    async def state_save(
        self, store: str, key: str, value: Any, *, etag: str | None = None,
        first_write: bool = False, ttl_seconds: int | None = None,
    ) -> None: ...

    async def state_delete(self, store: str, key: str, *, etag: str | None = None) -> None: ...

    async def job_schedule(self, name: str, due_time: datetime, data: Any) -> None: ...

    async def job_delete(self, name: str) -> None: ...

    async def publish(self, pubsub: str, topic: str, envelope: dict[str, Any]) -> None: ...

    async def invoke(self, app_id: str, method: str, body: Any,
                     headers: Mapping[str, str] | None = None) -> tuple[int, Any]: ...
