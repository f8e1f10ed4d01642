"""Fixtures of the end-to-end suite: real Redis, PostgreSQL, scheduler, daprd and
worker processes. `make e2e` runs it; see docs/development.md."""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from e2e.procs import (
    APP_ID,
    TASK_SERVICE_PORT,
    Daprd,
    Kafka,
    Postgres,
    Proc,
    Redis,
    Scheduler,
    Worker,
    free_port,
    port_open,
    wait_until,
)

pytestmark = pytest.mark.e2e


class Server(Protocol):
    """What the suite starts and stops: Redis, PostgreSQL, Kafka, the scheduler, the
    observer."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)

_pods = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def redis(root: Path) -> Iterator[Redis]:
    yield from _serving(Redis(root))


def _serving(server: S) -> Iterator[S]:
    """A server for the session: stopped afterwards, also when its start fails midway
    (a half-started PostgreSQL or Kafka holds a port and a data directory)."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(root: Path) -> Iterator[Postgres]:
    yield from _serving(Postgres(root))


@pytest.fixture(scope="session")
def kafka(root: Path) -> Iterator[Kafka]:
    yield from _serving(Kafka(root))


class Topics(Protocol):
    def messages(self, topic: str) -> list[dict[str, Any]]:
        """Every message that reached `topic` so far, as the CloudEvents published."""


@dataclass
class RedisTopics:
    redis: Redis

    def messages(self, topic: str) -> list[dict[str, Any]]:
        return self.redis.stream(topic)


class KafkaTopics:
    """What reached the Kafka topics the worker writes to, read through daprd: an app
    of the suite's own (`e2e-observer`) beside its own daprd, subscribed to them
    (components/e2e/observer/)."""

    TOPICS = ("reminders", "task-events-dlq")

    def __init__(self, root: Path, scheduler: Scheduler) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {t: [] for t in self.TOPICS}
        self.lock = threading.Lock()
        observer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path in ("/healthz", "/dapr/subscribe")
                self.send_response(200 if found else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"[]" if self.path == "/dapr/subscribe" else b"{}")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                topic = self.path.removeprefix("/observed/")
                with observer.lock:
                    observer.received.setdefault(topic, []).append(json.loads(raw))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status":"SUCCESS"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.daprd = Daprd(root, "daprd-observer", self.server.server_address[1],
                           scheduler.address, None, app_id="e2e-observer", broker="kafka",
                           more=["observer"])

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.daprd.start()

        def subscribed() -> bool:
            subs = self.daprd.metadata().get("subscriptions") or []
            return set(self.TOPICS) <= {s.get("topic") for s in subs}
        wait_until(subscribed, 60, "the observer's subscriptions", self.daprd.proc.tail)

    def messages(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(topic, []))

    def stop(self) -> None:
        self.daprd.stop()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def kafka_topics(root: Path, kafka: Kafka, scheduler: Scheduler) -> Iterator[KafkaTopics]:
    yield from _serving(KafkaTopics(root, scheduler))


@pytest.fixture(scope="session")
def scheduler(root: Path) -> Iterator[Scheduler]:
    yield from _serving(Scheduler(root))


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class TaskService:
    """The stand-in task service behind the `todo-backend` HTTPEndpoint: records
    every call; answers `fail_next` calls with 503, then 201."""

    calls: list[Call] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_user(self, user_id: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls
                    if isinstance(c.body, dict) and c.body.get("user_id") == user_id]


@pytest.fixture(scope="session")
def task_service() -> Iterator[TaskService]:
    service = TaskService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            with service.lock:
                service.calls.append(Call(self.path, dict(self.headers), body))
                failing = service.fail_next > 0
                if failing:
                    service.fail_next -= 1
            self.send_response(503 if failing else 201)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    assert not port_open(TASK_SERVICE_PORT), f"port {TASK_SERVICE_PORT} is taken"
    server = ThreadingHTTPServer(("127.0.0.1", TASK_SERVICE_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield service
    server.shutdown()
    server.server_close()


@dataclass
class Pod:
    """One replica: a worker beside its own daprd (as in a Kubernetes pod)."""

    daprd: Daprd
    worker: Worker
    store: str
    topic: str
    broker: str
    topics: Topics  # what reached the topics the worker writes to

    def start(self) -> None:
        self.worker.start()  # waits for daprd on its own
        self.daprd.start()  # waits for daprd's outbound health
        self.worker.wait_ready()
        wait_until(self.subscribed, 30, f"daprd {self.daprd.proc.name} to load the "
                   "worker's subscription", self.daprd.proc.tail)

    def subscribed(self) -> bool:
        subs = self.daprd.metadata().get("subscriptions") or []
        return any(s.get("topic") == self.topic for s in subs)

    def stop(self) -> None:
        self.worker.stop()
        self.daprd.stop()


class PodFactory:
    def __init__(self, root: Path, scheduler: Scheduler,
                 request: pytest.FixtureRequest) -> None:
        self.root, self.scheduler, self.request = root, scheduler, request
        self.pods: list[Pod] = []

    def topics(self, broker: str) -> Topics:
        """The broker's reader; Kafka and its observer start on first use only."""
        if broker == "kafka":
            return self.request.getfixturevalue("kafka_topics")  # type: ignore[no-any-return]
        return RedisTopics(self.request.getfixturevalue("redis"))

    def make(self, store: str = "redis", app_id: str | None = None, topic: str | None = None,
             env: dict[str, str] | None = None, start: bool = True,
             broker: str = "redis") -> Pod:
        """A pod; by default of an app id and task topic of its own, so that it shares
        neither the consumer group nor the jobs of any other pod."""
        n = next(_pods)
        app_id = app_id or f"rw-e2e-{n}"
        topic = topic or f"task-events-{app_id}"
        worker = Worker(self.root, f"worker-{n}", 0, {
            "REMINDER_APP_ID": app_id, "REMINDER_TASK_TOPIC": topic, **(env or {})})
        topics = self.topics(broker)
        daprd = Daprd(self.root, f"daprd-{n}", worker.app_port, self.scheduler.address, store,
                      app_id=app_id, broker=broker)
        worker.env["DAPR_HTTP_PORT"] = str(daprd.http_port)
        pod = Pod(daprd, worker, store, topic, broker, topics)
        self.pods.append(pod)
        if start:
            pod.start()
        return pod

    def close(self) -> None:
        for pod in self.pods:
            pod.stop()


@pytest.fixture
def pods(request: pytest.FixtureRequest, root: Path, redis: Redis, postgres: Postgres,
         scheduler: Scheduler, task_service: TaskService) -> Iterator[PodFactory]:
    factory = PodFactory(root, scheduler, request)
    yield factory
    factory.close()


# Each pass: (state store, pub/sub broker). The last is what production runs.
PASSES = {"redis": ("redis", "redis"), "postgres": ("postgres", "redis"),
          "kafka": ("postgres", "kafka")}


@pytest.fixture(scope="session", params=list(PASSES))
def pod(request: pytest.FixtureRequest, root: Path, redis: Redis, postgres: Postgres,
        scheduler: Scheduler, task_service: TaskService) -> Iterator[Pod]:
    """The shared pod of one pass: the worker's default app id and topic; Redis state
    and Redis streams, then PostgreSQL v2 and Redis streams, then PostgreSQL v2 and
    Kafka, as in production."""
    factory = PodFactory(root, scheduler, request)
    store, broker = PASSES[request.param]
    p = factory.make(store, app_id=APP_ID, topic="task-events", broker=broker)
    yield p
    factory.close()


@pytest.fixture(scope="session")
def dev_sidecar(root: Path) -> Iterator[httpx.Client]:
    """`reminder-worker --dev`: the worker with its embedded development sidecar."""
    port = free_port()
    env = {**os.environ, "DAPR_HTTP_PORT": str(port), "REMINDER_PORT": str(free_port()),
           "REMINDER_OPS_PORT": str(free_port()), "REMINDER_OPS_HOST": "127.0.0.1",
           "REMINDER_LOG_FORMAT": "json"}
    proc = Proc("dev", [sys.executable, "-m", "worker", "--dev"], root, env=env)
    proc.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_until(lambda: http.get("/v1.0/healthz/outbound").status_code == 204, 60,
               "the development sidecar", proc.tail)
    yield http
    http.close()
    proc.stop()


_users = itertools.count(1)


@pytest.fixture
def user() -> str:
    """A user id of this test's own, so tests sharing a pod never see each other."""
    return f"e2e-{time.time_ns():x}-{next(_users)}"
