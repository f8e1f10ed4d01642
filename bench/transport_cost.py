"""CPU per sidecar call: worker.dapr.http1's transport (what make_client ships) against
httpx2's own (httpcore2's pool and h11), in-process, no daprd.

    python -m bench.transport_cost [--calls 1500] [--runs 5] [--concurrency 1,32]

A tiny server (asyncio + httptools: a 204 to every request, keep-alive) runs in a
child process pinned to one core; the client runs here, pinned to the other. Both
clients are built by worker.dapr.sidecar.make_client (the same limits and timeouts; the
second is given httpx2.AsyncHTTPTransport with make_client's limits) and send what
Sidecar.publish sends: a POST of a reminder.due CloudEvent with its content type, a
token and a traceparent. Each run is `calls` POSTs at one concurrency (that many
tasks taking calls from one count), after a warm-up on the same client; the
transports take turns run by run. CPU is this process's time.process_time() over
the run (the server's is its own process's), so other load on the machine moves
the calls/s more than the CPU per call. Prints min/median/max us of CPU per call
and calls/s per transport and concurrency. Figures are for the machine it runs on.

The defaults take 30-40 s on 2 cores. `--calls 5000` is the method of the
measurement that chose this transport (bench/RESULTS.md), about 100 s: nearly all
of it is httpx2's transport, at 1-2 ms of CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httptools
import httpx2

from worker import jsoncodec
from worker.dapr.sidecar import CE_JSON, KEEPALIVE_EXPIRY, MAX_CONNECTIONS, make_client

PATH = "/v1.0/publish/pubsub/reminders"
# The envelope worker.messages.reminder_due builds for a titled reminder (~560 bytes).
ENVELOPE: dict[str, Any] = {
    "specversion": "1.0", "type": "reminder.due", "source": "reminder-worker",
    "id": "rem-5f0c2a9e1b7d4c3a8e6f9b0d2c4a6e8f", "time": "2026-11-29T20:48:00.000Z",
    "datacontenttype": "application/json",
    "data": {"event_type": "reminder.due", "event_version": "1.0", "task_id": 123456,
             "user_id": "user-8d3f2b1a", "due_at": "2026-11-30T09:00:00.000Z",
             "remind_at": "2026-11-29T20:48:00.000Z", "fired_at": "2026-11-29T20:48:00.000Z",
             "timezone": "Europe/Berlin", "kind": "before",
             "title": "Renew the parking permit before the office closes on Friday"},
}
BODY = jsoncodec.dumps(ENVELOPE)
HEADERS = {"dapr-api-token": "0123456789abcdef0123456789abcdef", "content-type": CE_JSON,
           "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
WARMUP = 500


# -- the server (child process) ------------------------------------------------------

class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    # until the parent closes our stdin
    await loop.run_in_executor(None, sys.stdin.read)


# -- the client (this process) --------------------------------------------------------

def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def clients() -> dict[str, Callable[[], httpx2.AsyncClient]]:
    limits = httpx2.Limits(max_connections=MAX_CONNECTIONS,
                           max_keepalive_connections=MAX_CONNECTIONS,
                           keepalive_expiry=KEEPALIVE_EXPIRY)
    return {"http1": make_client,
            "httpx2": lambda: make_client(httpx2.AsyncHTTPTransport(limits=limits))}


async def burst(client: httpx2.AsyncClient, url: str, calls: int,
                concurrency: int) -> tuple[float, float]:
    """CPU and wall seconds for `calls` POSTs with `concurrency` in flight."""
    left = calls

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await client.post(url, content=BODY, headers=HEADERS)
            if response.status_code != 204:
                raise RuntimeError(f"answer {response.status_code}")

    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(url: str, calls: int, runs: int, levels: list[int],
                  makers: dict[str, Callable[[], httpx2.AsyncClient]],
                  ) -> dict[tuple[str, int], list[tuple[float, float]]]:
    made = {name: make() for name, make in makers.items()}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {
        (name, level): [] for name in made for level in levels}
    try:
        for client in made.values():  # connections open, code paths warm
            await burst(client, url, WARMUP, max(levels))
        for _ in range(runs):
            for level in levels:
                for name, client in made.items():
                    results[name, level].append(await burst(client, url, calls, level))
    finally:
        for client in made.values():
            await client.aclose()
    return results


def report(results: dict[tuple[str, int], list[tuple[float, float]]], calls: int,
           runs: int) -> None:
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, httpx2 {httpx2.__version__}, "
          f"{calls} POSTs x {runs} runs ({len(BODY)}-byte body)")
    print(f"{'transport':<9} {'conc':>4}  {'us CPU per call: min':>20} {'median':>7} "
          f"{'max':>7}  {'calls/s: min':>12} {'median':>7} {'max':>7}")
    for (name, level), figures in results.items():
        cpu = sorted(c / calls * 1e6 for c, _ in figures)
        rate = sorted(calls / w for _, w in figures)
        print(f"{name:<9} {level:>4}  {cpu[0]:>20.0f} {statistics.median(cpu):>7.0f} "
              f"{cpu[-1]:>7.0f}  {rate[0]:>12.0f} {statistics.median(rate):>7.0f} "
              f"{rate[-1]:>7.0f}")
    for level in sorted({level for _, level in results}):
        if ("http1", level) in results and ("httpx2", level) in results:
            ours = statistics.median(c for c, _ in results["http1", level])
            theirs = statistics.median(c for c, _ in results["httpx2", level])
            print(f"concurrency {level}: httpx2's own transport costs {theirs / ours:.1f}x "
                  "the CPU per call of worker.dapr.http1's (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="POSTs per run (default 1500)")
    parser.add_argument("--runs", type=int, default=5, help="runs per transport and concurrency")
    parser.add_argument("--concurrency", default="1,32",
                        help="comma-separated calls in flight (default 1,32)")
    parser.add_argument("--transports", default="http1,httpx2",
                        help="comma-separated, of http1 and httpx2 (default both)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    client_core, server_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    if args.serve:
        pin(server_core)
        asyncio.run(_serve())
        return
    if client_core is None:
        print("fewer than 2 cores: client and server share one; CPU figures still hold",
              file=sys.stderr)
    server = subprocess.Popen([sys.executable, "-m", "bench.transport_cost", "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        pin(client_core)
        levels = [int(level) for level in args.concurrency.split(",")]
        makers = {name: make for name, make in clients().items()
                  if name in args.transports.split(",")}
        results = asyncio.run(measure(f"http://127.0.0.1:{port}{PATH}", args.calls,
                                      args.runs, levels, makers))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    report(results, args.calls, args.runs)


if __name__ == "__main__":
    main()
