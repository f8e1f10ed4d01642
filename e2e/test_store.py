"""State as Redis and PostgreSQL v2 really answer through daprd: first-write, ETags,
TTLs, and the development sidecar beside them."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx

from e2e.conftest import Pod
from e2e.procs import Postgres, Redis, wait_until
from e2e.test_flow import event, now, record, z
from worker.keys import task_key


def probe(http: httpx.Client, key: str) -> dict[str, Any]:
    """The answers the worker relies on, for one fresh key."""
    url = "/v1.0/state/statestore"

    def save(item: dict[str, Any]) -> int:
        return http.post(url, json=[{"key": key, **item}]).status_code

    first = {"options": {"concurrency": "first-write"}}
    out: dict[str, Any] = {"missing": http.get(f"{url}/{key}").status_code}
    out["insert"] = save({"value": {"n": 1}, **first})
    out["insert again"] = save({"value": {"n": 2}, **first})
    got = http.get(f"{url}/{key}")
    out["get"] = (got.status_code, got.json())
    etag = got.headers["etag"]
    out["wrong etag"] = save({"value": {"n": 3}, "etag": "999", **first})
    out["right etag"] = save({"value": {"n": 4}, "etag": etag, **first})
    out["no etag after first-write"] = save({"value": {"n": 5}})
    out["delete wrong etag"] = http.delete(f"{url}/{key}",
                                           headers={"if-match": "999"}).status_code
    ttl_key = f"{key}-ttl"
    out["ttl save"] = http.post(url, json=[{"key": ttl_key, "value": 1,
                                            "metadata": {"ttlInSeconds": "2"}}]).status_code
    out["ttl live"] = http.get(f"{url}/{ttl_key}").status_code
    out["ttl below -1"] = http.post(url, json=[{"key": f"{key}-neg", "value": 1, "metadata": {
        "ttlInSeconds": "-2"}}]).status_code
    return out


def expired(http: httpx.Client, key: str) -> bool:
    return http.get(f"/v1.0/state/statestore/{key}-ttl").status_code == 204


REAL = {"missing": 204, "insert": 204, "insert again": 500, "get": (200, {"n": 1}),
        "wrong etag": 409, "right etag": 204, "delete wrong etag": 409, "ttl save": 204,
        "ttl live": 200}


def test_first_write_etags_and_ttl_as_the_store_answers(pod: Pod, user: str) -> None:
    got = probe(pod.daprd.http, f"probe-{user}")
    sticky = got.pop("no etag after first-write")
    below = got.pop("ttl below -1")
    assert got == REAL
    # Redis remembers first-write in the key and then refuses a save without an ETag;
    # PostgreSQL v2 takes it
    assert sticky == (500 if pod.store == "redis" else 204)
    # PostgreSQL v2 refuses a TTL below -1; Redis takes it
    assert below == (204 if pod.store == "redis" else 500)
    wait_until(lambda: expired(pod.daprd.http, f"probe-{user}"), 30, "the TTL to expire")


def test_the_development_sidecar_answers_as_redis_does(dev_sidecar: httpx.Client,
                                                       redis: Redis) -> None:
    """The development sidecar holds state in memory and answers a repeated first-write
    insert 409 as Dapr's in-memory store does (Redis and PostgreSQL: 500; the worker
    reads both as "maybe present"); where Redis and PostgreSQL v2 differ, the stricter."""
    key = f"dev-{time.time_ns()}"
    got = probe(dev_sidecar, key)
    assert got.pop("insert again") == 409
    assert got.pop("no etag after first-write") == 500  # as Redis
    assert got.pop("ttl below -1") == 500  # as PostgreSQL v2
    assert got == {k: v for k, v in REAL.items() if k != "insert again"}
    wait_until(lambda: expired(dev_sidecar, key), 30, "the TTL to expire")


def test_a_deleted_tasks_record_expires_in_the_store(pod: Pod, user: str, redis: Redis,
                                                     postgres: Postgres) -> None:
    t0 = now()
    pod.daprd.publish(event("task.created", user, 31, t0, due_at=z(t0 + timedelta(hours=2)),
                            reminders=["PT1H"]))
    record(pod, user, 31)
    pod.daprd.publish(event("task.deleted", user, 31, t0 + timedelta(seconds=1)))
    record(pod, user, 31, "the deletion", lambda r: r.get("status") == "deleted")
    key = f"{pod.daprd.app_id}||{task_key(user, 31)}"
    if pod.store == "redis":
        ttl = redis("TTL", key)
        assert ttl > 0, f"Redis holds the deleted task's record without expiry ({ttl})"
    else:
        [[expires]] = postgres.sql(
            f"SELECT expires_at IS NOT NULL FROM state WHERE key = '{key}'")
        assert expires == "t", "PostgreSQL holds the deleted task's record without expiry"
