"""Operator views of the reminder rules (docs/reminders.md): `--explain` shows each
reminder's kind, quiet-hours deferrals and missed reminders; the applied-event summary
names kinds. In memory."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import structlog
from prometheus_client import CollectorRegistry

from tests.factory import event, parsed
from worker import applied
from worker.commands.explain import explain, render
from worker.dapr.memsidecar import MemorySidecar
from worker.dapr.sidecar import Sidecar
from worker.errors import Status
from worker.metrics import Metrics
from worker.plan import PlanConfig, make_plan
from worker.service import Service
from worker.settings import load_settings

pytestmark = pytest.mark.anyio
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STORE = "statestore"
CONFIG = PlanConfig()


class JobsSidecar(MemorySidecar):
    """The in-memory sidecar with the jobs API's read (what `--explain` asks)."""

    async def job_get(self, name: str) -> dict[str, Any] | None:
        job = self.jobs.get(name)
        return None if job is None else {"name": name, "data": job.data}


async def applied_task(*docs: dict[str, Any]) -> JobsSidecar:
    sidecar = JobsSidecar()
    service = Service(load_settings({}), sidecar,
                      Metrics.create(CollectorRegistry(), process=False), lambda: START)
    for doc in docs:
        assert await service.handle_delivery(json.dumps(doc).encode()) == Status.SUCCESS
    return sidecar


async def test_explain_shows_kinds_deferrals_and_snoozes() -> None:
    sidecar = await applied_task(
        event("task.created", 0, due_at="2026-12-01T09:00:00", timezone="Europe/Berlin",
              reminders=["PT1H"], repeat={"every": "PT1H", "max": 2},
              quiet_hours={"start": "07:30", "end": "08:30"}),
        event("task.snoozed", 1, until="2026-11-28T12:00:00Z"))
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1", START, CONFIG)
    assert found is not None
    shown = [(r["kind"], r["at"], r.get("deferred_from"), r["state"])
             for r in found["reminders"]]
    assert shown == [
        ("snooze", "2026-11-28T12:00:00Z", None, "pending"),
        # 08:00 Berlin is inside 07:30-08:30: moved to the window's end
        ("reminder", "2026-12-01T07:30:00Z", ["2026-12-01T07:00:00Z"], "pending"),
        ("overdue", "2026-12-01T09:00:00Z", None, "pending"),
        ("overdue", "2026-12-01T10:00:00Z", None, "pending"),
    ]
    assert found["skipped"] == []


async def test_explain_says_which_reminders_are_missed() -> None:
    # due 13:00, a reminder at 12:30; seen from 15:00 (2 h past due, 2.5 h late)
    sidecar = await applied_task(event("task.created", 0, due_at="2026-11-26T13:00:00Z",
                                       reminders=["PT30M"]))
    late = START + timedelta(hours=3)
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1", late, CONFIG)
    assert found is not None
    [reminder] = found["reminders"]
    assert reminder["kind"] == "reminder" and reminder["scheduled"] is True
    assert reminder["state"] == "firing late: will be missed (past the misfire grace)"
    sidecar.jobs.clear()  # the trigger came and went
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1", late, CONFIG)
    assert found is not None
    assert found["reminders"][0]["state"] == "missed (past the misfire grace)"
    # within the grace (30 min late, task overdue): it fired, nothing is missed
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1",
                          START + timedelta(hours=1), CONFIG)
    assert found is not None and found["reminders"][0]["state"] == "fired"
    # a reminder the record no longer holds, past the grace: said to be missed
    sidecar = await applied_task(event("task.created", 0, due_at="2026-11-26T10:00:00Z",
                                       reminders=["PT1H"]))  # 09:00, 3 h late when applied
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1", START, CONFIG)
    assert found is not None and found["reminders"] == []
    [skipped] = found["skipped"]
    assert (skipped["at"], skipped["kind"]) == ("2026-11-26T09:00:00Z", "reminder")
    assert skipped["reason"].startswith("past the misfire grace")


def test_applied_summary_names_kinds() -> None:
    doc = event("task.created", 0, due_at="2026-11-26T09:30:00Z", reminders=["PT1H", "P1D"],
                repeat={"every": "PT1H", "max": 5})
    plan = make_plan(None, parsed(doc), START, CONFIG)
    done = applied.summary(parsed(doc), plan, plan.event_outcome)
    # 08:30 and yesterday's are past the 1 h grace with the task overdue; of the
    # repetitions (10:30 .. 14:30) the latest past one (11:30) fires at once, 10:30 is missed
    assert [(s["kind"], s["at"]) for s in done["skipped"]] == [
        ("reminder", "2026-11-25T09:30:00Z"), ("reminder", "2026-11-26T08:30:00Z"),
        ("overdue", "2026-11-26T10:30:00Z")]
    assert plan.missed == {"reminder": 2, "overdue": 1} and plan.skipped == 3
    assert [j.get("kind", "reminder") for j in done["scheduled"]] == ["overdue"] * 4
    text = applied.human(done)
    assert "skipped 2026-11-25T09:30:00Z, 2026-11-26T08:30:00Z, overdue 2026-11-26T10:30:00Z" \
        in text
    assert "scheduled 4 jobs (overdue " in text


async def test_explain_of_a_completed_series_says_what_happened() -> None:
    """Issue 20: a completed recurring task: the reminder due before the completion
    fired, the later one was deleted, and the next occurrence was requested (with its
    instant), not 'the series has ended'."""
    sidecar = await applied_task(
        event("task.created", 0, due_at="2026-11-26T11:30:00Z", reminders=["PT30M", "PT5M"],
              recurrence="FREQ=DAILY"),
        event("task.completed", 20))
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1",
                          START + timedelta(hours=1), CONFIG)
    assert found is not None and found["status"] == "completed" and found["reminders"] == []
    assert [(s["at"], s["reason"]) for s in found["skipped"]] == [
        ("2026-11-26T11:00:00Z",
         "fired: it was due before the task was completed (2026-11-26T11:20:00Z)"),
        ("2026-11-26T11:25:00Z",
         "deleted: the task was completed (2026-11-26T11:20:00Z) before it was due")]
    assert found["next_occurrence"] == {
        "state": "requested", "due_at": "2026-11-27T11:30:00Z",
        "local": "2026-11-27T11:30:00+00:00", "completed_at": "2026-11-26T11:20:00Z"}
    out = io.StringIO()
    render(found, out)
    text = out.getvalue()
    assert ("next occurrence 2026-11-27T11:30:00Z (2026-11-27T11:30:00+00:00), requested "
            "from the task service when the task was completed (2026-11-26T11:20:00Z)") in text
    assert "were deleted" not in text and "series has ended" not in text

    # the last occurrence: the series ended with this completion
    sidecar = await applied_task(
        event("task.created", 0, due_at="2026-11-26T11:30:00Z",
              recurrence="FREQ=DAILY;COUNT=1"),
        event("task.completed", 20))
    found = await explain(cast(Sidecar, sidecar), STORE, "u1", "1", START, CONFIG)
    assert found is not None
    assert found["next_occurrence"] == {"state": "ended", "completed_at": "2026-11-26T11:20:00Z"}
    out = io.StringIO()
    render(found, out)
    assert ("next occurrence none: the series ended with the completion of "
            "2026-11-26T11:20:00Z") in out.getvalue()


async def test_log_lines_leave_out_absent_fields() -> None:
    """Issue 20: an event without an id or a trace, and the trigger of one of its jobs
    without a trace, log no `event_id=None` or `trace_id=None`."""
    sidecar = JobsSidecar()
    service = Service(load_settings({}), sidecar,
                      Metrics.create(CollectorRegistry(), process=False), lambda: START)
    with structlog.testing.capture_logs() as logs:
        doc = event("task.created", 0, due_at="2026-11-26T12:30:00Z", reminders=["PT1H"])
        assert await service.handle_delivery(json.dumps(doc).encode()) == Status.SUCCESS
        [name] = sidecar.jobs
        assert await service.handle_job(name, json.dumps(sidecar.jobs[name].data).encode()
                                        ) == 200
    told = [e for e in logs if e["log_level"] != "debug"]
    assert [e["event"] for e in told] == ["event handled", "reminder published"], told
    assert all(None not in e.values() for e in told), told
