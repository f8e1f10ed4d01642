"""Does the sidecar have what the worker needs? The checks that read daprd's
/v1.0/metadata, shared by `--check` (worker.commands.check) and /readyz.

`metadata_checks` is pure (the metadata in, results out): daprd is 1.16 or later;
the pub/sub, state store and (when set) secret store components named by the
settings are loaded; the state store has the ETAG and TTL capabilities (names of
components-contrib's state features, as daprd lists them under each component's
`capabilities`); the task topic's subscription is registered (metadata
`subscriptions`). `Readiness` runs those for /readyz from a cached metadata
document, refreshed while the port is probed, and reads a key of its own from the
state store in the background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import structlog

from worker.dapr.sidecar import Sidecar, runtime_release
from worker.errors import PermanentSidecarError, StartupError, TransientError
from worker.settings import Settings

# State features the worker relies on: compare-and-set saves and expiring tombstones.
NEEDED_STATE_FEATURES: Final = ("ETAG", "TTL")
# /readyz re-reads the metadata this often while all is well, and this often while not.
READY_REFRESH_OK: Final = 30.0
READY_REFRESH_FAILING: Final = 1.0
READY_GRACE: Final = 5.0  # seconds for daprd to find the subscription before it is told
READY_RECHECK_STARTING: Final = 0.1  # ... meanwhile `watch` reads the metadata this often
READY_PROBE_KEY: Final = "rw-readiness-probe"  # read by /readyz, never written
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
    name = subscription_name(settings)
    results.append(Result(name, True, "registered") if found else Result(
        name, False, "not registered; daprd asks the worker (GET /dapr/subscribe) once its app "
                     "port is open: start the worker, check the sidecar's app port "
                     f"(REMINDER_PORT {settings.port}), or the declarative Subscription"))
    return results


def subscription_name(settings: Settings) -> str:
    """The name of the subscription's check (its `Result.name`)."""
    return f"subscription {settings.pubsub}/{settings.task_topic}"


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
                    subscription_name(self.settings)]
                if reason is None and self.store_reason is not None:
                    # failing: read again now, so a store that is back is seen at once
                    # (a healthy one is read by `watch` only, never on a probe's time)
                    await self.refresh_store()
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
