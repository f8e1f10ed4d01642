"""`--dev`: the daemon beside the embedded development sidecar, and `--demo`.

For laptops and tests only: the development sidecar keeps everything in
memory and is not Dapr. In production run beside a real daprd.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx2
import structlog

from devsidecar import DevSidecar, SidecarConfig, serve_sidecar
from worker.clock import system_clock
from worker.daemon import Running, run_daemon
from worker.errors import SettingsError
from worker.listen import listen
from worker.schedule import format_utc
from worker.settings import Settings

DEV_SECRETS_FILE: Final = "dev-secrets.json"  # read by the dev secret store, if present
log = structlog.get_logger("worker")


def _echo(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


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


async def run_dev(settings: Settings, running: Running, *, demo: bool = False,
                  tell: bool = True,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the development sidecar and the daemon until `running.stop` is set; `tell`:
    print how to publish a task event to it once ready."""
    if settings.port == 0:
        raise SettingsError("REMINDER_PORT: --dev needs a fixed port (0 picks one at random, "
                            "which the development sidecar could not call); set it, e.g. 8080")
    port_env = "DAPR_HTTP_ENDPOINT" if settings.dapr_http_endpoint else "DAPR_HTTP_PORT"
    # Tried before anything starts: a second `make run` says which port is taken.
    listen("127.0.0.1", sidecar_port(settings), "127.0.0.1", port_env).close()
    sidecar = DevSidecar(sidecar_config(settings))
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_sidecar, sidecar, "127.0.0.1", sidecar_port(settings))
        log.warning("development sidecar: in-memory, NOT for production", port=port)
        await tg.start(partial(run_daemon, settings, running=running))
        task_status.started()
        if tell:
            _echo(how_to_publish(settings))
        if demo:
            await publish_demo(settings)
        await running.stop.wait()
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
            f"reminder-worker --explain me 1 shows the task")


def demo_events(now_iso: str, due_iso: str, later_iso: str) -> list[dict[str, Any]]:
    """A task whose reminder fires ~15 s from now, and a recurring task completed."""
    return [
        {"event_type": "task.created", "event_version": "1.0", "event_id": "demo-1",
         "task_id": 1, "user_id": "demo-user", "timestamp": now_iso,
         "payload": {"title": "Demo: stretch your legs", "due_at": due_iso,
                     "timezone": "Europe/Berlin", "reminders": ["PT1M45S"]}},
        {"event_type": "task.created", "event_version": "1.0", "event_id": "demo-2",
         "task_id": 2, "user_id": "demo-user", "timestamp": now_iso,
         "payload": {"title": "Demo: water the plants", "due_at": later_iso,
                     "timezone": "Europe/Berlin", "recurrence": "FREQ=WEEKLY;COUNT=10"}},
        {"event_type": "task.completed", "event_version": "1.0", "event_id": "demo-3",
         "task_id": 2, "user_id": "demo-user", "timestamp": now_iso.replace("Z", ".5Z"),
         # carries the whole task, so its meaning does not depend on delivery order
         "payload": {"title": "Demo: water the plants", "due_at": later_iso,
                     "timezone": "Europe/Berlin", "recurrence": "FREQ=WEEKLY;COUNT=10"}},
    ]


async def publish_demo(settings: Settings) -> None:
    """Publish demo task events the way the task service would (through the sidecar)."""
    now = system_clock().replace(microsecond=0)
    events = demo_events(format_utc(now), format_utc(now + timedelta(minutes=2)),
                         format_utc(now + timedelta(hours=1)))
    url = f"{settings.sidecar_url}/v1.0/publish/{settings.pubsub}/{settings.task_topic}"
    headers = {"content-type": "application/json"}
    if settings.dapr_api_token:
        headers["dapr-api-token"] = settings.dapr_api_token.get_secret_value()
    async with httpx2.AsyncClient() as client:
        for event in events:
            resp = await client.post(url, content=json.dumps(event), headers=headers)
            resp.raise_for_status()
    _echo("demo: published 3 task events; a reminder.due for task 1 fires in about 15 s, "
          "task 2's next occurrence is requested now. Ctrl-C to stop.")
