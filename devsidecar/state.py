"""In-memory state stores with daprd's HTTP answers (ETags, first-write, TTL, transactions).

Keys are stored as `{app_id}||{key}` like daprd; ETags are a counter.
Every operation runs without an await, so each is atomic on the event loop.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from worker.clock import Clock

from .asgi import ApiError, Request, Response, empty, json_response
from .records import StateItem, StateWrite
from .timeparse import format_rfc3339

_STORE_TYPE = "state.in-memory"
_MAX_TTL = 2**31 - 1


@dataclass(frozen=True, slots=True)
class _Write:
    key: str  # full key, with the app id prefix
    value_json: bytes | None  # None: delete
    etag: str | None
    first_write: bool
    ttl: timedelta | None


class StateStores:
    def __init__(self, names: tuple[str, ...], app_id: str, clock: Clock, *,
                 first_write_conflict_status: int = 409,
                 sticky_first_write: bool = True,
                 capabilities: tuple[str, ...] = ("ETAG", "TRANSACTIONAL", "TTL"),
                 writes: list[StateWrite] | None = None) -> None:
        self._first_write_status = first_write_conflict_status
        self._sticky_first_write = sticky_first_write
        self._capabilities = capabilities
        self._stores: dict[str, dict[str, StateItem]] = {name: {} for name in names}
        self._app_id = app_id
        self._prefix = f"{app_id}||"
        self._clock = clock
        self._etags = itertools.count(1)
        self.writes: list[StateWrite] = [] if writes is None else writes  # in the order applied

    # ---- inspection

    def snapshot(self, store: str) -> dict[str, StateItem]:
        items = self._store(store)
        now = self._clock()
        plen = len(self._prefix)
        return {
            k[plen:] if k.startswith(self._prefix) else k: item
            for k, item in items.items()
            if item.expiry is None or item.expiry > now
        }

    # ---- HTTP handlers

    def save(self, request: Request, store: str) -> Response:
        items = self._store(store)
        body = request.json()
        if not isinstance(body, list):
            raise ApiError(
                400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: expected an array"
            )
        writes = [self._parse_write(entry, upsert=True) for entry in body]
        try:
            self._apply(store, items, writes)
        except _Mismatch as exc:
            raise ApiError(
                self._status(exc), "ERR_STATE_SAVE",
                f"failed saving state in state store {store}: {exc}",
            ) from None
        return empty()

    def get(self, request: Request, store: str, key: str) -> Response:
        items = self._store(store)
        item = self._live(items, self._full_key(key))
        if item is None:
            return empty()
        headers = [(b"content-type", b"application/json"), (b"etag", item.etag.encode())]
        if item.expiry is not None:
            headers.append((b"metadata.ttlexpiretime", format_rfc3339(item.expiry).encode()))
        return Response(200, item.value_json, headers)

    def bulk_get(self, request: Request, store: str) -> Response:
        items = self._store(store)
        body = request.json()
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError(400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: keys")
        out: list[dict[str, Any]] = []
        for key in keys:
            item = self._live(items, self._full_key(key))
            if item is None:
                out.append({"key": key})
            else:
                out.append({"key": key, "data": json.loads(item.value_json), "etag": item.etag})
        return json_response(out)

    def delete(self, request: Request, store: str, key: str) -> Response:
        items = self._store(store)
        etag = request.headers.get("if-match") or None
        write = _Write(self._full_key(key), None, etag, first_write=False, ttl=None)
        try:
            self._apply(store, items, [write])
        except _Mismatch as exc:
            raise ApiError(
                409, "ERR_STATE_DELETE", f"failed deleting state with key {key}: {exc}"
            ) from None
        return empty()

    def transaction(self, request: Request, store: str) -> Response:
        items = self._store(store)
        body = request.json()
        operations = body.get("operations") if isinstance(body, dict) else None
        if not isinstance(operations, list):
            raise ApiError(
                400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: operations"
            )
        writes: list[_Write] = []
        for op in operations:
            if not isinstance(op, dict) or not isinstance(op.get("request"), dict):
                raise ApiError(
                    400, "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: operation"
                )
            kind = op.get("operation")
            if kind not in ("upsert", "delete"):
                raise ApiError(
                    400, "ERR_NOT_SUPPORTED_STATE_OPERATION", f"operation type {kind} not supported"
                )
            writes.append(self._parse_write(op["request"], upsert=kind == "upsert"))
        try:
            self._apply(store, items, writes)
        except _Mismatch as exc:
            raise ApiError(
                self._status(exc), "ERR_STATE_TRANSACTION",
                f"error while executing state transaction: {exc}",
            ) from None
        return empty()

    # ---- internals

    def _status(self, mismatch: _Mismatch) -> int:
        if mismatch.status is not None:
            return mismatch.status
        return self._first_write_status if mismatch.first_write else 409

    def _store(self, store: str) -> dict[str, StateItem]:
        if not self._stores:
            raise ApiError(500, "ERR_STATE_STORE_NOT_CONFIGURED", "state store is not configured")
        items = self._stores.get(store)
        if items is None:
            raise ApiError(400, "ERR_STATE_STORE_NOT_FOUND", f"state store {store} is not found")
        return items

    def _full_key(self, key: str) -> str:
        if "||" in key:
            raise ApiError(
                400, "ERR_MALFORMED_REQUEST", f"input key/keyPrefix '{key}' can't contain '||'"
            )
        return self._prefix + key

    def _live(self, items: dict[str, StateItem], full_key: str) -> StateItem | None:
        item = items.get(full_key)
        if item is not None and item.expiry is not None and item.expiry <= self._clock():
            del items[full_key]
            return None
        return item

    def _parse_write(self, entry: Any, *, upsert: bool) -> _Write:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
            raise ApiError(
                400,
                "ERR_MALFORMED_REQUEST",
                "failed deserializing HTTP body: each item needs a key",
            )
        full_key = self._full_key(entry["key"])
        raw_etag = entry.get("etag")
        etag = str(raw_etag) if raw_etag not in (None, "") else None
        raw_options = entry.get("options")
        options: dict[Any, Any] = raw_options if isinstance(raw_options, dict) else {}
        first_write = options.get("concurrency") == "first-write"
        ttl: timedelta | None = None
        metadata = entry.get("metadata")
        if isinstance(metadata, dict) and "ttlInSeconds" in metadata:
            ttl = _parse_ttl(metadata["ttlInSeconds"])
        value_json = (
            json.dumps(entry.get("value"), separators=(",", ":")).encode() if upsert else None
        )
        return _Write(full_key, value_json, etag, first_write, ttl)

    def _apply(self, store: str, items: dict[str, StateItem], writes: list[_Write]) -> None:
        """Check every write against the current (staged) values, then apply all or none
        (and log what was applied in `writes`)."""
        now = self._clock()
        staged: dict[str, StateItem | None] = {}
        for write in writes:
            current = staged[write.key] if write.key in staged else self._live(items, write.key)
            short = write.key[len(self._prefix) :]
            if write.etag is not None:
                if current is None or current.etag != write.etag:
                    raise _Mismatch(f"possible etag mismatch for key {short}")
            elif write.first_write and write.value_json is not None and current is not None:
                raise _Mismatch(f"first-write: key {short} already exists", first_write=True)
            elif (self._sticky_first_write and write.value_json is not None
                  and current is not None and current.first_write):
                # daprd 1.18 with Redis: the key's hash remembers first-write, and its
                # script then fails a save without an ETag (seen end to end, a 500).
                raise _Mismatch(f"failed to set key {short}: written with first-write, "
                                "saved without an ETag", status=500)
            if write.value_json is None:
                staged[write.key] = None
            else:
                expiry = None if write.ttl is None else now + write.ttl
                sticky = write.first_write or (current is not None and current.first_write)
                staged[write.key] = StateItem(write.value_json, str(next(self._etags)), expiry,
                                              sticky)
        plen = len(self._prefix)
        for key, item in staged.items():
            if item is None:
                items.pop(key, None)
                self.writes.append(StateWrite(store, key[plen:], None, None, now))
            else:
                items[key] = item
                self.writes.append(StateWrite(store, key[plen:], item.value_json, item.etag, now))

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "type": _STORE_TYPE,
                "version": "v1",
                "capabilities": list(self._capabilities),
            }
            for n in self._stores
        ]


def _parse_ttl(raw: Any) -> timedelta | None:
    """`ttlInSeconds` as PostgreSQL v2 reads it (components-contrib ParseTTL): 0 and -1 mean
    no expiry (and clear an earlier one); below -1, above 2**31-1 or not an integer fails
    the save with 500. Metadata values are strings: another JSON type is a 400."""
    if not isinstance(raw, str):
        raise ApiError(400, "ERR_MALFORMED_REQUEST",
                       "failed deserializing HTTP body: metadata values are strings")
    if raw == "":
        return None
    try:
        seconds = int(raw, 10)
    except ValueError:
        seconds = None
    if seconds is None or not -1 <= seconds <= _MAX_TTL or raw.strip() != raw or "_" in raw:
        raise ApiError(500, "ERR_STATE_SAVE", "failed saving state: error parsing TTL: incorrect "
                       "value for metadata 'ttlInSeconds': must be -1 or greater")
    return timedelta(seconds=seconds) if seconds > 0 else None


class _Mismatch(Exception):
    def __init__(self, message: str, *, first_write: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.first_write = first_write
        self.status = status
