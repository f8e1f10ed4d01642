"""Issue 12 item 7 (and the debug level of item 3): `--replay` for real dead-letter
dumps, as a subprocess against a development sidecar over HTTP: what each line did
on stdout, Ctrl-C and `--from`, an unreadable file before any sidecar call, and
its own exit status for "no sidecar"."""

from __future__ import annotations

import io
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
    assert "replayed 1 event (line 3)" in err  # what ran, not the last line's number


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

    from worker.commands.replay import Report

    report = Report(io.StringIO(), total=200, start=1)
    assert report.progress_line(50, report.began + 10) == (
        "replaying: line 50 of 200 (25%), 5 lines/s, about 30 s left, 0 failed")
    piped = Report(io.StringIO(), total=None, start=11)  # stdin: no total
    assert piped.progress_line(30, piped.began + 4) == "replaying: line 30, 5 lines/s, 0 failed"


async def test_sigterm_stops_cleanly_and_says_where_to_resume(tmp_path: Path) -> None:
    """Issue 20: SIGTERM (a container stopped, a `kill`) says where to resume, as Ctrl-C
    does; line 3 is in flight (its job call held by the sidecar)."""
    path = tmp_path / "dump.jsonl"
    path.write_text("\n".join([event(1, 0, title="a"), event(2, 0, title="b"),
                               event(3, 0, due_at="2031-01-01T09:00:00Z",
                                     reminders=["PT1H"])]) + "\n")
    async with bare_sidecar() as (port, sidecar):
        sidecar.faults.latency("jobs", 60)
        async with await anyio.open_process(
                [sys.executable, "-m", "worker", "--replay", str(path)], env=env(port)) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            with anyio.fail_after(15):
                await sidecar.wait_for(lambda: sidecar.counts["jobs"] > 0, timeout=10)
                proc.send_signal(signal.SIGTERM)
                status = await proc.wait()
                err = b"".join([chunk async for chunk in proc.stderr]).decode()
    assert status == 143, err
    assert err.strip().splitlines()[-1] == ("reminder-worker: terminated after line 2; "
                                            "resume with --from 3")
    assert "Traceback" not in err


def five_events(path: Path) -> Path:
    path.write_text("".join(event(i, 0, title=str(i)) + "\n" for i in range(1, 6)))
    return path


async def test_from_counts_what_ran_and_past_the_end_is_an_error(tmp_path: Path) -> None:
    path = five_events(tmp_path / "five.jsonl")
    status, out, err = await replay(free_port(), str(path), "--dry-run", "--from", "3")
    assert status == 0, err
    assert [json.loads(line)["line"] for line in out.splitlines()] == [3, 4, 5]
    assert err.startswith("replayed 3 events (lines 3-5) in "), err
    for source, name in ((str(path), str(path)), ("-", "standard input")):
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, "-m", "worker", "--replay", source, "--dry-run", "--from", "99"],
                env=env(free_port()), input=path.read_bytes(), check=False)
        assert done.returncode == 2, done.stderr
        assert done.stderr.decode() == (f"reminder-worker: --replay: --from 99 is past the end "
                                        f"of {name}, which has 5 lines; nothing was replayed\n")
        assert done.stdout == b""


def values(text: str, start: int = 1) -> list[tuple[int, int, object]]:
    """What `read_items` makes of `text`: (first line, last line, value or Bad reason)."""
    from worker.commands.replay import Bad, read_items

    return [(i.line, i.end, i.doc.reason if isinstance(i.doc, Bad) else i.doc)
            for i in read_items(io.BytesIO(text.encode()), start)]


ONE = {"event_type": "task.created", "task_id": 1, "user_id": "u",
       "timestamp": "2030-01-01T00:00:00Z", "payload": {"title": "a", "reminders": ["PT1H"]}}
TWO = {**ONE, "task_id": 2}


def test_replay_reads_json_lines_arrays_and_pretty_printed_events() -> None:
    """Issue 20: a pretty-printed event pasted in a replay file is one event (it was five
    'not JSON' lines), as are the elements of a JSON array and objects one after
    another; each is numbered by the line it starts on."""
    pretty = json.dumps(ONE, indent=2)
    n = len(pretty.splitlines())  # 12
    assert values(json.dumps(ONE) + "\n\n" + json.dumps(TWO) + "\n") == [
        (1, 1, ONE), (3, 3, TWO)]
    assert values(pretty + "\n" + json.dumps(TWO, indent=2) + "\n") == [
        (1, n, ONE), (n + 1, 2 * n, TWO)]
    array = json.dumps([ONE, TWO], indent=2) + "\n"  # "[" on line 1, "]" on the last
    assert values(array) == [(2, n + 1, ONE), (n + 2, 2 * n + 1, TWO)]
    assert values(json.dumps([ONE, TWO]) + "\n") == [(1, 1, ONE), (1, 1, TWO)]
    assert values(json.dumps(ONE) + json.dumps(TWO) + "\n") == [(1, 1, ONE), (1, 1, TWO)]
    # --from inside an array: its second element on
    assert values(array, start=n + 2) == [(n + 2, 2 * n + 1, TWO)]


def test_replay_errors_name_the_line_a_bad_value_starts_on() -> None:
    pretty = json.dumps(ONE, indent=2).splitlines()
    broken = [*pretty[:3], '  "task_id": 1,,', *pretty[4:]]  # line 5 of the file breaks it
    got = values("\n".join([json.dumps(TWO), *broken, json.dumps(TWO), "not json",
                            json.dumps(TWO), "{", json.dumps(TWO)]) + "\n")
    n = len(pretty)
    assert got == [
        (1, 1, TWO),
        (2, 5, "not JSON (the value that starts here breaks on line 5)"),
        (n + 2, n + 2, TWO),  # read on from the next line that starts a value
        (n + 3, n + 3, "not JSON (or not UTF-8)"),
        (n + 4, n + 4, TWO),
        (n + 5, n + 6, f"not JSON (the value that starts here breaks on line {n + 6})"),
        (n + 6, n + 6, TWO)]
    assert values(json.dumps(TWO) + "\n" + "\n".join(pretty[:4]) + "\n") == [
        (1, 1, TWO), (2, 5, "not JSON: the value that starts here is not complete at the "
                            "end of the input")]
    bad_utf8 = io.BytesIO(json.dumps(TWO).encode() + b"\n\xff\xfe\n" + json.dumps(ONE).encode())
    from worker.commands.replay import Bad, read_items
    assert [(i.line, isinstance(i.doc, Bad)) for i in read_items(bad_utf8)] == [
        (1, False), (2, True), (3, False)]


def test_replay_of_a_pasted_event_through_the_command_line(tmp_path: Path) -> None:
    from tests.test_cli import run

    path = tmp_path / "pasted.json"
    path.write_text(json.dumps([ONE, TWO], indent=4) + "\n")
    out = run("--replay", str(path), "--dry-run")
    assert out.returncode == 0, out.stderr
    n = len(json.dumps(ONE, indent=4).splitlines())
    assert [json.loads(line)["line"] for line in out.stdout.splitlines()] == [2, n + 2]
    assert out.stderr.startswith(f"replayed 2 events (lines 2-{2 * n + 1}) in ")
