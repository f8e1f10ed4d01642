"""In-memory pub/sub: publish, subscription discovery and delivery with daprd's answer rules.

Delivery follows daprd's: `POST {app}{route}` with the CloudEvent, and
the app's answer decides: done, redeliver (after `delivery_retry_interval`,
up to `delivery_max_attempts`), or drop (to the subscription's dead-letter
topic when it names one). A fixed pool of workers keeps the number of
deliveries in flight bounded.
"""

from __future__ import annotations

import base64
import json
import random
import re
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import httpx2
from anyio.abc import TaskGroup, TaskStatus

from worker.clock import Clock

from .asgi import ApiError, Request, Response, empty
from .jobs import new_traceparent
from .records import Delivery, Published
from .timeparse import format_rfc3339

CLOUDEVENTS_JSON = "application/cloudevents+json"
DEFAULT_EVENT_TYPE = "com.dapr.event.sent"
# Deliveries in flight to the app at once (all subscriptions together).
DELIVERY_WORKERS = 32
_DISCOVERY_FIRST_DELAY = 0.02
_DISCOVERY_MAX_DELAY = 0.5
_MATCH = re.compile(r"""^\s*event\.(\w+)\s*(==|!=)\s*(?:"([^"]*)"|'([^']*)')\s*$""")


@dataclass(frozen=True, slots=True)
class Subscription:
    pubsub: str
    topic: str
    rules: tuple[tuple[str, str], ...]  # (match, path)
    default: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    dead_letter_topic: str | None = None

    @property
    def raw(self) -> bool:
        return str(self.metadata.get("rawPayload", "")).lower() == "true"

    def route_for(self, envelope: dict[str, Any]) -> str | None:
        for match, path in self.rules:
            if rule_matches(match, envelope):
                return path
        return self.default

    def to_json(self) -> dict[str, Any]:
        rules = [{"match": m, "path": p} for m, p in self.rules]
        if self.default is not None:
            rules.append({"match": "", "path": self.default})
        out: dict[str, Any] = {
            "pubsubname": self.pubsub,
            "topic": self.topic,
            "metadata": dict(self.metadata),
            "rules": rules,
            "type": "PROGRAMMATIC",
        }
        if self.dead_letter_topic:
            out["deadLetterTopic"] = self.dead_letter_topic
        return out


def rule_matches(match: str, envelope: dict[str, Any]) -> bool:
    """Only `event.<attr> == "value"` and `!=` are understood; anything else never matches."""
    m = _MATCH.match(match)
    if m is None:
        return False
    attr, op, dq, sq = m.groups()
    equal = str(envelope.get(attr, "")) == (dq if dq is not None else sq)
    return equal if op == "==" else not equal


def parse_subscriptions(value: Any, pubsubs: tuple[str, ...]) -> list[Subscription]:
    """The app's `GET /dapr/subscribe` answer; malformed items and unknown pub/subs skipped."""
    if not isinstance(value, list):
        return []
    out: list[Subscription] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        pubsub, topic = item.get("pubsubname"), item.get("topic")
        if not isinstance(pubsub, str) or not isinstance(topic, str) or pubsub not in pubsubs:
            continue
        rules: list[tuple[str, str]] = []
        default: str | None = None
        routes = item.get("routes")
        if isinstance(routes, dict):
            for rule in routes.get("rules") or []:
                if isinstance(rule, dict) and isinstance(rule.get("path"), str):
                    rules.append((str(rule.get("match", "")), rule["path"]))
            if isinstance(routes.get("default"), str):
                default = routes["default"]
        if default is None and isinstance(item.get("route"), str):
            default = item["route"]
        if default is None and not rules:
            continue
        raw_metadata = item.get("metadata")
        metadata: dict[Any, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        dead_letter = item.get("deadLetterTopic")
        out.append(
            Subscription(
                pubsub=pubsub,
                topic=topic,
                rules=tuple(rules),
                default=default,
                metadata={str(k): str(v) for k, v in metadata.items()},
                dead_letter_topic=dead_letter
                if isinstance(dead_letter, str) and dead_letter
                else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _Message:
    record: Published
    envelope: dict[str, Any]  # parsed once, read-only by convention (route matching)


@dataclass(frozen=True, slots=True)
class _Work:
    message: _Message
    subscription: Subscription | None  # None: fan out to every subscription
    attempt: int = 1


class PubSub:
    def __init__(
        self,
        *,
        pubsubs: tuple[str, ...],
        app_id: str,
        app_base_url: str,
        app_api_token: str | None,
        clock: Clock,
        client: httpx2.AsyncClient,
        retry_interval: timedelta,
        max_attempts: int,
        published: list[Published],
        dead_letters: list[Published],
        deliveries: list[Delivery],
        on_publish: Callable[[Published], None] | None = None,
        replica_urls: tuple[str, ...] = (),
    ) -> None:
        self._pubsubs = pubsubs
        self._app_id = app_id
        self._app = app_base_url.rstrip("/")
        self._replicas = (self._app, *(u.rstrip("/") for u in replica_urls))
        self._token = app_api_token
        self._clock = clock
        self._client = client
        self._retry_interval = retry_interval.total_seconds()
        self._max_attempts = max(1, max_attempts)
        self._published = published
        self._dead_letters = dead_letters
        self._deliveries = deliveries
        self._on_publish = on_publish
        self._queue: deque[_Work] = deque()
        self._work_ready = anyio.Event()
        self.subscriptions: list[Subscription] = []
        self.discovered = anyio.Event()
        self.app_answered = False

    # ---- HTTP handlers

    def publish(self, request: Request, pubsub: str, topic: str) -> Response:
        self._check(pubsub)
        metadata = {
            k[len("metadata.") :]: v for k, v in request.query.items() if k.startswith("metadata.")
        }
        traceparent = request.headers.get("traceparent") or new_traceparent()
        self._publish_one(pubsub, topic, request.body, request.content_type, metadata, traceparent)
        return empty()

    def bulk_publish(self, request: Request, pubsub: str, topic: str) -> Response:
        self._check(pubsub)
        entries = request.json()
        if not isinstance(entries, list):
            raise ApiError(
                400,
                "ERR_PUBSUB_EVENTS_SER",
                f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: "
                "expected an array",
            )
        metadata = {
            k[len("metadata.") :]: v for k, v in request.query.items() if k.startswith("metadata.")
        }
        seen: set[str] = set()
        prepared: list[tuple[bytes, str, dict[str, str]]] = []
        for entry in entries:
            entry_id = entry.get("entryId") if isinstance(entry, dict) else None
            if (
                not isinstance(entry_id, str)
                or not entry_id
                or entry_id in seen
                or "event" not in entry
            ):
                raise ApiError(
                    400,
                    "ERR_PUBSUB_EVENTS_SER",
                    f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: "
                    "entryId must be set and unique, event required",
                )
            seen.add(entry_id)
            content_type = str(entry.get("contentType") or "application/json")
            event = entry["event"]
            if isinstance(event, str) and not _is_json(content_type):
                body = event.encode()
            else:
                body = json.dumps(event).encode()
            entry_meta = dict(metadata)
            if isinstance(entry.get("metadata"), dict):
                entry_meta.update({str(k): str(v) for k, v in entry["metadata"].items()})
            prepared.append((body, content_type, entry_meta))
        traceparent = request.headers.get("traceparent") or new_traceparent()
        for body, content_type, entry_meta in prepared:
            self._publish_one(pubsub, topic, body, content_type, entry_meta, traceparent)
        return empty()

    def _check(self, pubsub: str) -> None:
        if not self._pubsubs:
            raise ApiError(400, "ERR_PUBSUB_NOT_CONFIGURED", "no pubsub is configured")
        if pubsub not in self._pubsubs:
            raise ApiError(404, "ERR_PUBSUB_NOT_FOUND", f"pubsub {pubsub} not found")

    def _publish_one(
        self,
        pubsub: str,
        topic: str,
        body: bytes,
        content_type: str,
        metadata: dict[str, str],
        traceparent: str,
    ) -> None:
        raw = metadata.get("rawPayload", "").lower() == "true"
        envelope = self._envelope(pubsub, topic, body, content_type, metadata, traceparent, raw)
        record = Published(
            pubsub=pubsub,
            topic=topic,
            content_type=content_type,
            envelope_json=json.dumps(envelope).encode(),
            time=self._clock(),
            raw_payload=body if raw else None,
            metadata=tuple(metadata.items()),
        )
        self._published.append(record)
        if self._on_publish is not None:
            self._on_publish(record)
        self._enqueue(_Work(_Message(record, envelope), None))

    def _envelope(
        self,
        pubsub: str,
        topic: str,
        body: bytes,
        content_type: str,
        metadata: dict[str, str],
        traceparent: str,
        raw: bool,
    ) -> dict[str, Any]:
        envelope = _wrap(pubsub, topic, body, content_type, raw)
        for attr in ("id", "source", "type", "subject"):
            override = metadata.get(f"cloudevent.{attr}")
            if override:
                envelope[attr] = override
        envelope.setdefault("id", str(uuid.uuid4()))
        envelope.setdefault("source", self._app_id)
        envelope.setdefault("type", DEFAULT_EVENT_TYPE)
        envelope.setdefault("specversion", "1.0")
        envelope.setdefault("datacontenttype", "application/json")
        envelope.setdefault("time", format_rfc3339(self._clock()))
        envelope["topic"] = topic
        envelope["pubsubname"] = pubsub
        envelope["traceid"] = traceparent
        envelope["traceparent"] = traceparent
        envelope.setdefault("tracestate", "")
        return envelope

    # ---- background work

    def _enqueue(self, work: _Work) -> None:
        self._queue.append(work)
        ready, self._work_ready = self._work_ready, anyio.Event()
        ready.set()

    async def discover(self) -> None:
        """`GET {app}/dapr/subscribe`, retried until the app's port answers (like daprd)."""
        delay = _DISCOVERY_FIRST_DELAY
        while True:
            try:
                answer = await self._client.get(
                    f"{self._app}/dapr/subscribe", headers=self._app_headers()
                )
                break
            except httpx2.HTTPError:
                await anyio.sleep(delay)
                delay = min(delay * 2, _DISCOVERY_MAX_DELAY)
        self.app_answered = True
        if answer.status_code == 200:
            try:
                self.subscriptions = parse_subscriptions(answer.json(), self._pubsubs)
            except ValueError:
                self.subscriptions = []
        self.discovered.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.discover)
            for _ in range(DELIVERY_WORKERS):
                tg.start_soon(self._worker, tg)
            task_status.started()

    async def _worker(self, tg: TaskGroup) -> None:
        await self.discovered.wait()
        while True:
            if not self._queue:
                await self._work_ready.wait()
                continue
            work = self._queue.popleft()
            if work.subscription is None:
                message = work.message
                record = message.record
                for sub in self.subscriptions:
                    if sub.pubsub == record.pubsub and sub.topic == record.topic:
                        self._enqueue(_Work(message, sub))
                continue
            await self._deliver(work, tg)

    def _app_headers(self) -> dict[str, str]:
        return {} if self._token is None else {"dapr-api-token": self._token}

    async def _deliver(self, work: _Work, tg: TaskGroup) -> None:
        sub = work.subscription
        assert sub is not None
        message = work.message
        record = message.record
        envelope = message.envelope
        route = sub.route_for(envelope)
        if route is None:
            # No rule matched and no default: daprd acknowledges the message unseen.
            self._record(work, "", None, "NO_ROUTE", "drop")
            return
        if not route.startswith("/"):
            route = "/" + route
        headers = self._app_headers()
        headers["pubsubname"] = sub.pubsub
        headers["traceparent"] = str(envelope.get("traceparent", new_traceparent()))
        if sub.raw:
            body = record.raw_payload if record.raw_payload is not None else record.envelope_json
            headers["content-type"] = "application/octet-stream"
        else:
            body = record.envelope_json
            headers["content-type"] = CLOUDEVENTS_JSON
        status: int | None = None
        try:
            app = random.choice(self._replicas)  # one replica of the app id, as daprd picks
            answer = await self._client.post(app + route, content=body, headers=headers)
            status = answer.status_code
            reply = answer.content
        except httpx2.HTTPError:
            reply = b""
        verdict, outcome = classify(status, reply)
        if outcome == "retry" and work.attempt >= self._max_attempts:
            outcome = "drop"
        self._record(work, route, status, verdict, outcome)
        if outcome == "retry":
            tg.start_soon(self._redeliver_later, _Work(message, sub, work.attempt + 1))
        elif outcome == "drop" and sub.dead_letter_topic:  # DROP, 404, attempts exhausted
            self._dead_letter(message, sub)

    def _record(
        self, work: _Work, route: str, status: int | None, verdict: str, outcome: str
    ) -> None:
        sub = work.subscription
        assert sub is not None
        event_id = str(work.message.envelope.get("id", ""))
        self._deliveries.append(
            Delivery(
                sub.pubsub,
                sub.topic,
                route,
                event_id,
                status,
                verdict,
                outcome,
                work.attempt,
                self._clock(),
            )
        )

    async def _redeliver_later(self, work: _Work) -> None:
        await anyio.sleep(self._retry_interval)
        self._enqueue(work)

    def _dead_letter(self, message: _Message, sub: Subscription) -> None:
        assert sub.dead_letter_topic is not None
        record = Published(
            pubsub=sub.pubsub,
            topic=sub.dead_letter_topic,
            content_type=CLOUDEVENTS_JSON,
            envelope_json=message.record.envelope_json,
            time=self._clock(),
            raw_payload=message.record.raw_payload,
            metadata=message.record.metadata,
        )
        self._dead_letters.append(record)
        self._enqueue(_Work(_Message(record, message.envelope), None))


def classify(status: int | None, reply: bytes) -> tuple[str, str]:
    """(answer, outcome) for one delivery, as daprd classifies the app's answer."""
    if status is None:
        return "CONNECTION_ERROR", "retry"
    if status == 404:
        return "HTTP_404", "drop"
    if not 200 <= status < 300:
        return f"HTTP_{status}", "retry"
    try:
        parsed = json.loads(reply) if reply.strip() else None
    except ValueError:
        parsed = None
    answer = parsed.get("status") if isinstance(parsed, dict) else None
    if not isinstance(answer, str) or answer in ("", "SUCCESS"):
        return "SUCCESS", "done"
    if answer == "DROP":
        return "DROP", "drop"
    # RETRY, and any other string (even lowercase "success"), is redelivered.
    return answer, "retry"


def _is_json(media: str) -> bool:
    media = media.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")

def _wrap(pubsub: str, topic: str, body: bytes, content_type: str,
          raw: bool) -> dict[str, Any]:
    """The envelope as published, before daprd fills in its attributes."""
    media = content_type.split(";", 1)[0].strip().lower() or "text/plain"
    envelope: dict[str, Any]
    if raw:
        # What a subscriber without rawPayload receives for a raw message: a new
        # envelope with a random id around the bytes.
        envelope = {
            "datacontenttype": "application/octet-stream",
            "data_base64": base64.b64encode(body).decode(),
        }
    elif media == CLOUDEVENTS_JSON:
        try:
            given = json.loads(body)
        except ValueError:
            given = None
        if not isinstance(given, dict):
            raise ApiError(
                400,
                "ERR_PUBSUB_CLOUD_EVENTS_SER",
                f"error when marshalling cloud event envelope for topic {topic} "
                f"pubsub {pubsub}: not a JSON object",
            )
        envelope = given
    elif _is_json(media):
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = body.decode("utf-8", "replace")
        envelope = {"datacontenttype": media, "data": data}
    else:
        try:
            envelope = {"datacontenttype": media, "data": body.decode("utf-8")}
        except UnicodeDecodeError:
            envelope = {
                "datacontenttype": media,
                "data_base64": base64.b64encode(body).decode(),
            }
    return envelope
