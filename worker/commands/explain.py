"""`--explain USER_ID TASK_ID`: what the worker knows of one task, and what the
scheduler really holds.

Read-only: the task record (state store), then one `GET` per job it lists (jobs
API; daprd answers a missing job with 500 DAPR_SCHEDULER_GET_JOB, read as "not
scheduled"). The next occurrence of an active task is the planner's own answer
for a completion now (the record and a synthetic `task.completed` of this
instant, through `make_plan`), so it is what completing the task now would
request; of a completed task, the one its completion requested (planned again
from the completion's timestamp, as a redelivery would be), or that the series
ended there. The reminders a finished task no longer holds are told as fired
(due before its completion or deletion) or deleted (due after it).

`view` is the only function that knows the record's layout (plan.py's docstring).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

import anyio

from worker.commands.check import open_sidecar
from worker.commands.connect import check_sidecar, resolve_secrets
from worker.dapr.sidecar import Sidecar
from worker.events import TaskEvent
from worker.keys import task_key
from worker.plan import PlanConfig, grace_of, make_plan, requested_next, wanted_slots
from worker.records import load_record
from worker.rules.kinds import Slot
from worker.rules.misfire import judge
from worker.schedule import format_local, format_utc, load_zone
from worker.settings import Settings

EXIT_FOUND, EXIT_NONE, EXIT_UNREACHABLE = 0, 1, 3


@dataclass(frozen=True)
class TaskView:
    """The parts of a task record `--explain` shows (instants aware, UTC)."""

    user_id: str
    task_id: int | str
    status: str
    last_event: str
    title: str | None
    timezone: str
    due_at: datetime | None
    due_local: str | None
    recurrence: Any
    wanted: list[Slot]  # every reminder the task asks for (kind, instant, deferred from)
    jobs: dict[str, Slot]  # live jobs: name -> the reminder it stands for
    grace: timedelta | None  # the task's misfire grace (None: no limit)
    raw: dict[str, Any] = field(repr=False)


def view(doc: dict[str, Any], config: PlanConfig) -> TaskView:
    """Read a stored task record (through `records.load_record`, which knows its layout)."""
    record = load_record(doc)
    task = record.task
    zone = load_zone(task.timezone)
    due = task.due_at
    return TaskView(
        user_id=record.user_id, task_id=record.task_id, status=record.status,
        last_event=record.order.to_json()[0], title=task.title, timezone=zone.key,
        due_at=due, due_local=format_local(due, zone) if due else None,
        recurrence=doc.get("task", {}).get("recurrence"),
        wanted=wanted_slots(task, config),
        jobs=dict(record.jobs),
        grace=grace_of(task, config),
        raw=doc,
    )


def next_if_completed_now(doc: dict[str, Any], now: datetime,
                          config: PlanConfig) -> dict[str, Any] | None:
    """The next-occurrence request completing the task at `now` would make (or None)."""
    record = load_record(doc)
    if record.status != "active" or record.task.recurrence is None:
        return None
    last = record.order.timestamp
    event = TaskEvent(event_type="task.completed", task_id=record.task_id,
                      user_id=record.user_id,
                      timestamp=max(now, last + timedelta(milliseconds=1)),
                      event_id="explain")
    plan = make_plan(record, event, now, config)
    return plan.next.body if plan.next is not None else None


async def explain(sidecar: Sidecar, store: str, user_id: str, task_id: str, now: datetime,
                  config: PlanConfig) -> dict[str, Any] | None:
    """Everything `--explain` shows, as one JSON-able object; None without a record."""
    record = None
    candidates: list[int | str] = [task_id]
    if task_id.lstrip("-").isdigit():  # 123 and "123" are different tasks: try both
        candidates.insert(0, int(task_id))
    for candidate in candidates:
        got = await sidecar.state_get(store, task_key(user_id, candidate))
        if got is not None:
            record = got[0]
            break
    if not isinstance(record, dict):
        return None
    task = view(record, config)
    zone = load_zone(task.timezone)
    reminders = []
    for name, slot in sorted(task.jobs.items(), key=lambda item: item[1]):
        at = slot.at
        scheduled = await sidecar.job_get(name) is not None
        state = ("pending" if scheduled else "MISSING from the scheduler") if at > now else (
            "fired" if not scheduled else "firing or retrying")
        if (at <= now and not judge(at, task.due_at, now, task.grace).publish
                and task.status == "active"):
            state = ("missed (past the misfire grace)" if not scheduled
                     else "firing late: will be missed (past the misfire grace)")
        entry: dict[str, Any] = {"at": format_utc(at), "local": format_local(at, zone),
                                 "kind": slot.kind, "job": name, "scheduled": scheduled,
                                 "state": state}
        if slot.deferred_from:
            entry["deferred_from"] = [format_utc(d) for d in slot.deferred_from]
        reminders.append(entry)
    held = set(task.jobs.values())
    skipped = []
    ended = load_record(record).order.timestamp  # a completion or deletion: its instant
    for slot in task.wanted:
        if slot in held:
            continue
        at = slot.at
        if task.status != "active" and at <= ended:
            reason = f"fired: it was due before the task was {task.status} ({format_utc(ended)})"
        elif task.status != "active":
            reason = (f"deleted: the task was {task.status} ({format_utc(ended)}) before it "
                      "was due")
        elif at <= now and not judge(at, task.due_at, now, task.grace).publish:
            reason = ("past the misfire grace with the task already due: missed when "
                      "the event was applied, or fired earlier and forgotten")
        elif at <= now:
            reason = "past: fired and forgotten"
        else:
            reason = "no job in the record"
        skipped.append({"at": format_utc(at), "local": format_local(at, zone),
                        "kind": slot.kind, "reason": reason})
    return {
        "user_id": task.user_id, "task_id": task.task_id, "status": task.status,
        "last_event": task.last_event, "title": task.title,
        "due_at": format_utc(task.due_at) if task.due_at else None,
        "due_local": task.due_local, "timezone": task.timezone,
        "recurrence": task.recurrence, "reminders": reminders, "skipped": skipped,
        "next_occurrence": next_occurrence(record, now, config),
        "record": record,
    }


def next_occurrence(doc: dict[str, Any], now: datetime, config: PlanConfig
                    ) -> dict[str, Any] | None:
    """What `--explain` says of the series: for an active task the occurrence completing
    it now would request (state "if completed now"); for a completed one the
    occurrence its completion requested (state "requested") or that the series ended
    there (state "ended", no instant); None without a recurrence or for a deleted task."""
    record = load_record(doc)
    if record.task.recurrence is None or record.status == "deleted":
        return None
    if record.status == "active":
        body = next_if_completed_now(doc, now, config)
        assumes = f"the task is completed now ({format_utc(now.replace(microsecond=0))})"
        if body is None:
            return {"state": "ends", "assumes": assumes}
        return {"state": "if completed now", "due_at": body["next_due_at"],
                "local": body["next_due_local"], "assumes": assumes}
    completed = format_utc(record.order.timestamp)
    requested = requested_next(record)
    if requested is None:
        return {"state": "ended", "completed_at": completed}
    return {"state": "requested", "due_at": requested.body["next_due_at"],
            "local": requested.body["next_due_local"], "completed_at": completed}


def render(found: dict[str, Any], out: IO[str] = sys.stdout) -> None:
    """The explanation as a person reads it."""
    def say(label: str, text: str) -> None:
        print(f"  {label:<16}{text}", file=out)

    print(f"task {json.dumps(found['task_id'])} of user {found['user_id']}: {found['status']}",
          file=out)
    say("last event", found["last_event"])
    if found["title"] is not None:
        say("title", found["title"])
    say("due", f"{found['due_at']} ({found['due_local']}, {found['timezone']})"
        if found["due_at"] else f"none ({found['timezone']})")
    if found["recurrence"]:
        rule = found["recurrence"]
        say("recurrence", rule.get("rrule", json.dumps(rule)) if isinstance(rule, dict)
            else str(rule))
    if not found["reminders"]:
        say("reminders", "none pending")
    for i, r in enumerate(found["reminders"]):
        say("reminders" if i == 0 else "",
            f"{r['at']}  {r['local']}  {r['kind']}  {r['job']}  "
            f"{'scheduled' if r['scheduled'] else 'not scheduled'} ({r['state']})"
            + (f", deferred from {', '.join(r['deferred_from'])} (quiet hours)"
               if r.get("deferred_from") else ""))
    for i, s in enumerate(found["skipped"]):
        say("not scheduled" if i == 0 else "",
            f"{s['at']}  {s['local']}  {s['kind']}  {s['reason']}")
    nxt = found["next_occurrence"]
    if nxt is None:
        if found["recurrence"]:
            say("next occurrence", f"none (the task is {found['status']})")
    elif nxt["state"] == "if completed now":
        say("next occurrence", f"{nxt['due_at']} ({nxt['local']}), if {nxt['assumes']}")
    elif nxt["state"] == "ends":
        say("next occurrence", f"none: the series ends if {nxt['assumes']}")
    elif nxt["state"] == "requested":
        say("next occurrence", f"{nxt['due_at']} ({nxt['local']}), requested from the task "
            f"service when the task was completed ({nxt['completed_at']})")
    else:
        say("next occurrence", f"none: the series ended with the completion of "
            f"{nxt['completed_at']}")


async def _explain(settings: Settings, user_id: str, task_id: str, now: datetime,
                   ) -> dict[str, Any] | str | None:
    async with open_sidecar(settings) as sidecar:
        if not await sidecar.outbound_healthy():
            return (f"reminder-worker: no Dapr sidecar answers at {settings.sidecar_url}; start "
                    "daprd beside the worker, or set DAPR_HTTP_PORT / DAPR_HTTP_ENDPOINT")
        await check_sidecar(sidecar)  # token and version: a StartupError says what to change
        settings = await resolve_secrets(settings, sidecar)  # the store's name may be one
        config = PlanConfig(settings.all_day_time, settings.default_reminders,
                            settings.misfire_grace_delta, settings.default_quiet_hours)
        return await explain(sidecar, settings.state_store, user_id, task_id, now, config)


def explain_main(settings: Settings, user_id: str, task_id: str, *, as_json: bool,
                 now: datetime, out: IO[str] = sys.stdout) -> int:
    found = anyio.run(_explain, settings, user_id, task_id, now)
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return EXIT_UNREACHABLE
    if found is None:
        if as_json:
            print(json.dumps({"user_id": user_id, "task_id": task_id, "found": False}), file=out)
        else:
            print(f"no record of task {task_id} of user {user_id} in state store "
                  f"{settings.state_store!r} (never seen, or deleted and expired)", file=out)
        return EXIT_NONE
    if as_json:
        print(json.dumps(found, separators=(",", ":")), file=out)
    else:
        render(found, out)
    return EXIT_FOUND
