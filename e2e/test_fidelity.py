"""The development sidecar's jobs API beside the real daprd's: the same requests, the
same statuses and bodies (what differs by design is asserted apart)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from e2e.conftest import Pod


def jobs_probe(http: httpx.Client, name: str) -> dict[str, Any]:
    body = {"dueTime": "2031-01-01T00:00:00Z", "data": {"task_id": "1", "n": 1},
            "failurePolicy": {"constant": {"interval": "5s", "maxRetries": 10}}}
    out: dict[str, Any] = {}
    out["schedule"] = http.post(f"/v1.0/jobs/{name}", json=body).status_code
    out["again without overwrite"] = http.post(f"/v1.0/jobs/{name}", json=body).status_code
    out["again with overwrite"] = http.post(f"/v1.0/jobs/{name}",
                                            json={**body, "overwrite": True}).status_code
    got = http.get(f"/v1.0-alpha1/jobs/{name}")
    job = got.json()
    out["get"] = (got.status_code, job["dueTime"], job["data"], job["failurePolicy"])
    missing = http.get(f"/v1.0/jobs/{name}-missing")
    out["get missing"] = (missing.status_code, missing.json()["errorCode"],
                          missing.json()["message"].replace(f"{name}-missing", "NAME"))
    out["delete"] = http.delete(f"/v1.0/jobs/{name}").status_code
    out["delete missing"] = http.delete(f"/v1.0/jobs/{name}").status_code
    out["no due time"] = http.post(f"/v1.0/jobs/{name}", json={"data": 1}).status_code
    http.post(f"/v1.0/jobs/{name}-nodata", json={"dueTime": "2031-01-01T00:00:00Z"})
    nodata = http.get(f"/v1.0/jobs/{name}-nodata")
    out["get without data"] = (nodata.status_code, nodata.json().get("errorCode"))
    http.delete(f"/v1.0/jobs/{name}-nodata")
    out["bad name"] = http.post(f"/v1.0/jobs/{name}%23x", json=body).status_code
    return out


def test_the_jobs_api_answers_alike(pod: Pod, dev_sidecar: httpx.Client) -> None:
    name = f"fidelity-{time.time_ns()}"
    real = jobs_probe(pod.daprd.http, name)
    dev = jobs_probe(dev_sidecar, name)
    assert dev == real
    assert real["get"][2] == {"@type": "type.googleapis.com/google.protobuf.Value",
                              "value": {"task_id": "1", "n": 1}}
