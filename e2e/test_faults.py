"""Faults with the real runtime: a worker killed mid-burst, a daprd restart, a SIGTERM
drain, and two replicas sharing the scheduler, the store and the consumer group, each
with Redis streams and again with Kafka (and PostgreSQL, production's pair); a Redis
restart; a Kafka restart while a reminder falls due. Each test has pods of its own (their own app id
and task topic)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest

from e2e.conftest import PASSES, Pod, PodFactory
from e2e.procs import Kafka, Redis, wait_until
from e2e.test_flow import event, now, reminders_for, z
from worker.keys import task_key

BURST = 200


def burst(pod: Pod, user: str, n: int = BURST, hours: float = 12) -> None:
    due = now() + timedelta(hours=hours)
    for task in range(n):
        pod.daprd.publish(event("task.created", user, task, due_at=z(due), reminders=["PT1H"]),
                          ce_id=f"{user}-{task}", topic=pod.topic)


def applied(pod: Pod, user: str, n: int = BURST) -> list[int]:
    """Tasks of the burst whose record holds exactly one job."""
    body = {"keys": [task_key(user, t) for t in range(n)]}
    resp = pod.daprd.http.post("/v1.0/state/statestore/bulk", json=body)
    resp.raise_for_status()
    return [i for i, item in enumerate(resp.json())
            if isinstance(item.get("data"), dict) and len(item["data"].get("jobs") or {}) == 1]


def all_applied(pod: Pod, user: str, n: int = BURST, within: float = 120) -> None:
    wait_until(lambda: len(applied(pod, user, n)) == n, within,
               f"all {n} tasks applied with one job each",
               lambda: f"{len(applied(pod, user, n))} of {n}\n{pod.worker.proc.tail()}")


# Redis streams, and production's pair: PostgreSQL v2 with Kafka
BROKERS = pytest.mark.parametrize("kind", ["redis", "kafka"])


def make(pods: PodFactory, kind: str, app_id: str | None = None,
         topic: str | None = None) -> Pod:
    store, broker = PASSES[kind]
    return pods.make(store, app_id=app_id, topic=topic, broker=broker)


@BROKERS
def test_kill_9_mid_burst_loses_and_doubles_nothing(pods: PodFactory, user: str,
                                                    kind: str) -> None:
    pod = make(pods, kind)
    publisher = threading.Thread(target=burst, args=(pod, user))
    publisher.start()  # the kill lands while events are still arriving
    wait_until(lambda: len(applied(pod, user)) >= 20, 60, "part of the burst applied")
    pod.worker.proc.kill()
    done_at_kill = len(applied(pod, user))
    publisher.join(60)
    assert done_at_kill < BURST, "the burst finished before the kill: nothing was tested"
    pod.worker.start()
    pod.worker.wait_ready()
    all_applied(pod, user)
    # one job per task, and the scheduler has each of them
    for t in range(0, BURST, 20):
        [name] = pod.daprd.state(task_key(user, t))["jobs"]
        assert pod.daprd.job(name) is not None


@BROKERS
def test_a_daprd_restart_is_ridden_out(pods: PodFactory, user: str, kind: str) -> None:
    pod = make(pods, kind)
    at = now() + timedelta(seconds=25)
    pod.daprd.publish(event("task.created", user, 1, due_at=z(at + timedelta(hours=1)),
                            remind_at=[z(at)]), topic=pod.topic)
    wait_until(lambda: pod.daprd.state(task_key(user, 1)), 30, "the task applied")
    pod.daprd.proc.stop()
    wait_until(lambda: httpx.get(f"{pod.worker.ops}/readyz", timeout=3).status_code == 503,
               30, "the worker not ready while its sidecar is down", pod.worker.proc.tail)
    pod.daprd.start()
    pod.worker.wait_ready()
    wait_until(pod.subscribed, 30, "the subscription back")
    pod.daprd.publish(event("task.created", user, 2, due_at=z(now() + timedelta(hours=3)),
                            reminders=["PT1H"]), topic=pod.topic)
    wait_until(lambda: pod.daprd.state(task_key(user, 2)), 30, "an event after the restart")
    [msg] = wait_until(lambda: reminders_for(pod.topics, user), 60,
                       "the reminder scheduled before the restart", pod.worker.proc.tail)
    assert msg["data"]["task_id"] == 1


def test_a_redis_restart_turns_the_worker_not_ready_then_it_recovers(
        pods: PodFactory, user: str, redis: Redis) -> None:
    pod = pods.make()
    redis.stop()
    try:
        wait_until(lambda: httpx.get(f"{pod.worker.ops}/readyz", timeout=3).status_code == 503,
                   60, "the worker not ready while Redis is down", pod.worker.proc.tail)
    finally:
        redis.proc.start()
        wait_until(redis.ping, 20, "Redis back")
    pod.worker.wait_ready(90)
    pod.daprd.publish(event("task.created", user, 3, due_at=z(now() + timedelta(hours=2)),
                            reminders=["PT1H"]), topic=pod.topic)
    wait_until(lambda: pod.daprd.state(task_key(user, 3)), 60, "an event after Redis returned",
               pod.worker.proc.tail)


def test_a_kafka_restart_loses_no_reminder_and_no_event(pods: PodFactory, user: str,
                                                        kafka: Kafka) -> None:
    """The broker down while a reminder falls due: its publish fails, the job's failure
    policy triggers it again (every 10 s), and it is published once Kafka is back;
    events published after the restart are consumed. A publish the worker gave up on
    may still land once Kafka is back (daprd retries it): at least once, one id."""
    pod = make(pods, "kafka")
    at = now() + timedelta(seconds=6)
    pod.daprd.publish(event("task.created", user, 1, due_at=z(at + timedelta(hours=1)),
                            remind_at=[z(at)]), topic=pod.topic)
    wait_until(lambda: pod.daprd.state(task_key(user, 1)), 30, "the task applied")
    kafka.stop()
    try:
        wait_until(lambda: any(line.get("job") and line.get("level") in ("warning", "error")
                               for line in pod.worker.logs()),
                   60, "the reminder's publish failing while Kafka is down",
                   pod.worker.proc.tail)
    finally:
        kafka.restart()
    msg = wait_until(lambda: reminders_for(pod.topics, user), 90,
                     "the reminder published once Kafka is back", pod.worker.proc.tail)[0]
    assert msg["data"]["task_id"] == 1
    pod.daprd.publish(event("task.created", user, 2, due_at=z(now() + timedelta(hours=3)),
                            reminders=["PT1H"]), topic=pod.topic)
    wait_until(lambda: pod.daprd.state(task_key(user, 2)), 90, "an event after the restart",
               lambda: pod.worker.proc.tail() + "\n" + pod.daprd.proc.tail())
    assert {m["id"] for m in reminders_for(pod.topics, user)} == {msg["id"]}


@BROKERS
def test_sigterm_drains_and_loses_nothing(pods: PodFactory, user: str, kind: str) -> None:
    pod = make(pods, kind)
    burst(pod, user)
    wait_until(lambda: len(applied(pod, user)) >= 10, 60, "part of the burst applied")
    pod.worker.proc.signal(signal.SIGTERM)
    assert pod.worker.proc.wait(30) == 0
    drained = pod.worker.proc.lines()
    assert any("drain" in line for line in drained)
    pod.worker.start()
    pod.worker.wait_ready()
    all_applied(pod, user)


@BROKERS
def test_two_replicas_share_the_work(pods: PodFactory, user: str, kind: str) -> None:
    """Events go to both replicas (Kafka: once the second has joined the consumer group
    and been given partitions, which takes a rebalance after daprd reports the
    subscription, so events are published in rounds until both have worked); each is
    applied once, and each reminder fires once from the shared scheduler."""
    pair = f"rw-e2e-pair-{kind}"
    a = make(pods, kind, app_id=pair, topic=f"task-events-{pair}")
    b = make(pods, kind, app_id=pair, topic=f"task-events-{pair}")

    def processed() -> list[float]:
        return [p.worker.metric("reminder_worker_events_total", type="task.created",
                                outcome="processed") for p in (a, b)]

    n, rounds = 0, time.monotonic() + 60
    while n < 60 or min(processed()) == 0:
        assert time.monotonic() < rounds, f"one replica got no event in 60 s: {processed()}"
        at = now() + timedelta(seconds=20)
        for task in range(n, n + 10):
            (a if task % 2 else b).daprd.publish(
                event("task.created", user, task, due_at=z(at + timedelta(hours=1)),
                      remind_at=[z(at)]), ce_id=f"{user}-{task}", topic=a.topic)
        n += 10
        sent = n
        wait_until(lambda: sum(processed()) >= sent, 30, f"{n} events applied",  # noqa: B023
                   lambda: f"{processed()}")

    def all_fired() -> list[dict[str, Any]] | None:
        fired = reminders_for(a.topics, user)
        return fired if len(fired) >= n else None
    msgs = wait_until(all_fired, 90, f"{n} reminder.due",
                      lambda: f"{len(reminders_for(a.topics, user))} of {n}")
    ids = Counter(m["id"] for m in msgs)
    assert len(ids) == n and max(ids.values()) == 1, ids.most_common(3)
    assert sum(processed()) == n and min(processed()) > 0, processed()  # both, once each
