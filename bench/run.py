"""`make bench`: every scenario and baseline in one run; prints a table, writes bench/RESULTS.md.

Core 0: the app under test (uvicorn, pinned). Core 1: the fake daprd and wrk.
Events per second per worker core = events answered / CPU seconds the app's
process used (utime + stime from /proc), so wrk and the fake sharing the
machine do not distort it. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.events import replay_lines, task_event

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LUA = str(ROOT / "bench" / "load.lua")
APP_CPU, LOAD_CPU = 0, 1
TICKS = os.sysconf("SC_CLK_TCK")

# Targets of issue 4.
T_EVENTS, T_STRETCH, T_VS_S, T_R0_B, T_REPLAY, T_RSS = 600, 1500, 10.0, 0.30, 10_000, 80.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def http(method: str, url: str, body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": content_type})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status), bytes(resp.read())


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def serving(kind: str, port: int, sidecar_port: int, cpu: int, client: str = "default",
            spin_us: float = 0.0) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [PY, "-m", "bench.serve", kind, "--port", str(port), "--sidecar-port",
           str(sidecar_port), "--cpu", str(cpu), "--client", client, "--spin-us", str(spin_us)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(url: str, seconds: float, conns: int, *args: str) -> dict[str, Any]:
    cmd = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s",
           "--timeout", "10s", "-s", LUA, url, "--", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    return dict(json.loads(line[6:]))


@dataclass
class Row:
    name: str
    what: str
    events_per_core: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)  # worker CPU per event
    sys_us: list[float] = field(default_factory=list)
    calls: float | None = None
    errors: int = 0


@dataclass
class Bench:
    seconds: float
    repeats: int
    conns: int
    fake_port: int
    rows: dict[str, Row] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fake(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    def counts(self) -> dict[str, int]:
        return dict(json.loads(http("GET", self.fake + "/bench/counts")[1]))

    def scenario(self, name: str, what: str, app: str, load: str, client: str = "default",
                 probe: bool = True, spin_us: float = 0.0) -> Row:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        row = Row(name, what)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with serving(app, port, self.fake_port, APP_CPU, client, spin_us) as proc:
            http("POST", self.fake + "/bench/clear")
            extra = self.seed_job() if load == "job" else []
            wrk(url, 1, self.conns, load, f"{name}-warm", *extra)
            for r in range(self.repeats):
                user0, sys0 = cpu_times(proc.pid)
                out = wrk(url, self.seconds, self.conns, load, f"{name}-{r}", *extra)
                user1, sys1 = cpu_times(proc.pid)
                used = (user1 - user0) + (sys1 - sys0)
                seconds = out["duration_us"] / 1e6
                row.events_per_core.append(div(out["requests"], used))
                row.user_us.append(div(1e6 * (user1 - user0), out["requests"]))
                row.sys_us.append(div(1e6 * (sys1 - sys0), out["requests"]))
                row.throughput.append(out["requests"] / seconds)
                row.busy.append(used / seconds)
                row.p50_ms.append(out["p50_us"] / 1000)
                row.p99_ms.append(out["p99_us"] / 1000)
                row.errors += out["errors"] + out["non2xx"]
            if probe:
                row.calls = self.probe_calls(url, load, extra)
        self.rows[name] = row
        return row

    def seed_job(self) -> list[str]:
        """A saved task record and its job: every trigger reads it and publishes."""
        from worker.events import TaskEvent, parse_document
        from worker.keys import task_key
        from worker.plan import PlanConfig, make_plan
        from worker.records import dump_record

        event = parse_document(task_event("task1", "job", 1))
        assert isinstance(event, TaskEvent)
        plan = make_plan(None, event, dt.datetime.now(dt.UTC), PlanConfig())
        key = task_key(event.user_id, event.task_id)
        item = [{"key": key, "value": dump_record(plan.record)}]
        http("POST", self.fake + "/v1.0/state/statestore", json.dumps(item).encode())
        job = plan.schedule[0]
        return [f"/job/{job.name}", json.dumps(job.data, separators=(",", ":"))]

    def probe_calls(self, url: str, load: str, extra: list[str], n: int = 100) -> float:
        """Sidecar calls per event, exactly: n events one at a time, counted by the fake."""
        last: dict[str, int] = {}
        while (now := self.counts()) != last:  # let events cut off by wrk's stop finish
            last = now
            time.sleep(0.5)
        http("POST", self.fake + "/bench/reset")
        for i in range(n):
            if load == "job":
                http("POST", url + extra[0], extra[1].encode())
            else:
                body = json.dumps(task_event(load, "probe", i)).encode()
                http("POST", url + "/task-events", body, "application/cloudevents+json")
        return sum(self.counts().values()) / n

    def rss(self, events: tuple[int, ...] = (10_000, 100_000)) -> dict[str, float]:
        print("  rss ...", file=sys.stderr, flush=True)
        port = free_port()
        result: dict[str, float] = {}
        with serving("worker", port, self.fake_port, APP_CPU) as proc:
            http("POST", self.fake + "/bench/clear")
            time.sleep(0.5)
            result["rest"] = rss_mb(proc.pid)
            cmd = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{self.conns}", "-d600s",
                   "-s", LUA, f"http://127.0.0.1:{port}", "--", "task1", "rss"]
            load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                pending = list(events)
                while pending:
                    time.sleep(0.2)
                    done = self.counts().get("state.save", 0)  # one record save per event
                    while pending and done >= pending[0]:
                        result[f"after {pending.pop(0) // 1000}k"] = rss_mb(proc.pid)
                    if load.poll() is not None:
                        raise RuntimeError("wrk ended before the RSS run was done")
            finally:
                load.terminate()
                load.wait()
            time.sleep(1.0)
            result["rest after"] = rss_mb(proc.pid)
        self.extra["rss"] = result
        return result

    def replay(self, lines: int = 100_000) -> Row:
        print("  replay --dry-run ...", file=sys.stderr, flush=True)
        row = Row("replay", f"--replay --dry-run, {lines // 1000}k-line file (whole process)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.jsonl"
            path.write_bytes(replay_lines(lines))
            exe = str(Path(PY).parent / "reminder-worker")
            for _ in range(self.repeats):
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                proc = subprocess.run(["taskset", "-c", str(APP_CPU), exe, "--replay", str(path),
                                       "--dry-run"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                wall = time.perf_counter() - start
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                used = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
                if proc.returncode != 0:
                    row.errors += 1
                    print(proc.stderr[-500:], file=sys.stderr)
                row.throughput.append(lines / wall)
                row.events_per_core.append(lines / used)
        self.rows["replay"] = row
        return row


def mmm(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def versions() -> str:
    names = ["httpx", "httpx2", "httpx-aiohttp", "aiohttp", "httpcore", "sniffio", "uvicorn",
             "httptools", "uvloop", "anyio", "structlog", "prometheus-client", "pydantic"]
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return ", ".join(found) + f"; {wrk_v.strip()}"


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return (f"{model}, {os.cpu_count()} cores, {int(mem) // 1024} MiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(limit: float, deadline: float) -> tuple[float, float]:
    start = time.monotonic()
    while loadavg() >= limit and time.monotonic() - start < deadline:
        print(f"  waiting for quiet: load {loadavg():.2f} >= {limit}", file=sys.stderr,
              flush=True)
        time.sleep(10)
    return loadavg(), time.monotonic() - start


def report(b: Bench, started: str, load_before: float, waited: float, load_after: float,
           elapsed: float) -> str:
    r = b.rows
    base_b, base_s = med(r["B"].events_per_core), med(r["S"].events_per_core)
    lines = [
        "| scenario | what | events/s per worker core (min/med/max) | ratio (median) "
        "| throughput/s (med) | worker core busy | worker CPU us/event, user + sys (med) "
        "| p50 ms (med) | p99 ms (med) | sidecar calls/event | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r.values():
        if row.name == "replay":
            continue
        ratio = ""
        if row.name in ("R0", "A", "W"):
            ratio = f"{row.name}/B = {div(med(row.events_per_core), base_b):.2f}"
        elif row.name not in ("B", "S"):
            ratio = f"{div(med(row.events_per_core), base_s):.1f}x S"
        lines.append(
            f"| {row.name} | {row.what} | {mmm(row.events_per_core)} | {ratio} "
            f"| {med(row.throughput):.0f} | {med(row.busy):.0%} "
            f"| {med(row.user_us):.1f} + {med(row.sys_us):.1f} | {med(row.p50_ms):.1f} "
            f"| {med(row.p99_ms):.1f} | {'' if row.calls is None else f'{row.calls:.2f}'} "
            f"| {row.errors} |")
    rep = r["replay"]
    lines.append(f"| replay | {rep.what} | {mmm(rep.events_per_core)} (per CPU-s) | "
                 f"| {mmm(rep.throughput)} (wall) | | | | | 0 | {rep.errors} |")
    rss = b.extra.get("rss", {})
    rss_line = ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items())
    task1 = med(r["task1"].events_per_core)
    r0b = div(med(r["R0"].events_per_core), base_b)
    growth = rss.get("after 100k", 0) - rss.get("after 10k", 0)
    checks = [
        ("task.created (1 reminder) events/s per worker core", f"≥ {T_EVENTS} "
         f"(stretch {T_STRETCH})", f"{task1:.0f}", task1 >= T_EVENTS),
        ("same, ratio to S", f"≥ {T_VS_S:.0f}x", f"{div(task1, base_s):.1f}x",
         div(task1, base_s) >= T_VS_S),
        ("R0 / B", f"≥ {T_R0_B}", f"{r0b:.2f}", r0b >= T_R0_B),
        ("sidecar calls per task.created, k=1 / k=3", "≤ k + 2 (3 / 5)",
         f"{r['task1'].calls:.2f} / {r['task3'].calls:.2f}",
         (r["task1"].calls or 99) <= 3 and (r["task3"].calls or 99) <= 5),
        ("replay --dry-run events/s (wall, whole process)", f"≥ {T_REPLAY}",
         f"{med(rep.throughput):.0f}", med(rep.throughput) >= T_REPLAY),
        ("RSS after 100k events; growth vs after 10k", f"≤ {T_RSS:.0f} MB; ~0",
         f"{rss.get('after 100k', 0):.1f} MB; {growth:+.1f} MB",
         0 < rss.get("after 100k", 999) <= T_RSS and growth <= 2.0),
    ]
    target_lines = ["| target | wanted | measured | met |", "|---|---|---|---|"]
    target_lines += [f"| {n} | {w} | {m} | {'yes' if ok else '**no**'} |"
                     for n, w, m, ok in checks]
    return "\n".join([
        "# Benchmark results",
        "",
        f"- date: {started} (run took {elapsed:.0f} s)",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- commit: {git_rev()}",
        f"- load (1-min) before: {load_before:.2f} (waited {waited:.0f} s for quiet), "
        f"after: {load_after:.2f}",
        f"- set-up: app pinned to core {APP_CPU} (uvicorn as the daemon configures it); fake daprd "
        f"(uvloop + httptools) and wrk (1 thread, {b.conns} connections) pinned to core "
        f"{LOAD_CPU}; {b.repeats} runs x {b.seconds:g} s per scenario after a 1 s warm-up; "
        "figures are min/median/max over the runs",
        "",
        *lines,
        "",
        f"RSS of the worker (task.created, 1 reminder): {rss_line}",
        "",
        *r0_split(r, b.extra.get("spin_us", 0.0)),
        "## Targets (issue 4)",
        "",
        *target_lines,
        "",
    ])


def r0_split(r: dict[str, Row], spin_us: float) -> list[str]:
    """Where R0's CPU per event goes, from the B, A, W and R0 rows of this run.

    Totals (user + sys), not the split: the kernel charges its time by ticks, and
    the sys share of one 5 s run moves by several us per event from run to run.
    """
    if not all(name in r for name in ("B", "A", "W", "R0")):
        return []

    def total(name: str) -> float:
        return med(r[name].user_us) + med(r[name].sys_us)

    b, a, w, r0 = total("B"), total("A"), total("W"), total("R0")
    rate = w - a - spin_us
    service = r0 - a - rate
    budget = b / T_R0_B
    return [
        "## Where R0's CPU per event goes (this run, medians, us per event)",
        "",
        "| part | us per event |",
        "|---|---|",
        f"| B: uvicorn and the loop (hello world) | {b:.1f} |",
        f"| A - B: the app layer (routing, body, deadline guard, answer) | {a - b:.1f} |",
        f"| W - A - {spin_us:.0f}: what a handler as slow as R0 costs beyond its own CPU "
        f"(W spins {spin_us:.0f} us and calls nothing: the kernel waking the idle load "
        f"generator for each answer, colder caches) | {rate:.1f} |",
        f"| R0 - A - that: the service's own work (parsing, planning, digests, bodies, "
        f"metrics, log line) | {service:.1f} |",
        f"| R0 | {r0:.1f} |",
        "",
        f"R0/B >= {T_R0_B} means R0 <= {budget:.1f} us per event; with the app layer and "
        f"the cost of the rate as measured, the service's own work would have to fit in "
        f"about {budget - a - rate:.1f} us (today {service:.1f}).",
        "",
    ]


def git_rev() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "worker"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out + (" (worker/ has uncommitted changes)" if dirty else "")


CLIENT_ROWS = [
    ("httpx 0.28.1", "httpx"),
    ("httpx 0.28.1 + sniffio", "httpx+sniffio"),
    ("httpx2", "httpx2"),
    ("httpx + aiohttp transport", "httpx+aiohttp"),
    ("httpx2 + aiohttp transport", "httpx2+aiohttp"),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--quiet-load", type=float, default=0.7,
                   help="wait until the 1-min load is below this (0: do not wait)")
    p.add_argument("--quiet-deadline", type=float, default=600)
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--no-clients", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2 or not shutil.which("wrk"):
        print("bench: needs 2 cores and wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    waited = 0.0
    if args.quiet_load > 0:
        _, waited = wait_quiet(args.quiet_load, args.quiet_deadline)
    load_before = loadavg()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    fake_port = free_port()
    b = Bench(args.seconds, args.repeats, args.conns, fake_port)
    with serving("fake", fake_port, fake_port, LOAD_CPU):
        b.scenario("B", "baseline: raw ASGI hello world", "hello", "task1", probe=False)
        b.scenario("R0", "worker, no-op sidecar client", "noop", "task1", probe=False)
        b.scenario("A", "WorkerApp, service answers at once (the app layer)", "answer",
                   "task1", probe=False)
        spin = max(0.0, med(b.rows["R0"].user_us) - med(b.rows["A"].user_us))
        b.extra["spin_us"] = spin
        b.scenario("W", f"A, service burns {spin:.0f} us of CPU (R0's rate, no calls)",
                   "spin", "task1", probe=False, spin_us=spin)
        b.scenario("S", "reference: client per call, GET+POST dedupe, job POST", "reference",
                   "task1")
        b.scenario("task1", "task.created, 1 reminder", "worker", "task1")
        b.scenario("task3", "task.created, 3 reminders", "worker", "task3")
        b.scenario("job", "job trigger -> publish", "worker", "job")
        b.scenario("completed", "task.completed, recurring -> next occurrence", "worker",
                   "completed")
        if not args.no_clients:
            for label, client in CLIENT_ROWS:
                b.scenario(f"client: {label}", "task.created, 1 reminder", "worker", "task1",
                           client, probe=False)
        b.replay()
        if not args.no_rss:
            b.rss()
    text = report(b, started, load_before, waited, loadavg(), time.monotonic() - t0)
    out = Path(args.out)
    out.write_text(keep_by_hand(text, out.read_text() if out.exists() else ""))
    print(text)
    return 0


KEPT_BY_HAND = ("<!-- Everything below this line is kept by hand: `make bench` rewrites "
                "only what is above it. -->")


def keep_by_hand(report_text: str, previous: str) -> str:
    """This run's report, then the sections of the previous file that earlier runs,
    other benchmarks and analyses wrote by hand below the marker (a run must not
    erase them)."""
    _, marker, kept = previous.partition(KEPT_BY_HAND)
    if not marker:
        return report_text
    return f"{report_text.rstrip()}\n\n{KEPT_BY_HAND}{kept}"


if __name__ == "__main__":
    sys.exit(main())
