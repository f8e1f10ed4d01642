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
