"""`--check`: can this worker run beside this sidecar? One line per check
(docs/operations.md, "--check").

Every check asks the sidecar itself: it answers at all; it accepts DAPR_API_TOKEN;
then the checks of its /v1.0/metadata that /readyz also runs
(`worker.dapr.readiness.metadata_checks`: daprd's version, the components, the
state store's features, the subscription); the jobs API schedules, reads back and
deletes a probe job far in the future. The `secret:` settings are read first (a
line of their own), so the checks see their values. A missing subscription is a
failure only while something answers on the app port: daprd asks the worker for it
once the port is open, so before the worker starts (a pre-flight check) the line is
`info`, not checkable yet.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import IO, Final

import anyio

from worker.commands.connect import connect, resolve_secrets
from worker.commands.daemon import Running
from worker.dapr.readiness import Result, metadata_checks, subscription_name
from worker.dapr.sidecar import Sidecar
from worker.errors import PermanentSidecarError, SettingsError, TransientError
from worker.settings import Settings, env_name

PROBE_AHEAD: Final = timedelta(days=3650)  # the probe job never fires: deleted at once
EXIT_OK, EXIT_FAILED = 0, 1
DEV_DISCOVERY_PATIENCE: Final = 5.0  # --check --dev: the embedded sidecar asks the app
APP_PORT_PATIENCE: Final = 1.0  # seconds to connect to the app port (is the worker up?)


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
    """Every check, in order; later ones skipped when the sidecar is away."""
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
    results += [await _subscription_now(settings, r) if r.name == subscription_name(settings)
                else r for r in checked]
    if checked[0].ok:  # the version decides the jobs path
        await sidecar.choose_jobs_api()
    results.append(await _probe_jobs(sidecar, now))
    return results


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
    from devsidecar.devrun import resolve_dev_secrets, run_dev  # absent from the image

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
