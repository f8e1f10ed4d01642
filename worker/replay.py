"""`--replay PATH`: feed a JSON Lines file of task events through the same handling.

Bad lines are reported with their number and skipped; the exit status is 1 if
any line failed. `--dry-run` calls no sidecar: records are kept in memory and
the plan of every event is printed as JSON Lines on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Final

import anyio
from prometheus_client import CollectorRegistry

from worker.daemon import check_sidecar, resolve_secrets
from worker.errors import InvalidEvent, PermanentSidecarError, StartupError, TransientError
from worker.events import Ignored, TaskEvent, parse_document
from worker.metrics import Metrics
from worker.plan import PlanConfig, make_plan
from worker.records import TaskRecord
from worker.schedule import task_key
from worker.service import Clock, Service, system_clock
from worker.settings import Settings
from worker.sidecar import Sidecar, make_client

PROGRESS_EVERY: Final = 0.2  # seconds between progress-bar redraws


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines; bytes, so one badly encoded line fails alone."""
    stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, 1):
            if line.strip():
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

    def __init__(self, err: IO[str]) -> None:
        self.err = err
        self.counts: Counter[str] = Counter()
        self.failed = 0
        self.tty = err.isatty()
        self._drawn = 0.0

    def fail(self, number: int, reason: str) -> None:
        self.failed += 1
        self._clear()
        print(f"line {number}: {reason}", file=self.err)

    def progress(self, number: int) -> None:
        if self.tty and (now := time.monotonic()) - self._drawn > PROGRESS_EVERY:
            self._drawn = now
            done = sum(self.counts.values())
            self.err.write(f"\rreplaying: line {number}, {done} ok, {self.failed} failed")
            self.err.flush()

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
            clock: Clock = system_clock) -> int:
    """Plan every event against in-memory records; print each plan as one JSON line."""
    config = PlanConfig(settings.all_day_time, settings.default_reminders,
                        settings.misfire_grace_delta, settings.default_quiet_hours)
    records: dict[str, TaskRecord] = {}
    report = Report(err)
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
               clock: Clock = system_clock) -> int:
    """Send every event through the service against the configured sidecar."""
    metrics = Metrics.create(CollectorRegistry(), process=False)
    token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    report = Report(err)
    count = 0
    start = time.perf_counter()
    async with make_client() as client:
        sidecar = Sidecar(settings.sidecar_url, client, metrics, api_token=token)
        if not await sidecar.outbound_healthy():
            print(f"reminder-worker: sidecar not reachable at {settings.sidecar_url}", file=err)
            return 1
        await check_sidecar(sidecar)
        settings = await resolve_secrets(settings, sidecar)
        service = Service(settings, sidecar, metrics, clock)
        for number, line in lines:
            count = number
            try:
                parsed = parse_line(line)
                if isinstance(parsed, Ignored):
                    report.counts["ignored"] += 1
                    continue
                report.counts[await service.handle_event(parsed)] += 1
            except InvalidEvent as exc:
                report.fail(number, exc.reason)
            except (TransientError, PermanentSidecarError) as exc:
                report.fail(number, f"sidecar: {exc}")
            report.progress(number)
    print(report.summary(count, time.perf_counter() - start), file=err)
    return 1 if report.failed else 0


def replay_main(settings: Settings, path: str, *, dry_run: bool) -> int:
    try:
        lines = read_lines(path)
        if dry_run:
            return plan_only(lines, settings, sys.stdout, sys.stderr)
        return anyio.run(live, lines, settings, sys.stderr)
    except FileNotFoundError:
        print(f"reminder-worker: --replay: no such file: {path}", file=sys.stderr)
        return 2
    except IsADirectoryError:
        print(f"reminder-worker: --replay: is a directory: {path}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"reminder-worker: {exc.label}: {exc}", file=sys.stderr)
        return 2
