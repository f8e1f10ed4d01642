"""The pod as it runs in production, measured: the worker behind the real daprd and
scheduler (`make dapr`) with Redis (state and streams), all on this machine.

1. Throughput: task.created events published through daprd as fast as daprd takes
   them; events/s until the worker has applied all, and the CPU each process spent
   per event (worker, daprd, scheduler, Redis), from /proc. Is the worker the pod's
   bottleneck?
2. Fire latency: due time -> reminder.due on the topic (the Redis stream entry's own
   timestamp), p50/p99, for reminders due in the same second and spread over a minute.
3. Memory: daprd's and the scheduler's RSS with 100k pending jobs.

    python -m bench.pod [--events 3000] [--burst 1000] [--spread 600] [--jobs 100000]

Prints a Markdown report; writes bench/out/pod.json. Needs Redis (`make e2e` installs
it) and the binaries of `make dapr`. Takes about 6 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from e2e.conftest import Pod
from e2e.procs import Daprd, Proc, Redis, Scheduler, Worker, wait_until

OUT = Path(__file__).resolve().parent / "out"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CONCURRENCY = 32


def cpu_seconds(proc: Proc) -> float:
    assert proc.proc is not None
    fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(proc: Proc) -> float:
    assert proc.proc is not None
    pages = int(Path(f"/proc/{proc.proc.pid}/statm").read_text().split()[1])
    return pages * PAGE / 2**20


def z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def publish_all(url: str, topic: str, events: list[dict[str, Any]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(ev: dict[str, Any]) -> None:
            async with sem:
                r = await client.post(f"/v1.0/publish/pubsub/{topic}", json=ev)
                assert r.status_code == 204, r.text
        await asyncio.gather(*(one(e) for e in events))


async def schedule_jobs(url: str, n: int) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)
    due = z(datetime.now(UTC) + timedelta(days=30))
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(i: int) -> None:
            async with sem:
                r = await client.post(f"/v1.0/jobs/bench-{i}", json={
                    "dueTime": due, "data": {"i": str(i)}, "overwrite": True})
                assert r.status_code == 204, r.text
        for lo in range(0, n, 2000):
            await asyncio.gather(*(one(i) for i in range(lo, min(n, lo + 2000))))
    return time.perf_counter() - start


def processed(worker: Worker) -> float:
    return worker.metric("reminder_worker_events_total", type="task.created",
                         outcome="processed")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(redis: Redis, user: str) -> list[float]:
    """Seconds from each reminder's instant to its entry on the `reminders` stream."""
    out = []
    for entry_id, fields in redis("XRANGE", "reminders", "-", "+") or []:
        data = json.loads(dict(zip(fields[::2], fields[1::2], strict=True))[b"data"])["data"]
        if data.get("user_id") != user:
            continue
        added = int(entry_id.split(b"-")[0]) / 1000
        out.append(added - datetime.fromisoformat(data["remind_at"]).timestamp())
    return out


def fire(pod: Pod, redis: Redis, user: str, ats: list[datetime]) -> dict[str, float]:
    events = [{"event_type": "task.created", "task_id": i, "user_id": user,
               "timestamp": z(datetime.now(UTC)),
               "payload": {"due_at": z(at + timedelta(hours=1)), "remind_at": [z(at)]}}
              for i, at in enumerate(ats)]
    before = processed(pod.worker)
    asyncio.run(publish_all(pod.daprd.url, pod.topic, events))
    wait_until(lambda: processed(pod.worker) >= before + len(events), 120, "events applied")
    assert datetime.now(UTC) < min(ats), "scheduling took longer than the lead time"
    last = max(ats)
    wait_until(lambda: len(latencies(redis, user)) >= len(ats),
               (last - datetime.now(UTC)).total_seconds() + 120, "every reminder.due")
    lat = latencies(redis, user)
    return {"n": len(lat), "p50_ms": percentile(lat, 0.5) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000, "max_ms": max(lat) * 1000,
            "min_ms": min(lat) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--spread", type=int, default=600)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--daprd-arg", action="append", default=[],
                    help="more daprd flags, e.g. --daprd-arg=--app-max-concurrency=64")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="reminder-worker-pod-"))
    redis = Redis(root)
    redis.start()
    scheduler = Scheduler(root)
    scheduler.start()
    worker = Worker(root, "worker", 0, {"REMINDER_APP_ID": "rw-bench",
                                        "REMINDER_TASK_TOPIC": "bench-events",
                                        "REMINDER_LOG_LEVEL": "warning"})
    daprd = Daprd(root, "daprd", worker.app_port, scheduler.address, "redis",
                  app_id="rw-bench", extra=["--log-level", "warn", *args.daprd_arg])
    worker.env["DAPR_HTTP_PORT"] = str(daprd.http_port)
    pod = Pod(daprd, worker, "redis", "bench-events")
    report: dict[str, Any] = {"load_before": os.getloadavg()[0], "daprd_args": args.daprd_arg}
    try:
        pod.start()
        procs = {"worker": worker.proc, "daprd": daprd.proc, "scheduler": scheduler.proc,
                 "redis": redis.proc}
        # 1. throughput
        due = datetime.now(UTC) + timedelta(days=2)
        events = [{"event_type": "task.created", "task_id": i, "user_id": "bench-tp",
                   "timestamp": z(datetime.now(UTC)),
                   "payload": {"due_at": z(due), "reminders": ["PT1H"]}}
                  for i in range(args.events)]
        cpu0 = {k: cpu_seconds(p) for k, p in procs.items()}
        own0 = time.process_time()
        t0 = time.perf_counter()
        asyncio.run(publish_all(daprd.url, pod.topic, events))
        wait_until(lambda: processed(worker) >= args.events, 300, "the burst applied")
        wall = time.perf_counter() - t0
        cpu = {k: (cpu_seconds(p) - cpu0[k]) / args.events * 1e6 for k, p in procs.items()}
        cpu["load generator"] = (time.process_time() - own0) / args.events * 1e6
        report["throughput"] = {"events": args.events, "wall_s": wall,
                                "events_per_s": args.events / wall, "cpu_us_per_event": cpu}
        print(json.dumps(report["throughput"]), file=sys.stderr, flush=True)
        rate = args.events / wall
        # 2. fire latency
        # time to apply the events before the first is due, at half the measured rate
        lead = timedelta(seconds=max(15, 2 * args.burst / rate))
        at = (datetime.now(UTC) + lead).replace(microsecond=0)
        report["same_second"] = fire(pod, redis, "bench-burst", [at] * args.burst)
        print(json.dumps(report["same_second"]), file=sys.stderr, flush=True)
        lead = timedelta(seconds=max(15, 2 * args.spread / rate))
        start = (datetime.now(UTC) + lead).replace(microsecond=0)
        step = 60 / args.spread
        report["spread_minute"] = fire(pod, redis, "bench-spread",
                                       [start + timedelta(seconds=i * step)
                                        for i in range(args.spread)])
        # 3. memory with pending jobs
        mem0 = {"daprd": rss_mb(daprd.proc), "scheduler": rss_mb(scheduler.proc)}
        took = asyncio.run(schedule_jobs(daprd.url, args.jobs))
        mem1 = {"daprd": rss_mb(daprd.proc), "scheduler": rss_mb(scheduler.proc)}
        etcd = sum(f.stat().st_size for f in scheduler.data.rglob("*") if f.is_file())
        report["pending_jobs"] = {"jobs": args.jobs, "schedule_s": took,
                                  "jobs_per_s": args.jobs / took, "rss_mb_before": mem0,
                                  "rss_mb_after": mem1, "etcd_disk_mb": etcd / 2**20,
                                  "worker_rss_mb": rss_mb(worker.proc)}
    finally:
        pod.stop()
        scheduler.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "pod.json").write_text(json.dumps(report, indent=2))
    print(render(report))
    return 0


def render(r: dict[str, Any]) -> str:
    tp = r["throughput"]
    cpu = tp["cpu_us_per_event"]
    pod_total = sum(v for k, v in cpu.items() if k != "load generator")
    rows = "\n".join(f"| {k} | {v:.0f} | {v / pod_total:.0%} |" if k != "load generator"
                     else f"| {k} (not the pod) | {v:.0f} | |" for k, v in cpu.items())
    lat = "\n".join(
        f"| {name} | {r[key]['n']} | {r[key]['p50_ms']:.0f} | {r[key]['p99_ms']:.0f} | "
        f"{r[key]['max_ms']:.0f} |"
        for name, key in (("same second", "same_second"), ("spread over 60 s", "spread_minute")))
    pj = r["pending_jobs"]
    return f"""## Pod benchmark (bench/pod.py): worker + real daprd 1.18.2 + scheduler + Redis

Load average before: {r['load_before']:.2f}. 2 cores shared by every process below.

Throughput: {tp['events']} task.created through daprd's publish API in {tp['wall_s']:.1f} s:
**{tp['events_per_s']:.0f} events/s**; CPU per event by process:

| process | CPU µs per event | share of the pod |
|---|---|---|
{rows}

Fire latency (instant -> reminder.due entry on the stream):

| reminders | n | p50 ms | p99 ms | max ms |
|---|---|---|---|---|
{lat}

{pj['jobs']} pending jobs scheduled in {pj['schedule_s']:.0f} s ({pj['jobs_per_s']:.0f} jobs/s):
daprd RSS {pj['rss_mb_before']['daprd']:.0f} -> {pj['rss_mb_after']['daprd']:.0f} MB,
scheduler RSS {pj['rss_mb_before']['scheduler']:.0f} -> {pj['rss_mb_after']['scheduler']:.0f} MB,
etcd data on disk {pj['etcd_disk_mb']:.0f} MB; worker RSS {pj['worker_rss_mb']:.0f} MB.
"""


if __name__ == "__main__":
    sys.exit(main())
