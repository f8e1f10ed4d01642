"""The operator's commands against the real daprd: --check, --explain, --replay."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from e2e.conftest import Pod
from e2e.test_flow import event, now, record, z


def test_check_passes_against_the_real_daprd(pod: Pod) -> None:
    out = pod.worker.cli("--check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1.18.2" in out.stdout
    assert not [line for line in out.stdout.splitlines() if line.startswith("FAIL")]


def test_check_names_a_missing_component(pod: Pod) -> None:
    out = pod.worker.cli("--check", env={"REMINDER_STATE_STORE": "nosuchstore"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nosuchstore" in out.stdout


def test_explain_shows_what_the_scheduler_holds(pod: Pod, user: str) -> None:
    due = now() + timedelta(hours=6)
    pod.daprd.publish(event("task.created", user, 21, due_at=z(due), timezone="Asia/Tokyo",
                            reminders=["PT1H", "PT2H"]))
    record(pod, user, 21, "two jobs", lambda r: len(r.get("jobs") or {}) == 2)
    out = pod.worker.cli("--explain", user, "21", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    shown = json.loads(out.stdout)
    assert shown["user_id"] == user and shown["timezone"] == "Asia/Tokyo"
    ats = sorted(r["at"] for r in shown["reminders"])
    assert ats == [z(due - timedelta(hours=2)), z(due - timedelta(hours=1))]
    assert all(r["scheduled"] is True for r in shown["reminders"])
    missing = pod.worker.cli("--explain", user, "999", "--json")
    assert missing.returncode == 1


def test_replay_applies_a_file_through_the_real_sidecar(pod: Pod, user: str,
                                                        tmp_path: Path) -> None:
    due = now() + timedelta(hours=8)
    lines = [json.dumps(event("task.created", user, n, due_at=z(due), reminders=["PT15M"]))
             for n in range(100, 105)]
    lines.insert(2, "{not json")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = pod.worker.cli("--replay", str(path))
    assert out.returncode != 0, "a bad line must make the exit status non-zero"
    assert "line 3" in (out.stdout + out.stderr)
    for n in range(100, 105):
        [name] = record(pod, user, n, "the replayed job", lambda r: r.get("jobs"))["jobs"]
        assert pod.daprd.job(name) is not None
    again = pod.worker.cli("--replay", str(path))  # idempotent: nothing new
    for n in range(100, 105):
        assert len(record(pod, user, n)["jobs"]) == 1
    assert again.returncode == out.returncode
