"""The command line: flags, settings errors, --replay --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker import __version__


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("REMINDER_", "DAPR_", "APP_API"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True,
                          text=True, env=full_env, input=stdin, timeout=30, check=False)


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"reminder-worker {__version__}"


@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run"], ["--demo"],
                                  ["--replay"], ["--replay", "x", "--dev"]])
def test_bad_flags_exit_2_with_one_line(args: list[str]) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_bad_setting_exits_2_naming_it() -> None:
    out = run("--replay", "-", "--dry-run", env={"REMINDER_PORT": "eighty"})
    assert out.returncode == 2 and out.stderr.startswith("reminder-worker: bad setting: ")
    assert "REMINDER_PORT" in out.stderr and out.stderr.count("\n") == 1


def test_missing_replay_file() -> None:
    out = run("--replay", "/nonexistent/events.jsonl", "--dry-run")
    assert out.returncode == 2 and "no such file" in out.stderr


LINES = [
    {"event_type": "task.created", "task_id": 1, "user_id": "u",
     "timestamp": "2030-01-01T00:00:00Z",
     "payload": {"due_at": "2030-02-01T09:00:00", "timezone": "Europe/Berlin",
                 "reminders": ["PT1H"], "recurrence": "FREQ=MONTHLY"}},
    "this is not json",
    {"specversion": "1.0", "id": "a", "source": "s", "type": "task.completed",
     "data": {"task_id": 1, "user_id": "u", "timestamp": "2030-01-01T00:01:00Z"}},
    {"event_type": "task.created", "task_id": 1, "user_id": "u",
     "timestamp": "2030-01-01T00:00:00Z",
     "payload": {"due_at": "2030-02-01T09:00:00", "timezone": "Europe/Berlin",
                 "reminders": ["PT1H"], "recurrence": "FREQ=MONTHLY"}},
    {"event_type": "task.created", "task_id": 2, "user_id": "u",
     "timestamp": "2030-01-01T00:00:00Z", "payload": {"timezone": "Nowhere/City"}},
    {"event_type": "user.signed_up", "user_id": "u", "task_id": 0},
]


def test_replay_dry_run_prints_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in LINES) + "\n\n")
    out = run("--replay", str(path), "--dry-run")
    assert out.returncode == 1  # two bad lines
    assert "line 2: not JSON" in out.stderr and "line 5: payload.timezone" in out.stderr
    plans = [json.loads(line) for line in out.stdout.splitlines()]
    assert [p["line"] for p in plans] == [1, 3, 4]
    created, completed, stale = plans
    assert created["outcome"] == "processed"
    assert [j["due_time"] for j in created["schedule"]] == ["2030-02-01T07:00:00Z"]
    assert completed["delete"] == [created["schedule"][0]["name"]]
    assert completed["next_occurrence"]["next_due_at"] == "2030-03-01T08:00:00Z"
    assert completed["next_occurrence"]["next_due_local"] == "2030-03-01T09:00:00+01:00"
    assert stale["outcome"] == "stale"  # a redelivered older event changes nothing
    assert "failed 2" in out.stderr and "ignored 1" in out.stderr


def test_replay_from_stdin() -> None:
    out = run("--replay", "-", "--dry-run", stdin=json.dumps(LINES[0]) + "\n")
    assert out.returncode == 0 and json.loads(out.stdout)["outcome"] == "processed"


def bare(etype: str, task_id: int, minute: int, **payload: object) -> str:
    return json.dumps({"event_type": etype, "task_id": task_id, "user_id": "u",
                       "timestamp": f"2030-01-01T00:{minute:02d}:00Z", "payload": payload})


# The hand-written cases of issue 8 that are not recurrence-rule parsing, as a task
# service sends them.
INPUTS = [
    # 1: a wall-clock time in the Berlin spring-forward gap, day and signed offsets
    bare("task.created", 10, 0, due_at="2031-03-30T02:30:00", timezone="Europe/Berlin",
         reminders=["P1D", "-PT15M", "+PT15M"]),
    # 2: a fixed-offset zone; one bad reminder among good ones; remind_at with a space
    bare("task.created", 11, 0, due_at="2031-06-01T09:00:00", timezone="+01:00",
         reminders=["PT1H", "P1M", "soon"], remind_at=["2031-05-31 18:00:00Z"]),
    # 3: cleared fields in a created event
    bare("task.created", 12, 0, due_at="", recurrence="", reminders=["PT1H"], timezone="-03:00"),
    # 4-6: a recurring task whose due date and rule are cleared, then completed
    bare("task.created", 13, 0, due_at="2031-04-01T09:00", timezone="Europe/Berlin",
         reminders=["PT1H"], recurrence="FREQ=DAILY"),
    bare("task.updated", 13, 1, due_at="", recurrence=""),
    bare("task.completed", 13, 2),
    # 7: an unparseable rule: the task and its reminders are applied without it
    bare("task.created", 14, 0, due_at="2031-04-01T09:00:00Z", reminders="-PT30M",
         recurrence="every second tuesday-ish"),
    # 8: an aware due_at in a fixed zone of +05:30
    bare("task.created", 15, 0, due_at="2031-04-01", timezone="+05:30", reminders=[30]),
]


def test_replay_dry_run_of_what_task_services_send(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(INPUTS) + "\n")
    out = run("--replay", str(path), "--dry-run")
    assert out.returncode == 0, out.stderr  # partial events are applied, not failures
    plans = [json.loads(line) for line in out.stdout.splitlines()]
    assert [p["line"] for p in plans] == list(range(1, 9))
    assert [p["outcome"] for p in plans] == [
        "processed", "partial", "processed", "processed", "processed", "processed",
        "partial", "processed"]
    times = [[j["due_time"] for j in p["schedule"]] for p in plans]
    problems = [[x.split(":")[0] for x in p["problems"]] for p in plans]
    assert times[0] == ["2031-03-29T01:30:00Z", "2031-03-30T01:15:00Z", "2031-03-30T01:45:00Z"]
    assert times[1] == ["2031-05-31T18:00:00Z", "2031-06-01T07:00:00Z"]
    assert problems[1] == ["payload.reminders[1]", "payload.reminders[2]"]
    assert "calendar months" in plans[1]["problems"][0]
    assert times[2] == [] and problems[2] == []
    assert times[3] == ["2031-04-01T06:00:00Z"]
    assert plans[4]["delete"] == [plans[3]["schedule"][0]["name"]] and times[4] == []
    assert plans[5]["next_occurrence"] is None and plans[5]["series_ended"] is False
    assert times[6] == ["2031-04-01T08:30:00Z"] and problems[6] == ["payload.recurrence"]
    assert times[7] == ["2031-04-01T03:00:00Z"]  # 09:00 at +05:30 is 03:30Z, 30 min before
    assert all(p == [] for i, p in enumerate(problems) if i not in (1, 6))
