"""The seeded soak, short enough for every `make test` (the long one: `make soak`)."""

from __future__ import annotations

import pytest

from tests.soak import run_soak

pytestmark = pytest.mark.anyio


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
    # contract §8 in the mix: every kind published, completions raced their triggers
    assert all(figures.by_kind.get(k, 0) > 3 for k in ("reminder", "overdue", "snooze"))
    assert figures.races > 3


@pytest.mark.timeout(60)
async def test_a_soak_that_runs_out_of_time_says_so_and_what_it_was_doing() -> None:
    figures = await run_soak(seed=1, n_tasks=300, budget=0.5)
    assert len(figures.violations) == 1
    assert figures.violations[0].startswith("no result within 0.5s: still delivering phase 1")
