"""`--dev`: the daemon beside the embedded development sidecar, and `--demo`.

For laptops and tests only: the development sidecar keeps everything in
memory and is not Dapr. In production run beside a real daprd.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import anyio
import httpx2
import structlog

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from devsidecar.asgi import ApiError
from devsidecar.secretstores import SecretStores
from worker.clock import Clock, system_clock
from worker.commands.daemon import Running, run_daemon
from worker.errors import SettingsError
from worker.schedule import format_utc
from worker.server.listen import listen
from worker.settings import Settings, env_name, with_secrets

DEV_SECRETS_FILE: Final = "dev-secrets.json"  # read by the dev secret store, if present
log = structlog.get_logger("worker")


def _echo(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def resolve_dev_secrets(settings: Settings) -> Settings:
    """`settings` with their `secret:NAME/KEY` values read from DEV_SECRETS_FILE (the
    development sidecar's secret store) before anything starts, so the development
    sidecar is configured with the values (its app token, component names, the app
    port), never with the reference text. SettingsError naming the variable."""
    refs = settings.secret_refs()
    if not refs:
        return settings
    assert settings.secret_store is not None
    first = env_name(next(iter(refs)))
    if not Path(DEV_SECRETS_FILE).exists():
        raise SettingsError(f"{first}: --dev reads secret: settings from {DEV_SECRETS_FILE} "
                            f"in the current directory ({Path.cwd()}), which does not exist")
    store = SecretStores({settings.secret_store: DEV_SECRETS_FILE})
    resolved: dict[str, str] = {}
    for field_name, (name, key) in refs.items():
        try:
            values = store.secret(settings.secret_store, name)
        except ApiError as exc:
            raise SettingsError(f"{env_name(field_name)}: cannot read secret {name} from "
                                f"{DEV_SECRETS_FILE}: {exc.message}") from None
        if key not in values:
            raise SettingsError(f"{env_name(field_name)}: secret {name} has no key {key} "
                                f"(in {DEV_SECRETS_FILE})")
        resolved[field_name] = values[key]
    return with_secrets(settings, resolved)


def sidecar_config(settings: Settings) -> SidecarConfig:
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    secrets: dict[str, str] = {}
    if settings.secret_store and Path(DEV_SECRETS_FILE).exists():
        secrets[settings.secret_store] = DEV_SECRETS_FILE
    return SidecarConfig(
        app_id=settings.app_id,
        app_base_url=f"http://{host}:{settings.port}",
        pubsubs=(settings.pubsub,),
        state_stores=(settings.state_store,),
        secret_stores=secrets,
        dapr_api_token=settings.dapr_api_token.get_secret_value()
        if settings.dapr_api_token else None,
        app_api_token=settings.app_api_token.get_secret_value()
        if settings.app_api_token else None,
        stub_apps=(settings.task_app_id,),  # no task service here: the sidecar answers {}
        echo=_echo,
    )


def sidecar_port(settings: Settings) -> int:
    if settings.dapr_http_endpoint:
        return urlsplit(settings.dapr_http_endpoint).port or 80
    return settings.dapr_http_port


def sidecar_address(settings: Settings) -> tuple[str, int, str, str]:
    """Where the development sidecar listens, and the settings that say so."""
    port_env = "DAPR_HTTP_ENDPOINT" if settings.dapr_http_endpoint else "DAPR_HTTP_PORT"
    return "127.0.0.1", sidecar_port(settings), "127.0.0.1", port_env


async def run_dev(settings: Settings, running: Running, *, demo: bool = False,
                  tell: bool = True,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the development sidecar and the daemon until `running.stop` is set; `tell`:
    print how to publish a task event to it once ready."""
    settings = resolve_dev_secrets(settings)
    if settings.port == 0:
        raise SettingsError("REMINDER_PORT: --dev needs a fixed port (0 picks one at random, "
                            "which the development sidecar could not call); set it, e.g. 8080")
    # Tried before anything starts: a second `make run` says which port is taken.
    listen(*sidecar_address(settings)).close()
    sidecar = DevSidecar(sidecar_config(settings))
    drained = anyio.Event()

    async def daemon(*, task_status: anyio.abc.TaskStatus[Running]) -> None:
        try:
            await run_daemon(settings, running=running, task_status=task_status)
        finally:
            drained.set()

    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", sidecar_port(settings))
        log.warning("development sidecar: in-memory, NOT for production", port=port)
        await tg.start(daemon)
        task_status.started()
        if tell:
            _echo(how_to_publish(settings))
        if demo:  # beside the daemon: a stop during the demo does not wait for its end
            tg.start_soon(publish_demo, settings)
        # Once stopped, the daemon drains and closes its ports (the sidecar still up to
        # answer the requests in flight); only then go the sidecar and the demo.
        await drained.wait()
        tg.cancel_scope.cancel()


def how_to_publish(settings: Settings) -> str:
    """The exact command that publishes one task event to the embedded sidecar."""
    url = f"{settings.sidecar_url}/v1.0/publish/{settings.pubsub}/{settings.task_topic}"
    token = (" -H 'dapr-api-token: '\"$DAPR_API_TOKEN\"" if settings.dapr_api_token else "")
    event = json.dumps({"event_type": "task.created", "task_id": 1, "user_id": "me",
                        "timestamp": "2030-01-01T00:00:00Z",
                        "payload": {"title": "try me", "due_at": "2030-01-01T09:00:00",
                                    "timezone": "Europe/Berlin", "reminders": ["PT1H"]}})
    return ("ready. Publish a task event to the development sidecar with:\n"
            f"  curl -sS -X POST {url} -H 'content-type: application/json'{token} "
            f"-d '{event}'\n"
            f"then look at {settings.sidecar_url}/dev/jobs, /dev/state/{settings.state_store}, "
            "/dev/published, /dev/dead-letters; "
            f"{Path(sys.executable).with_name('reminder-worker')} --explain me 1 shows the task")


# The demo (docs/operations.md, "--dev and the demo") in real time, over at most
# DEMO_SECONDS: what it publishes and when, from its start. Its zone is one with DST,
# like most users'.
DEMO_ZONE: Final = "Europe/Berlin"
DEMO_USER: Final = "demo-user"
DEMO_SECONDS: Final = 30
COMPLETE_OVERDUE_AFTER: Final = timedelta(seconds=28)  # after task 4's second repetition
OVERDUE_DUE_BEFORE: Final = timedelta(minutes=9, seconds=35)  # repetitions: -4m35s, +25s
QUIET_PATIENCE: Final = timedelta(seconds=30)  # quiet hours end at a whole minute
STEP_PATIENCE: Final = 5.0  # seconds for the development sidecar to take a step's events


@dataclass(frozen=True)
class DemoStep:
    after: timedelta  # from the demo's start
    events: list[dict[str, Any]]
    story: list[str]  # printed once the events are published


def _event(etype: str, task_id: int, at: datetime, payload: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    event = {"event_type": etype, "event_version": "1.0",
             "event_id": f"demo-{task_id}-{etype.removeprefix('task.')}",
             "task_id": task_id, "user_id": DEMO_USER, "timestamp": format_utc(at)}
    return event if payload is None else event | {"payload": payload}


def quiet_end(now: datetime) -> datetime:
    """When the demo's quiet hours end: the next whole minute if that is at most
    QUIET_PATIENCE away, else the minute just begun (then their end has passed and the
    deferred reminder goes at once)."""
    minute = now.replace(second=0, microsecond=0)
    following = minute + timedelta(minutes=1)
    return following if following - now <= QUIET_PATIENCE else minute


def demo_steps(now: datetime) -> list[DemoStep]:
    """The demo from `now` (aware UTC): a plain reminder, a completion-anchored series,
    a snooze, an overdue task repeating until done (one repetition too late for its
    misfire grace, one on time, the third cancelled by its completion), and two
    reminders deferred out of quiet hours into one."""
    zone = ZoneInfo(DEMO_ZONE)
    later = now + timedelta(hours=1)
    plants = {"title": "Demo: water the plants", "due_at": format_utc(later),
              "timezone": DEMO_ZONE,
              "recurrence": {"rrule": "FREQ=DAILY;INTERVAL=3", "anchor": "completion"}}
    overdue_due = now - OVERDUE_DUE_BEFORE
    end = quiet_end(now)
    quiet = {"start": f"{end.astimezone(zone) - timedelta(minutes=30):%H:%M}",
             "end": f"{end.astimezone(zone):%H:%M}"}
    before = now - timedelta(seconds=1)  # a task's events in order, each at a whole second
    first = DemoStep(timedelta(0), [
        _event("task.created", 1, now, {
            "title": "Demo: stretch your legs", "due_at": format_utc(now + timedelta(minutes=2)),
            "timezone": DEMO_ZONE, "reminders": ["PT1M45S"]}),
        _event("task.created", 2, before, plants),
        # carries the whole task, so its meaning does not depend on delivery order
        _event("task.completed", 2, now, plants),
        _event("task.created", 3, before, {"title": "Demo: call the bank",
                                           "timezone": DEMO_ZONE}),
        _event("task.snoozed", 3, now, {"for": "PT20S"}),
        _event("task.created", 4, now, {
            "title": "Demo: send the report", "due_at": format_utc(overdue_due),
            "timezone": DEMO_ZONE, "repeat": {"every": "PT5M", "max": 3},
            "misfire_grace": "PT2M"}),
        _event("task.created", 5, now, {
            "title": "Demo: plan the week", "due_at": format_utc(end + timedelta(hours=1)),
            "timezone": DEMO_ZONE, "reminders": ["PT1H3M", "PT1H2M"], "quiet_hours": quiet}),
    ], [
        "demo: five tasks published. Within 30 s:",
        "  task 2  done; it recurs 3 days after completion: its next occurrence is "
        "requested now (invoke ... create-next)",
        "  task 4  overdue, repeating every 5 min: the repetition due 4m35s ago is past "
        "its misfire grace (PT2M): logged as missed, not sent",
        f"  task 5  two reminders fell in its quiet hours ({quiet['start']}-{quiet['end']} "
        f"{DEMO_ZONE}): sent once, at their end, count 2 "
        f"(in {max(0, round((end - now).total_seconds()))} s)",
        "  task 1  a reminder, in about 15 s",
        "  task 3  snoozed for 20 s: a reminder of kind snooze",
        "  task 4  its next repetition (kind overdue) in about 25 s; at 28 s it is "
        "completed, which cancels the third",
    ])
    done = now + COMPLETE_OVERDUE_AFTER
    last = DemoStep(COMPLETE_OVERDUE_AFTER, [_event("task.completed", 4, done)], [
        "demo: task 4 completed: its third overdue reminder is cancelled. The worker "
        "keeps running; Ctrl-C to stop."])
    return [first, last]


async def publish_demo(settings: Settings, *, clock: Clock = system_clock,
                       sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                       echo: Callable[[str], None] = _echo) -> None:
    """Publish the demo's task events the way the task service would (through the
    sidecar), each step at its time, and say what to watch for."""
    start = clock().replace(microsecond=0)
    url = f"{settings.sidecar_url}/v1.0/publish/{settings.pubsub}/{settings.task_topic}"
    headers = {"content-type": "application/json"}
    if settings.dapr_api_token:
        headers["dapr-api-token"] = settings.dapr_api_token.get_secret_value()
    for step in demo_steps(start):
        wait = (start + step.after - clock()).total_seconds()
        if wait > 0:
            await sleep(wait)
        # A client per step, none open while the demo waits (a stop cancels the wait);
        # a step's few calls are not cut off halfway, or the client would leave its
        # sockets open.
        with anyio.fail_after(STEP_PATIENCE, shield=True):
            async with httpx2.AsyncClient() as client:
                for event in step.events:
                    resp = await client.post(url, content=json.dumps(event), headers=headers)
                    resp.raise_for_status()
        for line in step.story:
            echo(line)
