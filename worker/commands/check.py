"""`--check`: can this worker run beside this sidecar? One line per check, and /readyz.

Every check asks the sidecar itself (contract §5): it answers at all; it accepts
DAPR_API_TOKEN; daprd is 1.16 or later; the pub/sub, state store and (when set)
secret store components named by the settings are loaded; the state store has
the ETAG and TTL capabilities (names of components-contrib's state features, as
daprd lists them under each component's `capabilities` in /v1.0/metadata); the
jobs API schedules, reads back and deletes a probe job far in the future; the
task topic's subscription is registered (metadata `subscriptions`). The `secret:`
settings are read first (a line of their own), so the checks see their values. A
missing subscription is a failure only while something answers on the app port:
daprd asks the worker for it once the port is open, so before the worker starts
(a pre-flight check) the line is `info`, not checkable yet.

`metadata_checks` is pure (the metadata in, results out); `Readiness` runs those
for /readyz from a cached metadata document, refreshed while the port is probed.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import IO, Any, Final

import anyio
import structlog

from worker.commands.connect import connect, resolve_secrets
from worker.dapr.sidecar import Sidecar, runtime_release
from worker.errors import PermanentSidecarError, SettingsError, StartupError, TransientError
from worker.settings import Settings, env_name

# State features the worker relies on: compare-and-set saves and expiring tombstones.
NEEDED_STATE_FEATURES: Final = ("ETAG", "TTL")
PROBE_AHEAD: Final = timedelta(days=3650)  # the probe job never fires: deleted at once
# /readyz re-reads the metadata this often while all is well, and this often while not.
READY_REFRESH_OK: Final = 30.0
READY_REFRESH_FAILING: Final = 1.0
READY_GRACE: Final = 5.0  # seconds for daprd to find the subscription before it is told
READY_RECHECK_STARTING: Final = 0.1  # ... meanwhile `watch` reads the metadata this often
EXIT_OK, EXIT_FAILED = 0, 1
READY_PROBE_KEY: Final = "rw-readiness-probe"  # read by /readyz, never written
DEV_DISCOVERY_PATIENCE: Final = 5.0  # --check --dev: the embedded sidecar asks the app
APP_PORT_PATIENCE: Final = 1.0  # seconds to connect to the app port (is the worker up?)
log = structlog.get_logger("worker")


@dataclass(frozen=True)
class Result:
    """One check: passed or not, what was seen, and for a failure what to change."""

    name: str
    ok: bool | None  # None: not run, an earlier check it depends on failed (or `info`)
    detail: str
    info: bool = False  # not checkable yet (ok None): information, not a failure

    def line(self) -> str:
        mark = "info" if self.info else {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        return f"{mark}  {self.name}: {self.detail}"


def _components(meta: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    found = meta.get("components")
    return {str(c.get("name")): c for c in found if isinstance(c, dict)
            and str(c.get("type", "")).startswith(kind + ".")} if isinstance(found, list) else {}


def _component(meta: dict[str, Any], kind: str, name: str, env: str, what: str) -> Result:
    have = _components(meta, kind)
    title = f"{what} {name!r}"
    if name in have:
        return Result(title, True, f"loaded ({have[name].get('type')})")
    others = ", ".join(sorted(have)) or "none"
    return Result(title, False, f"not loaded (the sidecar has {kind} components: {others}); "
                                f"set {env} to one of them, or load a {kind} component named "
                                f"{name!r} (components/, --resources-path)")


def metadata_checks(settings: Settings, meta: dict[str, Any]) -> list[Result]:
    """Every check that reads /v1.0/metadata (also what decides /readyz)."""
    results: list[Result] = []
    version = meta.get("runtimeVersion")
    try:
        runtime_release(version if isinstance(version, str) else "")
        results.append(Result("daprd version", True, f"{version} (1.16 or later needed)"))
    except StartupError as exc:
        results.append(Result("daprd version", False, str(exc)))
    results.append(_component(meta, "pubsub", settings.pubsub, "REMINDER_PUBSUB",
                              "pub/sub component"))
    store = _component(meta, "state", settings.state_store, "REMINDER_STATE_STORE",
                       "state store")
    results.append(store)
    title = f"state store {settings.state_store!r} features"
    if store.ok:
        component = _components(meta, "state")[settings.state_store]
        caps = component.get("capabilities")
        caps = [str(c) for c in caps] if isinstance(caps, list) else []
        missing = [f for f in NEEDED_STATE_FEATURES if f not in caps]
        if missing:
            results.append(Result(title, False, f"{component.get('type')} lacks "
                                  f"{', '.join(missing)} (it reports {', '.join(caps) or 'none'})"
                                  "; use a store with ETags and TTL (PostgreSQL v2, Redis)"))
        else:
            results.append(Result(title, True, ", ".join(NEEDED_STATE_FEATURES)))
    else:
        results.append(Result(title, None, "no such store"))
    if settings.secret_store:
        results.append(_component(meta, "secretstores", settings.secret_store,
                                  "REMINDER_SECRET_STORE", "secret store"))
    else:
        results.append(Result("secret store", True, "not set (REMINDER_SECRET_STORE), "
                                                    "no secret: settings to resolve"))
    subs = meta.get("subscriptions")
    wanted = (settings.pubsub, settings.task_topic)
    found = isinstance(subs, list) and any(
        isinstance(s, dict) and (s.get("pubsubname"), s.get("topic")) == wanted for s in subs)
    name = _subscription(settings)
    results.append(Result(name, True, "registered") if found else Result(
        name, False, "not registered; daprd asks the worker (GET /dapr/subscribe) once its app "
                     "port is open: start the worker, check the sidecar's app port "
                     f"(REMINDER_PORT {settings.port}), or the declarative Subscription"))
    return results


async def _probe_jobs(sidecar: Sidecar, now: datetime) -> Result:
    name = f"rw-check-{secrets.token_hex(8)}"
    title = "jobs API"
    try:
        await sidecar.job_schedule(name, now + PROBE_AHEAD, {"probe": "reminder-worker --check"})
        got = await sidecar.job_get(name)
        await sidecar.job_delete(name)
        gone = await sidecar.job_get(name)
    except (TransientError, PermanentSidecarError) as exc:
        return Result(title, False, f"{sidecar.jobs_prefix}: {exc}; is the Dapr scheduler "
                                    "running and reachable from daprd (--scheduler-host-address)?")
    if got is None or gone is not None:
        return Result(title, False, f"probe job {name} was scheduled but "
                                    + ("not found again" if got is None else "not deleted"))
    return Result(title, True, f"probe job scheduled, read back and deleted "
                               f"({sidecar.jobs_prefix})")


async def run_checks(settings: Settings, sidecar: Sidecar, now: datetime) -> list[Result]:
    """Every check of contract §5, in order; later ones skipped when the sidecar is away."""
    url = settings.sidecar_url
    rest = ["DAPR_API_TOKEN", "daprd version", "components, features, subscription", "jobs API"]
    if not await sidecar.outbound_healthy():
        return [Result("sidecar reachable", False,
                       f"nothing answers GET {url}/v1.0/healthz/outbound; start daprd beside "
                       "the worker (DAPR_HTTP_PORT / DAPR_HTTP_ENDPOINT say where), "
                       "or try --dev"),
                *(Result(name, None, "sidecar not reachable") for name in rest)]
    results = [Result("sidecar reachable", True, url)]
    try:
        meta = await sidecar.metadata()
    except PermanentSidecarError as exc:
        if exc.status in (401, 403):
            detail = (f"the sidecar rejects it (HTTP {exc.status}); set DAPR_API_TOKEN to the "
                      "sidecar's API token" if sidecar.headers else
                      f"the sidecar wants one (HTTP {exc.status}); set DAPR_API_TOKEN")
            return [*results, Result("DAPR_API_TOKEN", False, detail),
                    *(Result(name, None, "token refused") for name in rest[1:])]
        return [*results, Result("metadata", False, str(exc))]
    except TransientError as exc:
        return [*results, Result("metadata", False, f"GET /v1.0/metadata failed: {exc}")]
    results.append(Result("DAPR_API_TOKEN", True, "accepted" if sidecar.headers
                          else "not set, and the sidecar asks for none"))
    if refs := settings.secret_refs():
        names = ", ".join(env_name(f) for f in refs)
        try:
            settings = await resolve_secrets(settings, sidecar)
            results.append(Result("secret settings", True, f"{names} read from secret "
                                  f"store {settings.secret_store!r}"))
        except SettingsError as exc:  # the checks below see those settings' defaults
            results.append(Result("secret settings", False, str(exc)))
    checked = metadata_checks(settings, meta)
    results += [await _subscription_now(settings, r) if r.name == _subscription(settings)
                else r for r in checked]
    if checked[0].ok:  # the version decides the jobs path
        await sidecar.choose_jobs_api()
    results.append(await _probe_jobs(sidecar, now))
    return results


def _subscription(settings: Settings) -> str:
    return f"subscription {settings.pubsub}/{settings.task_topic}"


async def app_port_answers(settings: Settings) -> bool:
    """Something accepts connections on the worker's app port (REMINDER_HOST:PORT)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host,
                                                                     settings.host)
    with anyio.move_on_after(APP_PORT_PATIENCE):
        try:
            stream = await anyio.connect_tcp(host, settings.port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def _subscription_now(settings: Settings, result: Result) -> Result:
    """A missing subscription fails only while the worker runs: daprd asks the app
    for it (GET /dapr/subscribe) once the app port answers, so before the worker
    starts it cannot be checked yet."""
    if result.ok is not False or await app_port_answers(settings):
        return result
    return Result(result.name, None, f"not checkable yet: nothing answers on the app port "
                  f"({settings.host}:{settings.port}, REMINDER_HOST/REMINDER_PORT), and daprd "
                  "asks the worker for its subscriptions (GET /dapr/subscribe) once it does; "
                  "run --check again once the worker runs", info=True)


def print_results(results: Sequence[Result], out: IO[str] = sys.stdout) -> int:
    for result in results:
        print(result.line(), file=out)
    failed = sum(1 for r in results if r.ok is False)
    later = sum(1 for r in results if r.info)
    checked = len(results) - later
    summary = (f"{checked - failed} of {checked} checks passed" if not failed
               else f"{failed} check{'s' * (failed != 1)} failed")
    if later:
        summary += f"; {later} not checkable yet (see info)"
    print(summary, file=out)
    return EXIT_FAILED if failed else EXIT_OK


class Readiness:
    """The metadata checks behind /readyz, from a cached /v1.0/metadata: at most one
    read per refresh interval, so probes stay fast. `watch` keeps it fresh without
    probes and the reason is logged: at start-up, then whenever it changes."""

    def __init__(self, settings: Settings, sidecar: Sidecar,
                 clock: Callable[[], float] = anyio.current_time,
                 started: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.sidecar = sidecar
        self.clock = clock
        self.reason: str | None = "not checked yet"
        self.started = started or {}  # the start-up line's fields
        self.told = False  # the start-up line is logged
        self.waits_for_subscription = False  # the subscription is all that is missing
        self._checked_at: float | None = None
        self._lock = anyio.Lock()
        self.store_reason: str | None = None  # the last store read's failure (`watch`)

    async def not_ready(self) -> str | None:
        """None when the sidecar has what the worker needs, else the first failure."""
        async with self._lock:
            now = self.clock()
            if self._checked_at is not None and now - self._checked_at < self.every:
                return self.reason
            self._checked_at = now
            self.waits_for_subscription = False
            try:
                meta = await self.sidecar.metadata()
            except (TransientError, PermanentSidecarError) as exc:
                reason: str | None = f"metadata: {exc}"
                # not kept: the next probe asks again (a sidecar that is back must not
                # wait out the interval; one that is down answers at once)
                self._checked_at = None
            else:
                failed = [r for r in metadata_checks(self.settings, meta) if r.ok is False]
                reason = failed[0].line()[6:] if failed else None
                self.waits_for_subscription = [r.name for r in failed] == [
                    _subscription(self.settings)]
                if reason is None:
                    reason = self.store_reason
            if reason != self.reason and self.told:
                if reason is None:
                    log.info("ready: the sidecar has what the worker needs")
                else:
                    log.warning("not ready", reason=reason)
            self.reason = reason
            if reason is None:
                self.tell()
            return reason

    async def refresh_store(self) -> None:
        """One read of a key nobody writes, by `watch` (never on a probe's time: a slow
        store must not make /readyz slow): daprd's own health stays green while the
        database behind its state store is down (seen with Redis), and a worker that
        cannot read or write records applies nothing."""
        store = self.settings.state_store
        try:
            await self.sidecar.state_probe(store, READY_PROBE_KEY)
        except (TransientError, PermanentSidecarError) as exc:
            self.store_reason = f"state store {store} does not answer: {exc}"
        else:
            self.store_reason = None

    @property
    def every(self) -> float:
        """How long a reading holds. A failing one holds not at all while starting (the
        start-up line not told yet): daprd is about to find the subscription, and a
        probe must see it at once."""
        if self.reason is None:
            return READY_REFRESH_OK
        return READY_REFRESH_FAILING if self.told else 0.0

    def tell(self) -> None:
        """The start-up line, once: `worker ready`, or why it is not."""
        if self.told:
            return
        self.told = True
        if self.reason is None:
            log.info("worker ready", **self.started)
        else:
            log.warning("worker started, not ready", reason=self.reason,
                        hint="/readyz answers 503 until this is fixed", **self.started)

    async def watch(self, stop: anyio.Event, grace: float = READY_GRACE) -> None:
        """Refresh until `stop`: the start-up line once ready, or with the reason at
        once, but for a missing subscription after `grace` seconds (daprd asks for it
        only once the app port is open, so a first look may find none); then every
        change."""
        deadline = self.clock() + grace
        while not stop.is_set():
            await self.refresh_store()
            self._checked_at = None  # a changed store verdict is seen at once
            await self.not_ready()
            if not self.told and (not self.waits_for_subscription
                                  or self.clock() >= deadline):
                self.tell()
            with anyio.move_on_after(self.every or READY_RECHECK_STARTING):
                await stop.wait()


@asynccontextmanager
async def open_sidecar(settings: Settings) -> AsyncIterator[Sidecar]:
    """A sidecar client for a one-off command (no metrics kept), wired by `connect`."""
    async with connect(settings) as conn:
        yield conn.sidecar


async def _subscribed(settings: Settings, sidecar: Sidecar, patience: float) -> None:
    """Wait (bounded) until the embedded sidecar has discovered the subscription."""
    deadline = anyio.current_time() + patience
    while anyio.current_time() < deadline:
        subs = (await sidecar.metadata()).get("subscriptions") or []
        if any(s.get("topic") == settings.task_topic for s in subs if isinstance(s, dict)):
            return
        await anyio.sleep(0.05)


async def check(settings: Settings, dev: bool, now: datetime) -> list[Result]:
    """Run the checks against the configured sidecar, or (dev) the embedded one with the
    worker beside it, as `--dev` runs them."""
    if not dev:
        async with open_sidecar(settings) as sidecar:
            return await run_checks(settings, sidecar, now)
    from devsidecar.devrun import resolve_dev_secrets, run_dev
    from worker.commands.daemon import Running

    settings = resolve_dev_secrets(settings)
    running = Running()
    async with anyio.create_task_group() as tg:
        await tg.start(partial(run_dev, settings, running, tell=False))
        async with open_sidecar(settings) as sidecar:
            await _subscribed(settings, sidecar, DEV_DISCOVERY_PATIENCE)
            results = await run_checks(settings, sidecar, now)
        running.stop.set()
    return results


def check_main(settings: Settings, dev: bool, now: datetime) -> int:
    return print_results(anyio.run(check, settings, dev, now))
