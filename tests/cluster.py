"""Several in-process workers (replicas of one app id) behind ONE development sidecar.

Like tests/harness.py, over real HTTP with a shared ManualClock, but the
sidecar delivers each event and fires each job to a random replica (as daprd
does), and the test can stop, start and slow things down. Also the checks the
fault, race and soak tests share: every delivery settled, records equal to the
newest event, one reminder.due id per instant, ids never raw in a URL or key.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import httpx

from devsidecar import DevSidecar, ManualClock, SidecarConfig, serve_sidecar
from tests.harness import START, free_port
from worker.commands.daemon import Running, run_daemon
from worker.dapr.readiness import READY_PROBE_KEY
from worker.errors import StartupError
from worker.settings import Settings, load_settings

_ids = itertools.count(1)
# Every wait of the harness has a deadline and, when it passes, says what it waited for.
REPLICA_START_SECONDS = 30.0  # a replica's start-up: sidecar checks, its ports free again
REPLICA_EXIT_SECONDS = 25.0  # a killed or stopped replica's exit (a drain takes <= 20 s)
PUBLISH_SECONDS = 60.0  # one task event into the sidecar, across injected publish faults
DRAIN_SECONDS = 120.0  # drain_jobs / drain_retries in all (each step has its own wait too)
# After a kill, dead servers are swept until this many sweeps in a row (a few loop
# iterations apart) find nothing open.
SOCKET_SWEEPS = 3
# What the worker may put into a sidecar URL or a state key: digests, never raw ids.
SAFE_KEY = re.compile(r"rw-(task|occ|fired)-[0-9a-f]{16}-[0-9a-f]{32}")
SAFE_JOB = re.compile(r"rw-[0-9a-f]{40}")


@dataclass
class Replica:
    index: int
    settings: Settings
    running: Running
    done: anyio.Event
    scope: anyio.CancelScope

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.running.app_port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.running.ops_port}"


@dataclass
class Cluster:
    sidecar: DevSidecar
    clock: ManualClock
    sidecar_url: str
    client: httpx.AsyncClient
    tg: Any
    env: dict[str, str]
    app_ports: list[int]
    replicas: dict[int, Replica] = field(default_factory=dict)
    kills: int = 0
    # What broke inside the sidecar's kill hook: uvicorn would only log it, and the run
    # would go on with dead replicas; every wait of the harness raises it instead.
    failure: BaseException | None = None
    killing: bool = False  # the kill hook is at work (killing, then restarting)
    closing: bool = False  # the cluster is being torn down: no more restarts
    _dead_servers: list[Any] = field(default_factory=list)  # of killed replicas

    async def wait_until(self, predicate: Callable[[], bool], within: float, what: str,
                         detail: Callable[[], str] | None = None, *,
                         hook: bool = True) -> None:
        """Poll `predicate` until true. TimeoutError naming `what` (and `detail()`) after
        `within` seconds; AssertionError at once when the kill hook broke (`hook`)."""
        deadline = anyio.current_time() + within
        delay = 0.002
        while not predicate():
            if hook:
                self.check_hook()
            if anyio.current_time() >= deadline:
                extra = f": {detail()}" if detail is not None else ""
                raise TimeoutError(f"waited {within:.0f}s for {what}{extra}")
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.02)
        if hook:
            self.check_hook()

    def check_hook(self) -> None:
        if self.failure is not None:
            raise AssertionError(f"the kill hook failed: {self.failure!r}") from self.failure

    async def start_replica(self, index: int) -> Replica:
        settings = load_settings({
            "DAPR_HTTP_ENDPOINT": self.sidecar_url, "REMINDER_PORT": str(self.app_ports[index]),
            "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1", **self.env})
        done = anyio.Event()
        scope = anyio.CancelScope()

        async def daemon(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await run_daemon(settings, clock=self.clock, task_status=task_status)
            finally:
                done.set()

        try:
            with anyio.fail_after(REPLICA_START_SECONDS):  # it waits for its sidecar unboundedly
                running = await self.tg.start(daemon)
        except TimeoutError:
            raise AssertionError(f"replica {index} did not start within "
                                 f"{REPLICA_START_SECONDS:.0f}s (sidecar health, metadata, "
                                 "its ports)") from None
        replica = Replica(index, running.settings or settings, running, done, scope)
        self.replicas[index] = replica
        return replica

    async def _restart(self, index: int) -> None:
        last: Exception | None = None
        deadline = anyio.current_time() + REPLICA_START_SECONDS
        while anyio.current_time() < deadline:  # a killed server's port can take a moment
            try:
                await self.start_replica(index)
                return
            except (OSError, StartupError) as exc:  # listen() says "port ... in use"
                last = exc
                await anyio.sleep(0.05)
        raise AssertionError(f"replica {index} could not be restarted within "
                             f"{REPLICA_START_SECONDS:.0f}s: {last}")

    async def kill_all(self) -> None:
        """kill -9 of every replica: each stops wherever it is (no drain, no further
        effect: a cancelled handler never reaches its next sidecar call), and from this
        moment nothing of it answers: a dead process holds no socket."""
        killed = list(self.replicas.values())
        for replica in killed:
            self._dead_servers += replica.running.servers
        # Sockets first, before anything awaits. The harness once closed them only after
        # the cancelled worker had unwound: meanwhile its listener accepted the sidecar's
        # new connections, and one set up after the sweep stayed served by the dead app
        # (its sidecar client closed: RETRY and 500 on every call the sidecar's pool
        # sent over it, for the rest of the run).
        loop = asyncio.get_running_loop()
        for server in self._dead_servers:
            for listener in server.servers:
                for sock in listener.sockets:
                    loop.remove_reader(sock.fileno())  # accepts no more from here on
        self._abort_dead_connections()
        for replica in killed:
            if replica.running.app is not None:
                replica.running.app.cancel_inflight()
            replica.scope.cancel()
        try:
            for replica in killed:
                await self.wait_until(replica.done.is_set, REPLICA_EXIT_SECONDS,
                                      f"killed replica {replica.index} to exit")
            # A connection accepted just before gets its protocol (and a place among the
            # server's connections) a loop iteration or two later; only then may the
            # listener close (asyncio drops, unclosed, a connection still being set up
            # when its server closes: the caller would wait for its own timeout).
            quiet = 0

            def swept_clean() -> bool:
                nonlocal quiet
                quiet = quiet + 1 if self._abort_dead_connections() == 0 else 0
                return quiet >= SOCKET_SWEEPS

            await self.wait_until(swept_clean, REPLICA_EXIT_SECONDS,
                                  "every connection of the killed replicas to close")
        finally:  # also when the kill itself is cut short (the run torn down meanwhile)
            self.close_dead_servers()

    def close_dead_servers(self) -> None:
        """Close the listeners of every killed replica's servers and abort what they
        still hold open."""
        for server in self._dead_servers:
            for listener in server.servers:
                listener.close()
        self._abort_dead_connections()

    def _abort_dead_connections(self) -> int:
        """Abort the connections of every killed replica's servers; how many were open."""
        dropped = 0
        for server in self._dead_servers:
            for conn in list(server.server_state.connections):
                if not conn.transport.is_closing():
                    conn.transport.abort()
                    dropped += 1
        return dropped

    def dead_connections(self) -> int:
        """Connections a killed replica's server still holds open (0 after `kill_all`)."""
        return sum(1 for server in self._dead_servers
                   for conn in server.server_state.connections
                   if not conn.transport.is_closing())

    def restart_on_kill(self, advance: timedelta = timedelta(seconds=61)) -> None:
        """Make the sidecar's `kill` faults kill every replica; they come back on their
        ports (as Kubernetes restarts a killed pod) after the clock moved `advance`,
        so leases of the dead ones can expire. `kills` counts them."""

        async def on_kill() -> None:
            if self.killing or self.closing:  # replicas down or starting; or torn down
                return
            self.killing = True
            try:
                self.kills += 1
                await self.kill_all()
                self.clock.advance(advance)
                for index in list(self.replicas):
                    if not self.closing:
                        await self._restart(index)
            except Exception as exc:  # raised in the sidecar's handler: only logged there
                self.failure = self.failure or exc
                raise
            finally:
                self.killing = False

        self.sidecar.on_kill = on_kill

    async def stop_replica(self, index: int) -> None:
        replica = self.replicas.pop(index)
        replica.running.stop.set()
        await self.wait_until(replica.done.is_set, REPLICA_EXIT_SECONDS,
                              f"stopped replica {index} to drain and exit", hook=False)

    # -- input ----------------------------------------------------------------
    async def publish(self, event: Any, ce_id: str | None = None,
                      token: str | None = None) -> str:
        """Publish a task event as the task service would; retried on a sidecar fault."""
        ce_id = ce_id or f"ce-{next(_ids)}"
        envelope = {"specversion": "1.0", "id": ce_id, "source": "todo-backend",
                    "type": "com.dapr.event.sent", "datacontenttype": "application/json",
                    "data": event}
        headers = {"content-type": "application/cloudevents+json"}
        token = token or self.env.get("DAPR_API_TOKEN")
        if token:
            headers["dapr-api-token"] = token
        url = f"{self.sidecar_url}/v1.0/publish/kafka-pubsub/task-events"
        last = "nothing tried"
        with anyio.move_on_after(PUBLISH_SECONDS):
            while True:  # a publish fault meant for the worker may hit us first
                self.check_hook()
                try:
                    resp = await self.client.post(url, content=json.dumps(envelope),
                                                  headers=headers)
                except httpx.TransportError as exc:
                    last = repr(exc)
                    continue
                if resp.status_code == 204:
                    return ce_id
                last = f"HTTP {resp.status_code} {resp.text[:200]}"
        raise AssertionError(f"could not publish {ce_id} within {PUBLISH_SECONDS:.0f}s: {last}")

    async def publish_all(self, events: Iterable[Any], concurrency: int = 16) -> list[str]:
        """Publish concurrently (so deliveries interleave); ids in the order given."""
        events = list(events)
        ids: list[str] = [""] * len(events)
        limiter = anyio.CapacityLimiter(concurrency)

        async def one(i: int, ev: Any) -> None:
            async with limiter:
                ids[i] = await self.publish(ev)

        async with anyio.create_task_group() as tg:
            for i, ev in enumerate(events):
                tg.start_soon(one, i, ev)
        return ids

    # -- observation ----------------------------------------------------------
    def settled(self, ce_ids: Iterable[str]) -> bool:
        final = {d.event_id for d in self.sidecar.deliveries if d.outcome in ("done", "drop")}
        return all(i in final for i in ce_ids)

    async def wait_settled(self, ce_ids: list[str], wait: float = 30.0) -> None:
        wanted = set(ce_ids)

        def unsettled() -> str:
            final = {d.event_id for d in self.sidecar.deliveries
                     if d.outcome in ("done", "drop")}
            left = sorted(wanted - final)
            answers = {i: [(d.attempt, d.answer) for d in self.sidecar.deliveries
                           if d.event_id == i][-3:] for i in left[:5]}
            return f"{len(left)} unsettled, e.g. (attempt, answer): {answers}"

        await self.wait_until(lambda: self.settled(wanted), wait,
                              f"{len(wanted)} deliveries to settle", unsettled)

    def final_answers(self, ce_ids: Iterable[str]) -> Counter[str]:
        wanted = set(ce_ids)
        return Counter(d.answer for d in self.sidecar.deliveries
                       if d.event_id in wanted and d.outcome in ("done", "drop"))

    def records(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.sidecar.state().items() if k.startswith("rw-task-")}

    def reminders(self) -> list[dict[str, Any]]:
        return [p.envelope for p in self.sidecar.published if p.topic == "reminders"]

    def due_jobs(self) -> list[str]:
        now = self.clock()
        return [n for n, j in self.sidecar.jobs().items() if j.due_time <= now]

    async def fire_until(self, until: Any, step: timedelta, wait: float = 30.0) -> None:
        """Move the clock to `until` in steps; after each, wait until no due job is left
        unfired (a failed trigger is rescheduled by its failure policy, i.e. later)."""
        while self.clock() < until:
            self.clock.set(min(self.clock() + step, until))
            await self.wait_until(lambda: not self.due_jobs(), wait,
                                  f"every job due at {self.clock()} to fire",
                                  lambda: f"due: {self.describe_jobs(self.due_jobs())}")

    def describe_jobs(self, names: Iterable[str], limit: int = 3) -> str:
        """A few jobs, each with its due time, data and last triggers (outcome, status)."""
        jobs = self.sidecar.jobs()
        triggers = self.sidecar.job_triggers
        shown = {name: (jobs[name].due_time_text, jobs[name].data,
                        [(t.outcome, t.status_code) for t in triggers if t.name == name][-3:])
                 for name in list(names)[:limit] if name in jobs}
        return f"{len(list(names))} jobs, e.g. {shown}"

    async def drain_jobs(self, wait: float = 60.0) -> None:
        """Advance past every retry until no job is left (all fired, or lost)."""
        await self._drain(lambda: list(self.sidecar.jobs()), "every job to fire", wait)

    async def _drain(self, left: Callable[[], list[str]], what: str, wait: float) -> None:
        """Move the clock 11 s at a time (the jobs' retry interval is 10 s) until `left()`
        is empty; TimeoutError naming the jobs left after DRAIN_SECONDS (or 200 steps)."""
        deadline = anyio.current_time() + DRAIN_SECONDS
        for _ in range(200):
            if not left():
                return
            if anyio.current_time() >= deadline:
                break
            await self.fire_until(self.clock() + timedelta(seconds=11),
                                  timedelta(seconds=11), wait)
        if left():
            raise TimeoutError(f"waited {DRAIN_SECONDS:.0f}s (or 200 steps of 11 s) for "
                               f"{what}; now {self.clock()}: {self.describe_jobs(left())}")

    def retrying(self) -> list[str]:
        """Jobs whose last trigger failed and that wait for their failure policy."""
        last = {t.name: t.outcome for t in self.sidecar.job_triggers}
        return [n for n in self.sidecar.jobs() if last.get(n) == "retry"]

    async def drain_retries(self, wait: float = 60.0) -> None:
        """Advance 11 s at a time (the policy's interval is 10 s) until no retry waits."""
        await self._drain(self.retrying, "every retrying job trigger to succeed or be lost",
                          wait)

    def check_no_raw_ids(self) -> None:
        """State keys and job names are digests (no user text reaches a URL or a key)."""
        for key in self.sidecar.state():
            assert SAFE_KEY.fullmatch(key), key
        for name in self.sidecar.jobs():
            assert SAFE_JOB.fullmatch(name), name
        for trigger in self.sidecar.job_triggers:
            assert SAFE_JOB.fullmatch(trigger.name), trigger.name


def reminder_counts(reminders: list[dict[str, Any]]) -> dict[tuple[Any, ...], set[str]]:
    """(user, task, remind_at) -> the set of reminder.due ids published for it."""
    out: dict[tuple[Any, ...], set[str]] = {}
    for env in reminders:
        d = env["data"]
        key = (d["user_id"], json.dumps(d["task_id"]), d["remind_at"])
        out.setdefault(key, set()).add(env["id"])
    return out


COARSE_STEP_GRACE = "P2D"


@asynccontextmanager
async def cluster(replicas: int = 2, env: dict[str, str] | None = None,
                  sidecar_options: dict[str, Any] | None = None,
                  start: bool = True) -> AsyncIterator[Cluster]:
    clock = ManualClock(START)
    ports = [free_port() for _ in range(replicas)]
    # Cluster tests move the clock in steps of hours (`fire_until`), so triggers run
    # hours late by construction: a wide misfire grace keeps them about what they
    # test (crashes, races, faults), unless `env` sets it. The policy has its own tests.
    env = {"REMINDER_MISFIRE_GRACE": COARSE_STEP_GRACE, **(env or {})}
    options: dict[str, Any] = {
        "app_base_url": f"http://127.0.0.1:{ports[0]}",
        "replica_urls": tuple(f"http://127.0.0.1:{p}" for p in ports[1:]),
        "dapr_api_token": env.get("DAPR_API_TOKEN"),
        "app_api_token": env.get("APP_API_TOKEN"),
        # the task service stands in: invoking another app id is a 500, as on daprd
        "stub_apps": (env.get("REMINDER_TASK_APP_ID", "todo-backend"),),
        # a replica being restarted must not make events run out of attempts
        "delivery_max_attempts": 200,
        "delivery_retry_interval": timedelta(seconds=0.05),
        "fault_exempt_keys": (READY_PROBE_KEY,),
        **(sidecar_options or {}),
    }
    config = SidecarConfig(**options)
    sidecar = DevSidecar(config, clock=clock)
    async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", 0)
        c = Cluster(sidecar, clock, f"http://127.0.0.1:{port}", client, tg, env, ports)
        try:
            if start:
                for i in range(replicas):
                    await c.start_replica(i)
                await c.wait_until(lambda: sidecar.app_ready, 5.0,
                                   "the sidecar to discover the app's subscriptions")
            yield c
        finally:
            # A kill hook at work restarts replicas: let it finish first (restarted after
            # the stops below, they would be cancelled, not stopped, and leave their
            # listening sockets open).
            c.closing = True
            await c.wait_until(lambda: not c.killing,
                               REPLICA_EXIT_SECONDS + 2 * REPLICA_START_SECONDS,
                               "the kill hook to finish", hook=False)
            for i in list(c.replicas):
                await c.stop_replica(i)
            tg.cancel_scope.cancel()
