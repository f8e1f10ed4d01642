"""`--replay PATH`: feed a JSON Lines file of task events through the same handling.

Bad lines are reported with their number and skipped. `--dry-run` calls no
sidecar: records are kept in memory and the plan of every event is printed as
JSON Lines on stdout. A live replay prints what each line did on stdout (the
summary of its log line), and failures, progress and the total on stderr.
`--from N` starts at line N; Ctrl-C stops after the line in flight is abandoned
(each line is idempotent) and says where to resume.

Exit status: 0 every line applied (or ignored), 1 some lines failed, 2 the file
cannot be read or the sidecar cannot run the worker (token, version), 3 no
sidecar answers, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import partial
from typing import IO, Final

import anyio

from worker import applied
from worker.clock import Clock, system_clock
from worker.connect import connect
from worker.errors import InvalidEvent, PermanentSidecarError, StartupError, TransientError
from worker.events import Ignored, TaskEvent, parse_document
from worker.keys import task_key
from worker.plan import PlanConfig, make_plan
from worker.records import TaskRecord
from worker.settings import Settings

PROGRESS_EVERY: Final = 0.2  # seconds between progress-bar redraws


EXIT_FAILED_LINES: Final = 1
EXIT_UNREADABLE: Final = 2
EXIT_NO_SIDECAR: Final = 3
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report it


def open_input(path: str) -> IO[bytes]:
    """The file, opened now: a missing or unreadable one fails before any sidecar call."""
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def count_lines(stream: IO[bytes]) -> int | None:
    """Lines of a regular file (for the progress display), or None for a pipe."""
    if stream is sys.stdin.buffer or not stream.seekable():
        return None
    total = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    stream.seek(0)
    return total


def read_lines(path: str | IO[bytes], start: int = 1) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines from line `start`; bytes, so one badly encoded line fails
    alone."""
    stream = open_input(path) if isinstance(path, str) else path
    try:
        for number, line in enumerate(stream, 1):
            if number >= start and line.strip():
                yield number, line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def parse_line(line: bytes) -> TaskEvent | Ignored:
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidEvent("not JSON (or not UTF-8)") from None
    return parse_document(doc)


class Report:
    """Counts, line-numbered errors on stderr, and a progress line on a terminal."""

    def __init__(self, err: IO[str], total: int | None = None, start: int = 1) -> None:
        self.err = err
        self.counts: Counter[str] = Counter()
        self.failed = 0
        self.tty = err.isatty()
        self._drawn = 0.0
        self.total = total
        self.start = start
        self.began = time.monotonic()
        self.done_line = start - 1  # the last line whose handling finished

    def fail(self, number: int, reason: str) -> None:
        self.failed += 1
        self._clear()
        print(f"line {number}: {reason}", file=self.err)

    def progress(self, number: int) -> None:
        self.done_line = number
        if self.tty and (now := time.monotonic()) - self._drawn > PROGRESS_EVERY:
            self._drawn = now
            self.err.write("\r\033[K" + self.progress_line(number, now))
            self.err.flush()

    def progress_line(self, number: int, now: float) -> str:
        """`replaying: line 1200 of 5000 (24%), 850 lines/s, about 5 s left, 2 failed`."""
        elapsed = max(now - self.began, 1e-6)
        rate = (number - self.start + 1) / elapsed
        text = f"replaying: line {number}"
        if self.total:
            left = max(self.total - number, 0)
            text += (f" of {self.total} ({100 * number // self.total}%), {rate:.0f} lines/s, "
                     f"about {left / rate if rate else 0:.0f} s left")
        else:
            text += f", {rate:.0f} lines/s"
        return text + f", {self.failed} failed"

    def say(self, out: IO[str], text: str) -> None:
        """One line of what was done, kept apart from the progress line."""
        self._clear()
        print(text, file=out, flush=True)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.err.write("\r\033[K")

    def summary(self, lines: int, elapsed: float) -> str:
        self._clear()
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        rate = lines / elapsed if elapsed > 0 else 0.0
        return (f"replayed {lines} lines in {elapsed:.2f} s ({rate:.0f}/s): "
                f"{parts or 'nothing applied'}, failed {self.failed}")


def plan_only(lines: Iterable[tuple[int, bytes]], settings: Settings, out: IO[str], err: IO[str],
              clock: Clock = system_clock, report: Report | None = None) -> int:
    """Plan every event against in-memory records; print each plan as one JSON line."""
    config = PlanConfig(settings.all_day_time, settings.default_reminders,
                        settings.misfire_grace_delta, settings.default_quiet_hours)
    records: dict[str, TaskRecord] = {}
    report = report or Report(err)
    now = clock()
    count = 0
    start = time.perf_counter()
    write = out.write
    for number, line in lines:
        count = number
        try:
            parsed = parse_line(line)
            if isinstance(parsed, Ignored):
                report.counts["ignored"] += 1
                continue
            key = task_key(parsed.user_id, parsed.task_id)
            plan = make_plan(records.get(key), parsed, now, config)
        except InvalidEvent as exc:
            report.fail(number, exc.reason)
            continue
        except Exception as exc:  # the live worker drops such an event; say why here
            report.fail(number, f"unusable event ({type(exc).__name__}: {exc})")
            continue
        if plan.outcome == "processed":
            records[key] = plan.record
        report.counts[plan.event_outcome] += 1
        write(json.dumps({"line": number, **plan.to_json(parsed)}, separators=(",", ":")))
        write("\n")
        report.progress(number)
    out.flush()
    print(report.summary(count, time.perf_counter() - start), file=err)
    return 1 if report.failed else 0


async def live(lines: Iterable[tuple[int, bytes]], settings: Settings, err: IO[str],
               clock: Clock = system_clock, out: IO[str] | None = None,
               report: Report | None = None) -> int:
    """Send every event through the service against the configured sidecar; say what
    each line did on `out`."""
    report = report or Report(err)
    count = 0
    start = time.perf_counter()
    async with connect(settings, clock=clock) as conn:
        if not await conn.sidecar.outbound_healthy():
            print(f"reminder-worker: sidecar not reachable at {settings.sidecar_url}; start "
                  "daprd beside it, or set DAPR_HTTP_PORT / DAPR_HTTP_ENDPOINT", file=err)
            return EXIT_NO_SIDECAR
        _, service = await conn.ready()
        for number, line in lines:
            count = number
            try:
                parsed = parse_line(line)
                if isinstance(parsed, Ignored):
                    report.counts["ignored"] += 1
                    said = f"ignored ({parsed.event_type[:100]} is not a task event)"
                else:
                    report.counts[await service.handle_event(parsed)] += 1
                    said = (f"{parsed.event_type} task {json.dumps(parsed.task_id)}: "
                            + applied.human(applied.last.get() or {"outcome": "applied"}))
                if out is not None:
                    report.say(out, f"line {number}: {said}")
            except InvalidEvent as exc:
                report.fail(number, exc.reason)
            except (TransientError, PermanentSidecarError) as exc:
                report.fail(number, f"sidecar: {exc}")
            report.progress(number)
    print(report.summary(count, time.perf_counter() - start), file=err)
    return EXIT_FAILED_LINES if report.failed else 0


def replay_main(settings: Settings, path: str, *, dry_run: bool, start: int = 1) -> int:
    try:
        stream = open_input(path)
        total = count_lines(stream) if sys.stderr.isatty() else None
    except FileNotFoundError:
        print(f"reminder-worker: --replay: no such file: {path}", file=sys.stderr)
        return EXIT_UNREADABLE
    except IsADirectoryError:
        print(f"reminder-worker: --replay: is a directory: {path}", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as exc:
        print(f"reminder-worker: --replay: cannot read {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
    lines = read_lines(stream, start)
    report = Report(sys.stderr, total, start)
    try:
        if dry_run:
            return plan_only(lines, settings, sys.stdout, sys.stderr, report=report)
        return anyio.run(partial(live, lines, settings, sys.stderr, out=sys.stdout,
                                 report=report))
    except StartupError as exc:
        print(exc.line(), file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        report._clear()
        done = report.done_line
        print(f"reminder-worker: stopped after line {done}; resume with --from {done + 1}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the file became unreadable midway
        print(f"reminder-worker: --replay: cannot read {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
