"""`--dev --demo` (make run): what the demo shows, within its 30 seconds, on a manual
clock (the demo itself runs in real time)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from devsidecar.devrun import (
    DEMO_SECONDS,
    DEV_SECRETS_FILE,
    demo_steps,
    publish_demo,
    quiet_end,
    resolve_dev_secrets,
    run_dev,
)
from tests.harness import START, Stack, free_port, stack
from worker.commands.daemon import Running
from worker.errors import SettingsError
from worker.schedule import format_utc
from worker.settings import load_settings

pytestmark = pytest.mark.anyio


def _quiet(s: Stack) -> bool:
    """Every task event answered and no job due at the stack's `now`."""
    final = {d.event_id for d in s.sidecar.deliveries if d.outcome in ("done", "drop")}
    events = {p.envelope["id"] for p in s.sidecar.published if p.topic == "task-events"}
    return events <= final and all(j.due_time > s.clock() for j in s.sidecar.jobs().values())


@pytest.mark.parametrize("start", [START, START + timedelta(seconds=40)],
                         ids=["quiet-hours-ended-at-the-minute", "quiet-hours-end-20s-later"])
async def test_the_demo_shows_the_reminder_rules_within_30_seconds(start: datetime) -> None:
    async with stack() as s:
        s.clock.set(start)
        lines: list[str] = []

        async def sleep(seconds: float) -> None:  # the demo's waits move the manual clock
            await s.sidecar.wait_for(lambda: _quiet(s))
            s.clock.advance(timedelta(seconds=seconds))
            await s.sidecar.wait_for(lambda: _quiet(s))

        await publish_demo(s.settings, clock=s.clock, sleep=sleep, echo=lines.append)
        await sleep((start + timedelta(seconds=DEMO_SECONDS) - s.clock()).total_seconds())
        shown = {(r["data"]["task_id"], r["data"]["kind"], r["data"]["remind_at"]):
                 {k: r["data"][k] for k in ("deferred_from", "count") if k in r["data"]}
                 for r in s.reminders()}
        end = quiet_end(start)

        def at(seconds: float) -> str:
            return format_utc(start + timedelta(seconds=seconds))

        assert shown == {
            (1, "reminder", at(15)): {},  # a plain reminder
            (3, "snooze", at(20)): {},  # snoozed for 20 s, from its event's timestamp
            (4, "overdue", at(25)): {},  # repeat until done: the repetition on time
            # quiet hours: two reminders (3 and 2 minutes before their end) sent as one
            (5, "reminder", format_utc(end)): {
                "deferred_from": format_utc(end - timedelta(minutes=3)), "count": 2},
        }
        assert all(r["data"]["fired_at"] <= at(DEMO_SECONDS) for r in s.reminders())
        # the repetition 4m35s late was past the misfire grace: counted, not sent
        assert 'reminder_worker_reminders_missed_total{kind="overdue"} 1.0' in await s.metrics()
        # the completion-anchored series: 3 days after completion, at the due time of day
        [invocation] = s.sidecar.invocations
        assert (invocation.json["parent_task_id"], invocation.json["next_due_at"]) == (
            2, at(3 * 24 * 3600 + 3600))
        # the completion at 28 s cancelled the third repetition (due 5m25s after the start)
        await sleep(10 * 60)
        assert len(s.reminders()) == 4
        assert not s.sidecar.jobs()
        assert lines[0] == "demo: five tasks published. Within 30 s:"
        assert lines[-1].startswith("demo: task 4 completed")


def test_the_demo_ends_within_its_30_seconds() -> None:
    for start in (START, START + timedelta(seconds=1), START + timedelta(seconds=59)):
        assert all(step.after <= timedelta(seconds=DEMO_SECONDS) for step in demo_steps(start))
        assert start <= quiet_end(start) + timedelta(minutes=1)
        assert quiet_end(start) - start <= timedelta(seconds=30)


async def test_make_run_stops_at_once_during_the_demo() -> None:
    # Ctrl-C during the demo must not wait for its last step (28 s on): the demo runs
    # beside the wait for the stop, not before it.
    settings = load_settings({"DAPR_HTTP_PORT": str(free_port()),
                              "REMINDER_PORT": str(free_port()), "REMINDER_OPS_PORT": "0",
                              "REMINDER_OPS_HOST": "127.0.0.1"})
    running = Running()
    # the demo's last step comes 28 s after its start: leaving within 15 s proves the
    # stop did not wait for it
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            await tg.start(partial(run_dev, settings, running, demo=True, tell=False))
            for _ in itertools.count():  # until the demo's first step is published
                published = await client.get(f"{settings.sidecar_url}/dev/published")
                if len(published.json()) >= 7:
                    break
                await anyio.sleep(0.05)
            running.stop.set()


async def test_dev_resolves_secret_settings_before_configuring_its_sidecar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: APP_API_TOKEN and REMINDER_DEFAULT_REMINDERS as secret:NAME/KEY under
    --dev. The development sidecar gets the token's value (not the reference text), so
    it discovers the subscription and a published event is applied, with the default
    reminder read from the store (the key components/local/secrets.json ships)."""
    (tmp_path / DEV_SECRETS_FILE).write_text(json.dumps({
        "tokens": {"app": "s3cret-app-token"},
        "reminder-worker-settings": {"default-reminders": "PT15M"}}))
    monkeypatch.chdir(tmp_path)
    settings = load_settings({
        "DAPR_HTTP_PORT": str(free_port()), "REMINDER_PORT": str(free_port()),
        "REMINDER_OPS_PORT": "0", "REMINDER_OPS_HOST": "127.0.0.1",
        "REMINDER_SECRET_STORE": "secretstore", "APP_API_TOKEN": "secret:tokens/app",
        "REMINDER_DEFAULT_REMINDERS": "secret:reminder-worker-settings/default-reminders"})
    running = Running()
    event = {"event_type": "task.created", "task_id": 7, "user_id": "me",
             "timestamp": "2030-01-01T00:00:00Z",
             "payload": {"title": "t", "due_at": "2030-01-01T09:00:00Z", "timezone": "UTC"}}
    sidecar = settings.sidecar_url
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
            await tg.start(partial(run_dev, settings, running, tell=False))
            assert running.settings is not None and running.settings.app_api_token is not None
            assert running.settings.app_api_token.get_secret_value() == "s3cret-app-token"
            published = await client.post(f"{sidecar}/v1.0/publish/kafka-pubsub/task-events",
                                          json=event)
            assert published.status_code == 204, published.text
            for _ in itertools.count():  # until the event is applied (fail_after bounds it)
                if jobs := (await client.get(f"{sidecar}/dev/jobs")).json():
                    break
                await anyio.sleep(0.05)
            running.stop.set()
    assert [j["dueTime"] for j in jobs.values()] == ["2030-01-01T08:45:00Z"], jobs


def test_dev_secrets_missing_file_or_key_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"REMINDER_SECRET_STORE": "secretstore",
                              "REMINDER_MISFIRE_GRACE": "secret:s/grace"})
    with pytest.raises(SettingsError, match=f"REMINDER_MISFIRE_GRACE: --dev reads .*"
                                            f"{DEV_SECRETS_FILE}.*does not exist"):
        resolve_dev_secrets(settings)
    (tmp_path / DEV_SECRETS_FILE).write_text(json.dumps({"s": {"other": "PT1H"}}))
    with pytest.raises(SettingsError, match="REMINDER_MISFIRE_GRACE: secret s has no key grace"):
        resolve_dev_secrets(settings)
    (tmp_path / DEV_SECRETS_FILE).write_text(json.dumps({"s": {"grace": "soon"}}))
    with pytest.raises(SettingsError, match="from the secret store is invalid") as info:
        resolve_dev_secrets(settings)
    assert "soon" not in str(info.value)
    (tmp_path / DEV_SECRETS_FILE).write_text(json.dumps({"s": {"grace": "PT2H"}}))
    assert resolve_dev_secrets(settings).misfire_grace == "PT2H"
