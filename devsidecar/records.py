"""What the sidecar saw and holds, as plain frozen data for tests to inspect.

Bodies are kept as bytes and parsed on access, so every reader gets its own
copy and cannot change the sidecar's records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .timeparse import format_rfc3339


@dataclass(frozen=True, slots=True)
class Published:
    """One message published (or dead-lettered) on a topic."""

    pubsub: str
    topic: str
    content_type: str
    envelope_json: bytes
    time: datetime
    raw_payload: bytes | None = None  # set when published with metadata.rawPayload=true
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def envelope(self) -> dict[str, Any]:
        """The CloudEvent as delivered (a fresh dict on every access)."""
        value: dict[str, Any] = json.loads(self.envelope_json)
        return value

    @property
    def event_id(self) -> str:
        return str(self.envelope.get("id", ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "pubsub": self.pubsub,
            "topic": self.topic,
            "contentType": self.content_type,
            "envelope": self.envelope,
            "time": format_rfc3339(self.time),
            "rawPayload": self.raw_payload is not None,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class Invocation:
    """One service invocation received by the sidecar."""

    app_id: str
    method: str
    verb: str
    header_items: tuple[tuple[str, str], ...]
    body: bytes
    query: str
    time: datetime
    forwarded: bool

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.header_items)

    @property
    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        return {
            "appId": self.app_id,
            "method": self.method,
            "verb": self.verb,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
            "json": self.json,
            "query": self.query,
            "time": format_rfc3339(self.time),
            "forwarded": self.forwarded,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to deliver a message to the app.

    `answer`: the app's status string (`SUCCESS`, `RETRY`, `DROP`, any other
    string as sent), `SUCCESS` for a 2xx without one, `HTTP_<code>` for a
    non-2xx, `CONNECTION_ERROR`. `outcome`: `done`, `retry` or `drop`.
    """

    pubsub: str
    topic: str
    route: str
    event_id: str
    status_code: int | None
    answer: str
    outcome: str
    attempt: int
    time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "pubsub": self.pubsub,
            "topic": self.topic,
            "route": self.route,
            "eventId": self.event_id,
            "statusCode": self.status_code,
            "answer": self.answer,
            "outcome": self.outcome,
            "attempt": self.attempt,
            "time": format_rfc3339(self.time),
        }


@dataclass(frozen=True, slots=True)
class Trigger:
    """One `POST /job/{name}` attempt. `outcome`: `done`, `retry` or `lost`."""

    name: str
    status_code: int | None
    outcome: str
    attempt: int
    time: datetime
    traceparent: str = ""  # sent with the trigger, as daprd does

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "statusCode": self.status_code,
            "outcome": self.outcome,
            "attempt": self.attempt,
            "time": format_rfc3339(self.time),
            "traceparent": self.traceparent,
        }


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """`constant` (retry every `interval`, at most `max_retries`, None = forever) or `drop`."""

    kind: str = "constant"
    interval: timedelta = timedelta(seconds=1)
    max_retries: int | None = 3

    def to_json(self) -> dict[str, Any]:
        if self.kind == "drop":
            return {"drop": {}}
        constant: dict[str, Any] = {"interval": f"{self.interval.total_seconds():g}s"}
        if self.max_retries is not None:
            constant["maxRetries"] = self.max_retries
        return {"constant": constant}


@dataclass(frozen=True, slots=True)
class Job:
    """A live job, as `DevSidecar.jobs()` shows it."""

    name: str
    due_time: datetime  # the next fire time
    data_json: bytes | None  # None: scheduled without data
    schedule: str | None
    repeats: int | None
    ttl: datetime | None
    failure_policy: FailurePolicy
    fired: int
    due_time_text: str | None  # as given, echoed by GET

    @property
    def data(self) -> Any:
        return None if self.data_json is None else json.loads(self.data_json)

    def to_api_json(self) -> dict[str, Any]:
        """The body of `GET /v1.0/jobs/{name}` (unset fields left out, like protojson)."""
        out: dict[str, Any] = {"name": self.name}
        if self.schedule is not None:
            out["schedule"] = self.schedule
        if self.due_time_text is not None:
            out["dueTime"] = self.due_time_text
        if self.repeats is not None:
            out["repeats"] = self.repeats
        if self.ttl is not None:
            out["ttl"] = format_rfc3339(self.ttl)
        if self.data_json is not None:
            # daprd 1.18 answers the data as the Any it stores (seen end to end)
            out["data"] = {"@type": VALUE_TYPE_URL, "value": self.data}
        out["failurePolicy"] = self.failure_policy.to_json()
        return out

    def to_json(self) -> dict[str, Any]:
        out = self.to_api_json()
        out["nextFireTime"] = format_rfc3339(self.due_time)
        out["fired"] = self.fired
        return out


VALUE_TYPE_URL = "type.googleapis.com/google.protobuf.Value"


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One key saved or deleted by a state call that succeeded (a transaction: one per key).

    `time` is the clock when the write landed: a test can tell what a reader that
    came before it could have seen.
    """

    store: str
    key: str  # as the app gave it, without the app id prefix
    value_json: bytes | None  # None: deleted
    etag: str | None  # None: deleted
    time: datetime

    @property
    def value(self) -> Any:
        return None if self.value_json is None else json.loads(self.value_json)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "key": self.key,
            "value": self.value,
            "etag": self.etag,
            "time": format_rfc3339(self.time),
        }


@dataclass(frozen=True, slots=True)
class StateItem:
    value_json: bytes
    etag: str
    expiry: datetime | None
    # Written with first-write concurrency (Dapr's Redis store keeps this in the key's
    # hash, and from then on refuses a save without an ETag).
    first_write: bool = False

    @property
    def value(self) -> Any:
        return json.loads(self.value_json)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "etag": self.etag,
            "expiry": None if self.expiry is None else format_rfc3339(self.expiry),
        }
