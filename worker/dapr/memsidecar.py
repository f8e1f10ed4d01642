"""An in-memory sidecar: the calls `Service` makes (`types.SidecarAPI`), no network.

For tests and experiments (shipped in the package, like the broker fakes of task
queues): state with ETags, first-write and TTLs, one-shot jobs, publish and
service invocation, each call counted. Values are kept as JSON text, so what the
service saves must be JSON and comes back as a fresh copy, as from a real store.

Faults: `fail(api, exc, times)` makes the next `times` calls of one API
("state.get", "state.save", "state.delete", "jobs.schedule", "jobs.delete",
"publish", "invoke") raise `exc` instead of acting. `invoke_status` answers
service invocations: a 4xx other than 409 raises PermanentSidecarError like
`sidecar.Sidecar`.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.errors import Conflict, PermanentSidecarError


@dataclass
class StoredItem:
    text: str  # the value as JSON
    etag: str
    ttl_seconds: int | None = None  # as last set; -1 (persist) clears it

    @property
    def value(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True)
class ScheduledJob:
    due_time: datetime
    data: Any


@dataclass(frozen=True)
class Invocation:
    app_id: str
    method: str
    body: Any


class MemorySidecar:
    def __init__(self, invoke_status: Callable[[Invocation], int] = lambda _: 200) -> None:
        self.state: dict[tuple[str, str], StoredItem] = {}
        self.jobs: dict[str, ScheduledJob] = {}
        self.published: list[tuple[str, str, dict[str, Any]]] = []
        self.invocations: list[Invocation] = []
        self.invoke_status = invoke_status
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, list[BaseException]] = {}
        self._etags = itertools.count(1)

    def fail(self, api: str, exc: BaseException, times: int = 1) -> None:
        """The next `times` calls of `api` raise `exc`."""
        self._faults.setdefault(api, []).extend([exc] * times)

    def value(self, store: str, key: str) -> Any:
        """The saved value of `key` (KeyError when missing)."""
        return self.state[store, key].value

    def _enter(self, api: str) -> None:
        self.calls[api] += 1
        pending = self._faults.get(api)
        if pending:
            raise pending.pop(0)

    # -- the SidecarAPI -----------------------------------------------------
    async def state_get(self, store: str, key: str) -> tuple[Any, str | None] | None:
        self._enter("state.get")
        item = self.state.get((store, key))
        return None if item is None else (item.value, item.etag)

    async def state_get_many(self, store: str,
                             keys: list[str]) -> list[tuple[Any, str | None] | None]:
        self._enter("state.get")
        out: list[tuple[Any, str | None] | None] = []
        for key in keys:
            item = self.state.get((store, key))
            out.append(None if item is None else (item.value, item.etag))
        return out

    async def state_save(
        self, store: str, key: str, value: Any, *, etag: str | None = None,
        first_write: bool = False, ttl_seconds: int | None = None,
    ) -> None:
        self._enter("state.save")
        text = json.dumps(value)  # fails here, as at the real store, if it is not JSON
        current = self.state.get((store, key))
        if etag is not None and (current is None or current.etag != etag):
            raise Conflict(f"state: etag mismatch for {key}")
        if etag is None and first_write and current is not None:
            raise Conflict(f"state: {key} exists (first-write)")
        ttl = current.ttl_seconds if current is not None and ttl_seconds is None else ttl_seconds
        self.state[store, key] = StoredItem(text, str(next(self._etags)),
                                            None if ttl == -1 else ttl)

    async def state_delete(self, store: str, key: str, *, etag: str | None = None) -> None:
        self._enter("state.delete")
        current = self.state.get((store, key))
        if etag is not None and current is not None and current.etag != etag:
            raise Conflict(f"state: etag mismatch for {key}")
        self.state.pop((store, key), None)

    async def job_schedule(self, name: str, due_time: datetime, data: Any) -> None:
        self._enter("jobs.schedule")
        self.jobs[name] = ScheduledJob(due_time, json.loads(json.dumps(data)))

    async def job_delete(self, name: str) -> None:
        self._enter("jobs.delete")
        self.jobs.pop(name, None)

    async def publish(self, pubsub: str, topic: str, envelope: dict[str, Any]) -> None:
        self._enter("publish")
        self.published.append((pubsub, topic, json.loads(json.dumps(envelope))))

    async def invoke(self, app_id: str, method: str, body: Any,
                     headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        self._enter("invoke")
        call = Invocation(app_id, method, json.loads(json.dumps(body)))
        self.invocations.append(call)
        status = self.invoke_status(call)
        if 400 <= status < 500 and status != 409:
            raise PermanentSidecarError("invoke", status, "refused")
        return status, None
