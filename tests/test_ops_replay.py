"""Issue 12 item 7 (and the debug level of item 3): `--replay` for real dead-letter
dumps, as a subprocess against a development sidecar over HTTP: what each line did
on stdout, Ctrl-C and `--from`, an unreadable file before any sidecar call, and
its own exit status for "no sidecar"."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.harness import free_port
from tests.test_ops_check import bare_sidecar

pytestmark = pytest.mark.anyio


def event(task_id: int, minute: int, **payload: Any) -> str:
    return json.dumps({"event_type": "task.created", "task_id": task_id, "user_id": "u-replay",
                       "timestamp": f"2030-01-01T00:{minute:02d}:00Z", "payload": payload})


def env(port: int, **extra: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("REMINDER_", "DAPR_", "APP_API"))}
    return full | {"DAPR_HTTP_PORT": str(port), **extra}


async def replay(port: int, *args: str, **extra: str) -> tuple[int, str, str]:
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, "-m", "worker", "--replay", *args],
                                       env=env(port, **extra), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_live_replay_says_what_each_line_did(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    path.write_text("\n".join([
        event(1, 0, due_at="2031-01-01T09:00:00Z", reminders=["PT1H"]),
        "not json",
        event(2, 0, due_at="2031-01-01T09:00:00Z", remind_befor="PT1H"),
        event(1, 0, due_at="2031-01-01T09:00:00Z", reminders=["PT1H"]),
    ]) + "\n")
    async with bare_sidecar() as (port, sidecar):
        status, out, err = await replay(port, str(path))
        assert len(sidecar.jobs()) == 1
    assert status == 1  # line 2 failed
    assert out.splitlines() == [
        "line 1: task.created task 1: processed: scheduled 1 job (2031-01-01T08:00:00Z)",
        "line 3: task.created task 2: processed: ignored unknown fields remind_befor",
        "line 4: task.created task 1: duplicate: this event was applied already",
    ]
    assert "line 2: not JSON" in err and "{" not in err  # no JSON log lines


async def test_debug_level_adds_lines_that_info_does_not_print(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(event(1, 0, due_at="2031-01-01T09:00:00Z", reminders=["PT1H"]) + "\n")
    logs = {}
    for level in ("info", "debug"):
        async with bare_sidecar() as (port, _):
            status, _, err = await replay(port, str(path), REMINDER_LOG_LEVEL=level,
                                          REMINDER_LOG_FORMAT="json")
        assert status == 0, err
        logs[level] = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    planned = [e for e in logs["debug"] if e["event"] == "event planned"]
    assert len(planned) == 1 and planned[0]["level"] == "debug"
    assert planned[0]["record_after"]["status"] == "active"
    assert not [e for e in logs["info"] if e["level"] == "debug"]


async def test_ctrl_c_stops_cleanly_and_from_resumes(tmp_path: Path) -> None:
    """Lines 1 and 2 carry no reminder; line 3 schedules a job, which the sidecar holds
    for a minute: Ctrl-C lands while line 3 is in flight."""
    path = tmp_path / "dump.jsonl"
    path.write_text("\n".join([event(1, 0, title="a"), event(2, 0, title="b"),
                               event(3, 0, due_at="2031-01-01T09:00:00Z",
                                     reminders=["PT1H"])]) + "\n")
    async with bare_sidecar() as (port, sidecar):
        sidecar.faults.latency("jobs", 60)
        async with await anyio.open_process(
                [sys.executable, "-m", "worker", "--replay", str(path)], env=env(port)) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            stdout = BufferedByteReceiveStream(proc.stdout)
            with anyio.fail_after(15):
                seen = [await stdout.receive_until(b"\n", 10_000) for _ in range(2)]
                assert [line.split(b":")[0] for line in seen] == [b"line 1", b"line 2"]
                # line 3 is waiting on the jobs API
                await sidecar.wait_for(lambda: sidecar.counts["jobs"] > 0, timeout=10)
                proc.send_signal(signal.SIGINT)
                status = await proc.wait()
                chunks = []
                async for chunk in proc.stderr:
                    chunks.append(chunk)
                err = b"".join(chunks).decode()
        assert status == 130, err
        assert err.strip().splitlines()[-1] == ("reminder-worker: stopped after line 2; "
                                                "resume with --from 3")
        assert "Traceback" not in err
        sidecar.faults.clear()
        status, out, err = await replay(port, str(path), "--from", "3")
    assert status == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == ["line 3"]
    assert "replayed 3 lines" in err


async def test_unreadable_file_and_missing_sidecar_have_their_own_statuses(
        tmp_path: Path) -> None:
    async with bare_sidecar() as (port, sidecar):
        status, _, err = await replay(port, str(tmp_path / "missing.jsonl"))
        assert (status, err.count("\n")) == (2, 1) and "no such file" in err
        # unreadable: a directory (a mode-0 file would do, except as root, who reads it)
        status, _, err = await replay(port, str(tmp_path))
        assert (status, err.count("\n")) == (2, 1) and "is a directory" in err
        locked = tmp_path / "locked.jsonl"
        locked.write_text(event(1, 0) + "\n")
        locked.chmod(0)
        if not os.access(locked, os.R_OK):
            status, _, err = await replay(port, str(locked))
            assert (status, err.count("\n")) == (2, 1) and "cannot read" in err
        assert sum(sidecar.counts.values()) == 0  # the sidecar was never asked
    ok = tmp_path / "ok.jsonl"
    ok.write_text(event(1, 0) + "\n")
    status, out, err = await replay(free_port(), str(ok))  # nothing listens there
    assert status == 3 and "sidecar not reachable" in err and out == ""


def test_progress_line_shows_total_percent_rate_and_time_left() -> None:
    import io

    from worker.replay import Report

    report = Report(io.StringIO(), total=200, start=1)
    assert report.progress_line(50, report.began + 10) == (
        "replaying: line 50 of 200 (25%), 5 lines/s, about 30 s left, 0 failed")
    piped = Report(io.StringIO(), total=None, start=11)  # stdin: no total
    assert piped.progress_line(30, piped.began + 4) == "replaying: line 30, 5 lines/s, 0 failed"
