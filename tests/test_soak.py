"""The seeded soak, short enough for every `make test` (the long one: `make soak`)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.soak import Model, Spec, Task, run_soak

DUE = datetime.fromisoformat("2026-12-02T20:00:00Z")
OVERDUE = ["2026-12-02T20:30:00Z", "2026-12-02T21:00:00Z", "2026-12-02T21:30:00Z"]


def _raced(before: datetime, saved: datetime) -> tuple[list[str], list[str]]:
    """(expected, allowed) overdue instants of a task repeating every 30 min (3 times)
    completed in the step from `before`, its save landed at `saved`."""
    model, task = Model(), Task("u", 1)
    spec = Spec(DUE, "UTC", [], [], None, "t", {"every": "PT30M", "max": 3})
    model.apply_newest(0, "task.created", spec)
    model.expect_fires([task], DUE, DUE + timedelta(days=1))
    model.apply_newest(0, "task.completed", spec)
    model.raced(task, spec, before, saved)
    return sorted(k[3] for k in model.fired), sorted(k[3] for k in model.allowed)


def _at(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"2026-12-02T{hhmm}:00Z")


@pytest.mark.parametrize(("before", "saved", "expected", "allowed"), [
    # saved before the clock moved on: none of the step's repetitions may be published
    ("20:40", "20:40", OVERDUE[:1], []),
    # saved at the step's end: the step's repetition races it
    ("20:40", "21:10", OVERDUE[:1], OVERDUE[1:2]),
    # cut off by a kill, saved once the replicas were back 11 minutes on: what fell due
    # in those minutes races it too (the soak's seed 2), nothing later
    ("20:40", "21:21", OVERDUE[:1], OVERDUE[1:2]),
    ("20:40", "21:31", OVERDUE[:1], OVERDUE[1:]),
    # every repetition fired in earlier steps: all expected
    ("21:40", "21:40", OVERDUE, []),
])
def test_a_raced_completion_allows_what_was_due_by_the_clock_of_its_save(
        before: str, saved: str, expected: list[str], allowed: list[str]) -> None:
    assert _raced(_at(before), _at(saved)) == (expected, allowed)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_short_seeded_soak_keeps_every_promise() -> None:
    figures = await run_soak(seed=20261126, n_tasks=150)
    print(figures.line())
    assert figures.violations == []
    # the run really exercised what it claims to
    assert figures.reminders_expected > 100 and figures.reminders_published > 100
    assert figures.faults_injected > 5 and figures.duplicates_sent > 20
    assert figures.next_expected > 3
    assert figures.kills > 3 and figures.overdue_completions > 3
    # the reminder rules in the mix: every kind published, completions raced their triggers
    assert all(figures.by_kind.get(k, 0) > 3 for k in ("reminder", "overdue", "snooze"))
    assert figures.races > 3


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_soak_that_runs_out_of_time_says_so_and_what_it_was_doing() -> None:
    figures = await run_soak(seed=1, n_tasks=300, budget=0.5)
    assert len(figures.violations) == 1
    assert figures.violations[0].startswith("no result within 0.5s: still delivering phase 1")
