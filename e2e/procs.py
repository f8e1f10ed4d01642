"""Real processes for the end-to-end suite: Redis, PostgreSQL, Dapr's scheduler,
daprd and the worker, each with its own log file, started and stopped by the
suite on loopback ports.

Every wait has a deadline and, when it passes, says what it waited for and
shows the end of the process's log.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
DAPR_BIN = Path(os.environ.get("DAPR_BIN_DIR", REPO / ".dapr" / "bin"))
RESOURCES = REPO / "components" / "e2e"
# Fixed where a resource file names them (components/e2e/); the rest are free ports.
REDIS_PORT = 16379
KAFKA_PORT = 19092
KAFKA_LIB = Path(os.environ.get("KAFKA_LIB_DIR", REPO / ".kafka" / "lib"))
POSTGRES_PORT = 15432
TASK_SERVICE_PORT = 18090
APP_ID = "reminder-worker"
# daprd's app health check as production sets it (deploy/base/deployment.yaml; a test
# keeps them equal): a worker restarted within seconds is never seen unhealthy. See
# docs/operations.md for what a Kafka subscription does after an unhealthy spell.
APP_HEALTH = {"app-health-check-path": "/healthz", "app-health-probe-interval": "5",
              "app-health-probe-timeout": "1000", "app-health-threshold": "3"}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate: Callable[[], T | None], within: float, what: str,
               why: Callable[[], str] = lambda: "") -> T:
    """Poll `predicate` until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:.0f} s for {what}\n{why()}")
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the suite's process dies, however it dies, so that
    an aborted run leaves no server holding the suite's ports."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


class Proc:
    """One child process, its output in `log`."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path,
                 env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.name, self.argv, self.env, self.cwd = name, list(argv), env, cwd
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"--- start {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, within: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {within:.0f} s after it was "
                                 f"told to stop\n{self.tail()}") from None

    def kill(self) -> None:
        """kill -9, and reap."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, within: float = 20.0) -> None:
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.wait(within)
            except AssertionError:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.name}: no log)"
        return f"--- last lines of {self.log}:\n" + "\n".join(text[-lines:])

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


# --- Redis ------------------------------------------------------------------------

def _resp_encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _resp_read(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP line {line!r}")


class Redis:
    """redis-server from Debian's package, with an append-only file so that a
    restart keeps the data (as a production Redis with persistence does)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc("redis", [shutil.which("redis-server") or "redis-server",
                                   "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                                   "--dir", str(self.dir), "--save", "",
                                   "--appendonly", "yes", "--appendfsync", "always"],
                         root)

    def start(self) -> None:
        if port_open(REDIS_PORT):
            raise AssertionError(f"port {REDIS_PORT} is taken: the suite's Redis needs it "
                                 "(a Redis left from an earlier run?)")
        self.proc.start()
        wait_until(lambda: self.ping(), 20, "redis to answer PING", self.proc.tail)

    def ping(self) -> bool:
        return bool(self("PING") == "PONG")

    def __call__(self, *args: str | bytes | int) -> Any:
        with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=5) as s:
            s.sendall(_resp_encode(args))
            return _resp_read(s.makefile("rb"))

    def stream(self, topic: str) -> list[dict[str, Any]]:
        """Every message on a Redis streams topic, as the parsed `data` field."""
        out = []
        for _id, fields in self("XRANGE", topic, "-", "+") or []:
            pairs = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append(json.loads(pairs[b"data"]))
        return out

    def stop(self) -> None:
        self.proc.stop()


# --- PostgreSQL --------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise AssertionError(f"{name} not found: install Debian's postgresql package")


class Postgres:
    """A throw-away cluster in a temporary directory (trust auth, loopback only).
    PostgreSQL refuses to run as root: as root it runs as the `postgres` user."""

    def __init__(self, root: Path) -> None:
        # Its own directory directly under the temporary directory: as root the
        # server runs as `postgres`, which cannot enter pytest's private folders.
        self.root = Path(tempfile.mkdtemp(prefix="reminder-worker-e2e-pg-"))
        self.dir = self.root / "data"
        self.sock = self.root
        self.log = root / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self.as_user, *argv], cwd="/", capture_output=True, text=True)
        if done.returncode:
            raise AssertionError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        if port_open(POSTGRES_PORT):
            raise AssertionError(f"port {POSTGRES_PORT} is taken: the suite's PostgreSQL "
                                 "needs it (a server left from an earlier run?)")
        self._run(_pg_bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-l", str(self.root / "postgres.log"),
                  "-w", "-o", f"-p {POSTGRES_PORT} -k {self.sock} -c listen_addresses=127.0.0.1"
                  " -c fsync=off", "start")
        self.sql("CREATE DATABASE reminders", db="postgres")

    def sql(self, query: str, db: str = "reminders") -> list[list[str]]:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U",
                              "postgres", "-d", db, "-AtX", "-F", "\t", "-c", query],
                             check=True, capture_output=True, text=True)
        return [line.split("\t") for line in out.stdout.splitlines()]

    def stop(self) -> None:
        if self.dir.exists():
            subprocess.run([*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.dir), "-m",
                            "immediate", "stop"], cwd="/", stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
            with contextlib.suppress(OSError):
                shutil.copy(self.root / "postgres.log", self.log)
        shutil.rmtree(self.root, ignore_errors=True)


# --- Kafka -------------------------------------------------------------------------

class Kafka:
    """One Apache Kafka broker in KRaft mode (broker and controller in one process),
    from the jars `make kafka` fetched, data in a temporary directory. Topics are
    created when first used, as the suite's daprds publish and subscribe."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "kafka"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "server.properties"
        controller = free_port()
        self.config.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller}",
            f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.dir / 'data'}",
            # more than one partition, so that ordering and rebalancing are real
            "num.partitions=4", "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # a new consumer group is served at once, not after the 3 s default
            "group.initial.rebalance.delay.ms=0", ""]))
        java = shutil.which("java") or "java"
        self.classpath = f"{KAFKA_LIB}/*"
        self.java = [java, "-Xms128m", "-Xmx512m", "-cp", self.classpath]
        self.proc = Proc("kafka", [*self.java, "kafka.Kafka", str(self.config)], root)

    def start(self) -> None:
        if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
            raise AssertionError(f"no Kafka in {KAFKA_LIB}: run `make kafka`")
        if port_open(KAFKA_PORT):
            raise AssertionError(f"port {KAFKA_PORT} is taken: the suite's Kafka needs it "
                                 "(a broker left from an earlier run?)")
        cluster_id = "-"
        while cluster_id.startswith("-"):  # else the tool reads it as an option (1 in 64)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        done = subprocess.run([*self.java, "kafka.tools.StorageTool", "format", "-t",
                               cluster_id, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise AssertionError(f"formatting Kafka's storage failed:\n{done.stdout}"
                                 f"{done.stderr}")
        self.proc.start()
        wait_until(lambda: port_open(KAFKA_PORT), 60, "Kafka's listener", self.proc.tail)

    def restart(self) -> None:
        """Start again on the same data (after `stop`), as a restarted broker does."""
        self.proc.start()
        wait_until(lambda: port_open(KAFKA_PORT), 60, "Kafka's listener", self.proc.tail)

    def stop(self) -> None:
        self.proc.stop()


# --- Dapr --------------------------------------------------------------------------

def dapr_binary(name: str) -> str:
    path = DAPR_BIN / name
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} missing: run `make dapr` (builds the real {name})")
    return str(path)


class Scheduler:
    """Dapr's scheduler with its embedded etcd, data in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.healthz = free_port()
        etcd_client, etcd_peer, metrics = free_port(), free_port(), free_port()
        self.data = root / "scheduler-etcd"
        self.proc = Proc("scheduler", [
            dapr_binary("scheduler"), "--port", str(self.port), "--listen-address", "127.0.0.1",
            "--healthz-port", str(self.healthz), "--healthz-listen-address", "127.0.0.1",
            "--metrics-port", str(metrics), "--etcd-data-dir", str(self.data),
            "--etcd-client-port", str(etcd_client),
            "--etcd-initial-cluster", f"dapr-scheduler-server-0=http://127.0.0.1:{etcd_peer}",
            "--override-broadcast-host-port", f"127.0.0.1:{self.port}",
            "--log-level", "info"], root)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.healthz}/healthz",
                                     timeout=1).status_code == 200,
                   60, "the scheduler's /healthz", self.proc.tail)

    def stop(self) -> None:
        self.proc.stop()


class Daprd:
    """One real daprd beside one app, with the suite's resources."""

    def __init__(self, root: Path, name: str, app_port: int, scheduler: str,
                 store: str | None, app_id: str = APP_ID, extra: Sequence[str] = (),
                 broker: str = "redis", more: Sequence[str] = ()) -> None:
        """`store`, `broker` and `more` name resource folders of components/e2e/:
        the state store's (none for an app without one), `pubsub-{broker}`, others."""
        folders = ["common", *([store] if store else []), f"pubsub-{broker}", *more]
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.app_port = app_port
        self.app_id = app_id
        args = [dapr_binary("daprd"), "--app-id", app_id, "--app-port", str(app_port),
                "--app-protocol", "http", "--app-max-concurrency", "64",
                "--dapr-http-port", str(self.http_port),
                "--dapr-grpc-port", str(free_port()),
                "--dapr-internal-grpc-port", str(free_port()),
                "--metrics-port", str(self.metrics_port),
                "--dapr-listen-addresses", "127.0.0.1",
                *(a for f in folders for a in ("--resources-path", str(RESOURCES / f))),
                "--scheduler-host-address", scheduler,
                "--placement-host-address", "",
                "--enable-app-health-check",
                *(a for flag, value in APP_HEALTH.items() for a in (f"--{flag}", value)),
                "--log-level", "info", *extra]
        self.proc = Proc(name, args, root)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.http = httpx.Client(base_url=self.url, timeout=35)

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: self.http.get("/v1.0/healthz/outbound", timeout=1).status_code == 204,
                   60, f"{self.proc.name}'s /v1.0/healthz/outbound", self.proc.tail)

    def metadata(self) -> dict[str, Any]:
        resp = self.http.get("/v1.0/metadata")
        resp.raise_for_status()
        return dict(resp.json())

    def publish(self, event: dict[str, Any], ce_id: str | None = None,
                topic: str = "task-events") -> str:
        """Publish a task event; with `ce_id`, as our own CloudEvent with that id."""
        if ce_id is None:
            resp = self.http.post(f"/v1.0/publish/pubsub/{topic}", json=event)
        else:
            envelope = {"specversion": "1.0", "id": ce_id, "source": "e2e",
                        "type": event.get("event_type", "com.example"),
                        "datacontenttype": "application/json", "data": event}
            resp = self.http.post(f"/v1.0/publish/pubsub/{topic}", content=json.dumps(envelope),
                                  headers={"content-type": "application/cloudevents+json"})
        assert resp.status_code == 204, (resp.status_code, resp.text)
        return ce_id or ""

    def job(self, name: str) -> dict[str, Any] | None:
        """The scheduler's job, or None when daprd says it has none (a 500)."""
        resp = self.http.get(f"/v1.0-alpha1/jobs/{name}")
        if resp.status_code == 200:
            return dict(resp.json())
        assert resp.status_code == 500 and "DAPR_SCHEDULER_GET_JOB" in resp.text, \
            (resp.status_code, resp.text)
        return None

    def state(self, key: str) -> Any:
        resp = self.http.get(f"/v1.0/state/statestore/{key}")
        if resp.status_code == 204:
            return None
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        self.proc.stop()
        self.http.close()


class Worker:
    """The worker as its users run it: the installed command, settings from the
    environment."""

    def __init__(self, root: Path, name: str, dapr_http_port: int,
                 env: dict[str, str] | None = None) -> None:
        self.app_port = free_port()
        self.ops_port = free_port()
        self.env = {**os.environ, "DAPR_HTTP_PORT": str(dapr_http_port),
                    "REMINDER_PORT": str(self.app_port), "REMINDER_OPS_PORT": str(self.ops_port),
                    "REMINDER_OPS_HOST": "127.0.0.1", "REMINDER_PUBSUB": "pubsub",
                    "REMINDER_SECRET_STORE": "secretstore", "REMINDER_LOG_FORMAT": "json",
                    **(env or {})}
        self.proc = Proc(name, [sys.executable, "-m", "worker"], root, env=self.env)
        self.ops = f"http://127.0.0.1:{self.ops_port}"

    def start(self) -> None:
        self.proc.start()

    def wait_ready(self, within: float = 60) -> None:
        wait_until(lambda: httpx.get(f"{self.ops}/readyz", timeout=2).status_code == 200,
                   within, f"{self.proc.name} ready (/readyz 200)", self.proc.tail)

    def cli(self, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One command of the worker's CLI with this worker's settings."""
        return subprocess.run([sys.executable, "-m", "worker", *args],
                              env={**self.env, **(env or {})}, input=stdin,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.proc.lines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample over the series matching `labels`."""
        text = httpx.get(f"{self.ops}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, within: float = 30) -> None:
        self.proc.stop(within)
