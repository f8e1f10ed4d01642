"""A lean fake daprd for the benchmark: raw ASGI, answers like daprd, counts calls per API.

Only what the worker and the reference app call, with daprd's status codes
(as daprd answers): jobs POST/DELETE 204; state save 204 (first-write on an
existing key, or an ETag mismatch: 409); state GET 200 + value + ETag, or 204
empty when missing; state DELETE 204; publish 204; invoke 200 `{}`;
healthz 204; metadata 200. No scheduler, no delivery: the fake must cost far
less than the worker it feeds, so it parses only what it must.

Bench control: `GET /bench/counts` (calls per API), `POST /bench/reset` (counts),
`POST /bench/clear` (counts and state).
"""

from __future__ import annotations

import json
from collections import Counter

from worker.types import Receive, Scope, Send

_EMPTY: list[tuple[bytes, bytes]] = [(b"content-length", b"0")]
_METADATA = json.dumps({"id": "reminder-worker", "runtimeVersion": "1.16.0",
                        "components": [], "subscriptions": []}).encode()


async def _body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body


class FakeSidecar:
    """The fake daprd. `counts` keys: jobs.schedule, state.get, state.save, publish, ..."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.state: dict[str, tuple[bytes, bytes]] = {}  # key -> (raw JSON value, etag)
        self._etag = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        status, body, headers = 404, b"", _EMPTY
        if path.startswith("/v1.0/state/"):
            status, body, headers = await self._state(method, path[12:], receive)
        elif path.startswith(("/v1.0/jobs/", "/v1.0-alpha1/jobs/")):
            if method == "POST":
                self.counts["jobs.schedule"] += 1
                raw = await _body(receive)
                status = 204 if b"dueTime" in raw or b"schedule" in raw else 400
            elif method == "DELETE":
                self.counts["jobs.delete"] += 1
                status = 204
            else:
                status = 500  # GET of a job: the bench never asks
        elif path.startswith("/v1.0/publish/"):
            self.counts["publish"] += 1
            await _body(receive)
            status = 204
        elif path.startswith("/v1.0/invoke/"):
            self.counts["invoke"] += 1
            await _body(receive)
            status, body = 200, b"{}"
        elif path.startswith("/v1.0/healthz"):
            status = 204
        elif path == "/v1.0/metadata":
            status, body = 200, _METADATA
        elif path == "/bench/counts":
            status, body = 200, json.dumps(self.counts).encode()
        elif path == "/bench/reset":  # counts only
            self.counts.clear()
            status = 204
        elif path == "/bench/clear":  # counts and state
            self.counts.clear()
            self.state.clear()
            status = 204
        if body:
            headers = [(b"content-length", str(len(body)).encode()),
                       (b"content-type", b"application/json"), *headers[1:]]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _state(self, method: str, rest: str, receive: Receive,
                     ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        _store, _, key = rest.partition("/")
        if method == "GET" and key:
            self.counts["state.get"] += 1
            found = self.state.get(key)
            if found is None:
                return 204, b"", _EMPTY
            return 200, found[0], [(b"content-length", b""), (b"etag", found[1])]
        if method == "DELETE" and key:
            self.counts["state.delete"] += 1
            self.state.pop(key, None)
            return 204, b"", _EMPTY
        if method == "POST" and not key:
            self.counts["state.save"] += 1
            items = json.loads(await _body(receive))
            for item in items:  # validate all first: daprd saves a batch or nothing
                old = self.state.get(item["key"])
                first_write = (item.get("options") or {}).get("concurrency") == "first-write"
                etag = item.get("etag")
                if etag is not None and (old is None or old[1].decode() != etag):
                    return 409, b"", _EMPTY
                if etag is None and first_write and old is not None:
                    return 409, b"", _EMPTY
            for item in items:
                self._etag += 1
                value = json.dumps(item["value"], separators=(",", ":")).encode()
                self.state[item["key"]] = (value, str(self._etag).encode())
            return 204, b"", _EMPTY
        return 400, b"", _EMPTY
