"""What applying one task event changed: for its log line and for `--replay`.

The service sets `last` (a ContextVar: one per request task, read back by the
caller in the same task) once an event is applied; `fields` are the log line's
extra keys, `human` the same as one sentence for people. Pure: a Plan and its
event in, plain data out.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Final

from worker.events import TaskEvent
from worker.plan import JobSpec, Plan
from worker.records import TaskRecord
from worker.schedule import format_utc

MAX_LISTED: Final = 20  # a task has at most 100 reminders; a log line lists this many

last: ContextVar[dict[str, Any] | None] = ContextVar("applied", default=None)


def skip_reason(record: TaskRecord) -> str:
    """Why a reminder already past was not scheduled (plan._wanted_jobs: the misfire
    policy, docs/reminders.md)."""
    due = record.task.due_at
    if due is None:
        return ("in the past when applied, past the misfire grace, and the task has "
                "no due date")
    return (f"in the past when applied, past the misfire grace, and the task was "
            f"already due ({format_utc(due)})")


def summary(event: TaskEvent, plan: Plan, outcome: str) -> dict[str, Any]:
    """The changes of one applied (or duplicate, or stale) event, as log fields."""
    out: dict[str, Any] = {"outcome": outcome}
    if plan.schedule:
        out["scheduled"] = [_scheduled(j) for j in plan.schedule[:MAX_LISTED]]
    if plan.delete:
        out["deleted"] = sorted(plan.delete)[:MAX_LISTED]
    if plan.missed_slots:
        reason = skip_reason(plan.record)
        out["skipped"] = [{"at": format_utc(s.at), "kind": s.kind, "reason": reason}
                          for s in plan.missed_slots[:MAX_LISTED]]
    if event.ignored:
        out["ignored_fields"] = list(event.ignored)
    if plan.problems:
        out["problems"] = plan.problems[:MAX_LISTED]
    if plan.next is not None:
        out["next_due_at"] = plan.next.body["next_due_at"]
    if plan.series_ended:
        out["series_ended"] = True
    if outcome in ("duplicate", "stale"):
        out["why"] = ("this event was applied already" if outcome == "duplicate"
                      else f"a newer event ({plan.record.order.to_json()[0]}) was applied already")
    return out


def _scheduled(job: JobSpec) -> dict[str, Any]:
    """One scheduled job; a kind other than a plain reminder is named (its slot)."""
    out: dict[str, Any] = {"job": job.name, "at": job.due_text}
    slot = job.data.get("slot")
    if isinstance(slot, str):
        kind, _, _ = slot.partition("@")
        out["kind"] = kind
    return out


def fields() -> dict[str, Any]:
    """The last summary in this task without its outcome (the caller logs that)."""
    got = last.get()
    return {k: v for k, v in got.items() if k != "outcome"} if got else {}


def human(done: dict[str, Any]) -> str:
    """One summary as a sentence: `processed: scheduled 1 job (...); ignored fields x`."""
    parts: list[str] = []
    if "scheduled" in done:
        n = len(done["scheduled"])
        parts.append(f"scheduled {n} job{'s' * (n != 1)} ("
                     + ", ".join(_kind(j) + j["at"] for j in done["scheduled"]) + ")")
    if "deleted" in done:
        n = len(done["deleted"])
        parts.append(f"deleted {n} job{'s' * (n != 1)}")
    if "skipped" in done:
        parts.append("skipped " + ", ".join(_kind(s) + s["at"] for s in done["skipped"])
                     + f" ({done['skipped'][0]['reason']})")
    if "next_due_at" in done:
        parts.append(f"next occurrence {done['next_due_at']} requested")
    if done.get("series_ended"):
        parts.append("series ended")
    if "ignored_fields" in done:
        parts.append("ignored unknown fields " + ", ".join(done["ignored_fields"]))
    if "problems" in done:
        parts.append("left out " + "; ".join(done["problems"]))
    if "why" in done:
        parts.append(done["why"])
    return f"{done['outcome']}: " + ("; ".join(parts) if parts else "nothing to change")


def _kind(item: dict[str, Any]) -> str:
    """"overdue " or "snooze " before an instant; nothing for a plain reminder."""
    kind = item.get("kind", "reminder")
    return "" if kind == "reminder" else f"{kind} "
