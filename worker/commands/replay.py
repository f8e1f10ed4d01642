"""`--replay PATH`: feed a file of task events through the same handling.

The input is JSON Lines, a JSON array of events, or JSON objects one after another
(a pretty-printed event pasted in spans lines); every message names a value by the
line it starts on. A bad value is reported and skipped (reading goes on at the
next line that starts with { or [). `--dry-run` calls no sidecar: records are
kept in memory and the plan of every event is printed as JSON Lines on stdout. A
live replay prints what each value did on stdout (the summary of its log line),
and failures, progress and the total on stderr. `--from N` starts at line N (an
error when the input has fewer lines); Ctrl-C or SIGTERM stops after the value in
flight is abandoned (each one is idempotent) and says where to resume.

Exit status: 0 every value applied (or ignored), 1 some failed, 2 the file cannot
be read, --from is past its end, or the sidecar cannot run the worker (token,
version), 3 no sidecar answers, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import bisect
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import IO, Final

import anyio

from worker import applied
from worker.clock import Clock, system_clock
from worker.commands.connect import connect
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
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM


def open_input(path: str) -> IO[bytes]:
    """The file, opened now: a missing or unreadable one fails before any sidecar call."""
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def count_lines(stream: IO[bytes]) -> int | None:
    """Lines of a regular file (a last line without a newline counts), or None for a
    pipe."""
    if stream is sys.stdin.buffer or not stream.seekable():
        return None
    total, last = 0, b"\n"
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        total += chunk.count(b"\n")
        last = chunk[-1:]
    stream.seek(0)
    return total + (last != b"\n")


class PastTheEnd(Exception):
    """--from N beyond the input's last line."""

    def __init__(self, lines: int) -> None:
        super().__init__(lines)
        self.lines = lines


@dataclass(frozen=True)
class Bad:
    """An input item that is no JSON value: why."""

    reason: str


@dataclass(frozen=True)
class Item:
    """One JSON value of the input (or why there is none), and the lines it spans."""

    line: int  # where it starts: the number every message gives
    end: int
    doc: object  # the decoded value, or Bad


# Between values: whitespace, and the commas and brackets of a JSON array of events.
_SEPARATORS: Final = " \t\r\n,[]"
_OPENERS: Final = ("{", "[")  # a line starting so may begin a value (resync after a bad one)
MAX_ITEM_CHARS: Final = 1024 * 1024  # as the app port's bodies: an event is far smaller
_decoder = json.JSONDecoder()


def read_items(path: str | IO[bytes], start: int = 1) -> Iterator[Item]:
    """The JSON values of the input from line `start`: JSON Lines, a JSON array of events
    (pretty-printed or not) or concatenated multi-line objects. A bad value is an Item
    whose doc is Bad, numbered by the line it starts on; reading goes on at the next
    line that starts with { or [, so one bad line of JSON Lines fails alone. Raises
    PastTheEnd when the input has fewer than `start` lines."""
    stream = open_input(path) if isinstance(path, str) else path
    pending: list[tuple[int, str]] = []  # the lines of a value not complete yet
    resync = False  # after a broken multi-line value: skip to a line that may begin one
    number = 0
    try:
        for number, raw in enumerate(stream, 1):
            if number < start:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                first = pending[0][0] if pending else number
                yield Item(first, number, Bad("not JSON (or not UTF-8)" if not pending else
                                              f"not UTF-8 (line {number} of this value)"))
                pending, resync = [], bool(pending)
                continue
            if not pending and not text.strip(_SEPARATORS):
                continue
            if resync and not pending:
                if not text.lstrip(_SEPARATORS).startswith(_OPENERS):
                    continue
                resync = False
            pending.append((number, text))
            pending, resync = yield from _values(pending, final=False)
        if pending:
            yield from _values(pending, final=True)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if number < start:
        raise PastTheEnd(number)


def _line_at(starts: list[int], pos: int) -> int:
    """The index of the line holding character `pos` (`starts`: each line's first)."""
    return bisect.bisect_right(starts, pos) - 1


def _values(lines: list[tuple[int, str]], *, final: bool
            ) -> Generator[Item, None, tuple[list[tuple[int, str]], bool]]:
    """Yield the complete values in `lines` (numbered lines); return the lines of a
    value not complete yet (none when `final`: it is reported), and whether the lines
    that follow belong to a broken value (skip them up to one that may begin a value)."""
    resync = False
    while lines:
        text = "".join(t for _, t in lines)
        starts = [0]
        for _, t in lines[:-1]:
            starts.append(starts[-1] + len(t))
        pos = len(text) - len(text.lstrip(_SEPARATORS))
        if pos == len(text):
            return [], resync
        first = _line_at(starts, pos)
        try:
            doc, end = _decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            at = exc.pos if isinstance(exc, json.JSONDecodeError) else len(text)
            incomplete = at >= len(text.rstrip())
            if incomplete and not final and len(text) - starts[first] <= MAX_ITEM_CHARS:
                return lines[first:], False  # wait for its next line
            if incomplete and first < len(lines) - 1:
                reason = ("not JSON: the value that starts here is not complete "
                          + ("at the end of the input" if final else "within 1 MiB"))
            elif first < _line_at(starts, at):
                reason = f"not JSON (the value that starts here breaks on line " \
                         f"{lines[_line_at(starts, at)][0]})"
            else:
                reason = "not JSON (or not UTF-8)"
            broken = _line_at(starts, min(at, len(text) - 1))
            yield Item(lines[first][0], lines[broken][0], Bad(reason))
            # go on at the next line after its first that may begin a value; the rest
            # of a broken multi-line value is skipped as it comes
            rest = lines[first + 1:]
            while rest and not rest[0][1].lstrip(_SEPARATORS).startswith(_OPENERS):
                rest = rest[1:]
            resync = not rest and broken > first
            lines = rest
            continue
        last = _line_at(starts, end - 1)
        yield Item(lines[first][0], lines[last][0], doc)
        tail = text[end:starts[last + 1] if last + 1 < len(lines) else len(text)]
        lines = ([(lines[last][0], tail)] if tail.strip(_SEPARATORS) else []) + lines[last + 1:]
        resync = False
    return [], resync


def read_lines(path: str | IO[bytes], start: int = 1) -> Iterator[Item]:
    """`read_items` (the name from its JSON Lines days)."""
    return read_items(path, start)


def parse_item(item: Item) -> TaskEvent | Ignored:
    if isinstance(item.doc, Bad):
        raise InvalidEvent(item.doc.reason)
    return parse_document(item.doc)


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
        self.done_line = start - 1  # the last line of the last value whose handling finished
        self.in_flight: int | None = None  # the first line of the value being handled
        self.values = 0  # values handled (applied, ignored or failed)
        self.first_line: int | None = None

    @property
    def resume_line(self) -> int:
        """Where --from resumes: the value in flight, else the line after the last done."""
        return self.in_flight if self.in_flight is not None else self.done_line + 1

    def begin(self, item: Item) -> None:
        self.in_flight = item.line
        if self.first_line is None:
            self.first_line = item.line

    def fail(self, number: int, reason: str) -> None:
        self.failed += 1
        self._clear()
        print(f"line {number}: {reason}", file=self.err)

    def progress(self, item: Item) -> None:
        number = self.done_line = item.end
        self.in_flight = None
        self.values += 1
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

    def summary(self, elapsed: float) -> str:
        """`replayed 3 events (lines 3-5) in 0.10 s (30/s): processed 3, failed 0`: the
        values this run handled, from the line it started at to the last it read."""
        self._clear()
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        rate = self.values / elapsed if elapsed > 0 else 0.0
        span = ""
        if self.first_line is not None:
            span = (f" (line {self.first_line})" if self.first_line == self.done_line
                    else f" (lines {self.first_line}-{self.done_line})")
        return (f"replayed {self.values} event{'s' * (self.values != 1)}{span} in "
                f"{elapsed:.2f} s ({rate:.0f}/s): {parts or 'nothing applied'}, "
                f"failed {self.failed}")


def plan_only(items: Iterable[Item], settings: Settings, out: IO[str], err: IO[str],
              clock: Clock = system_clock, report: Report | None = None) -> int:
    """Plan every event against in-memory records; print each plan as one JSON line."""
    config = PlanConfig(settings.all_day_time, settings.default_reminders,
                        settings.misfire_grace_delta, settings.default_quiet_hours)
    records: dict[str, TaskRecord] = {}
    report = report or Report(err)
    now = clock()
    start = time.perf_counter()
    write = out.write
    for item in items:
        report.begin(item)
        number = item.line
        try:
            parsed = parse_item(item)
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
        finally:
            report.progress(item)
        if plan.outcome == "processed":
            records[key] = plan.record
        report.counts[plan.event_outcome] += 1
        write(json.dumps({"line": number, **plan.to_json(parsed)}, separators=(",", ":")))
        write("\n")
    out.flush()
    print(report.summary(time.perf_counter() - start), file=err)
    return 1 if report.failed else 0


async def live(items: Iterable[Item], settings: Settings, err: IO[str],
               clock: Clock = system_clock, out: IO[str] | None = None,
               report: Report | None = None) -> int:
    """Send every event through the service against the configured sidecar; say what
    each value did on `out` (by the line it starts on)."""
    report = report or Report(err)
    start = time.perf_counter()
    async with connect(settings, clock=clock) as conn:
        if not await conn.sidecar.outbound_healthy():
            print(f"reminder-worker: sidecar not reachable at {settings.sidecar_url}; start "
                  "daprd beside it, or set DAPR_HTTP_PORT / DAPR_HTTP_ENDPOINT", file=err)
            return EXIT_NO_SIDECAR
        _, service = await conn.ready()
        for item in items:
            report.begin(item)
            number = item.line
            try:
                parsed = parse_item(item)
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
            report.progress(item)
    print(report.summary(time.perf_counter() - start), file=err)
    return EXIT_FAILED_LINES if report.failed else 0


def replay_main(settings: Settings, path: str, *, dry_run: bool, start: int = 1) -> int:
    name = "standard input" if path == "-" else path
    try:
        stream = open_input(path)
        total = count_lines(stream)
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
    if total is not None and total < start:  # a file: told before any sidecar call
        stream.close()
        print(past_the_end(name, start, total), file=sys.stderr)
        return EXIT_UNREADABLE
    items = read_items(stream, start)
    report = Report(sys.stderr, total, start)
    # SIGTERM stops a replay as Ctrl-C does (asyncio's SIGINT handling cancels the work
    # in flight), so it too says where to resume.
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if dry_run:
            return plan_only(items, settings, sys.stdout, sys.stderr, report=report)
        return anyio.run(partial(live, items, settings, sys.stderr, out=sys.stdout,
                                 report=report))
    except StartupError as exc:
        print(exc.line(), file=sys.stderr)
        return EXIT_UNREADABLE
    except PastTheEnd as exc:  # a pipe: known once read
        print(past_the_end(name, start, exc.lines), file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        report._clear()
        print(f"reminder-worker: {'terminated' if terminated else 'stopped'} after line "
              f"{report.done_line}; resume with --from {report.resume_line}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except OSError as exc:  # the file became unreadable midway
        print(f"reminder-worker: --replay: cannot read {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
    finally:
        signal.signal(signal.SIGTERM, previous)


def past_the_end(name: str, start: int, lines: int) -> str:
    return (f"reminder-worker: --replay: --from {start} is past the end of {name}, which has "
            f"{lines} line{'s' * (lines != 1)}; nothing was replayed")
