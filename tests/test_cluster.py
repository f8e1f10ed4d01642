"""The cluster harness itself: its kill -9 leaves nothing of a replica answering, and its
waits fail loudly, naming what they waited for, instead of hanging."""

from __future__ import annotations

import socket

import anyio
import anyio.lowlevel
import httpx
import pytest

from tests.cluster import cluster

pytestmark = pytest.mark.anyio


async def test_a_killed_replica_answers_nothing_from_the_moment_it_is_killed() -> None:
    # A real kill -9 drops every socket of the process at once. The harness once closed
    # them only after the cancelled worker had unwound, and a connection the sidecar
    # opened meanwhile stayed served by the dead worker (its sidecar client closed: every
    # delivery and trigger on it answered RETRY/500, forever, since the sidecar's pool
    # kept reusing it): the long soak crawled for many minutes.
    async with cluster(1) as c, httpx.AsyncClient(timeout=5) as client:
        replica = c.replicas[0]
        url = f"{replica.app_url}/healthz"
        assert (await client.get(url)).status_code == 204  # a keep-alive connection now
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.kill_all)
            await anyio.lowlevel.checkpoint()  # the kill has begun; the replica has not exited yet
            assert not replica.done.is_set()
            with pytest.raises(httpx.TransportError):
                await client.get(url)  # neither on the open connection nor on a new one
            async with httpx.AsyncClient(timeout=5) as fresh:
                with pytest.raises(httpx.TransportError):
                    await fresh.get(url)
        assert replica.done.is_set()


async def test_a_connection_accepted_as_the_replica_is_killed_is_closed_too() -> None:
    async with cluster(1) as c:
        replica = c.replicas[0]
        # The handshake completes in the kernel; the server accepts it in the next loop
        # iteration and sets its protocol up one later: kill in between.
        sock = socket.create_connection(("127.0.0.1", replica.running.app_port), timeout=5)
        with sock:
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            await c.kill_all()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert await _read_until_closed(sock, within=5.0) == b""


async def test_a_wait_that_runs_out_names_what_it_waited_for() -> None:
    async with cluster(1) as c:
        started = anyio.current_time()
        with pytest.raises(TimeoutError, match=r"1 deliveries to settle: 1 unsettled.*never-sent"):
            await c.wait_settled(["never-sent"], wait=0.2)
        assert anyio.current_time() - started < 5


async def test_a_failure_in_the_kill_hook_fails_the_next_wait_at_once() -> None:
    # The hook runs inside the sidecar's request handler, where uvicorn would only log
    # what it raises; the run must not go on (or wait out its deadlines) without replicas.
    async with cluster(1) as c:
        c.failure = AssertionError("replica 0 could not be restarted")
        started = anyio.current_time()
        with pytest.raises(AssertionError, match=r"kill hook failed.*could not be restarted"):
            await c.wait_settled(["never-sent"], wait=30)
        assert anyio.current_time() - started < 5
        c.failure = None


async def _read_until_closed(sock: socket.socket, within: float) -> bytes:
    """What arrives on `sock` until its peer closes it (without blocking the loop);
    AssertionError when it is still open after `within` seconds."""
    sock.setblocking(False)
    received = b""
    with anyio.move_on_after(within):
        while True:
            try:
                chunk = sock.recv(1024)
            except BlockingIOError:
                await anyio.sleep(0.01)
                continue
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the connection is still open after {within}s; got {received!r}")
