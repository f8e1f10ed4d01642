"""Fault injection per API: fail the next N calls, add latency, drop connections, go down,
or serve a call and then kill its caller (`kill`: the effect lands, the answer never does).

APIs: `state`, `jobs`, `publish`, `invoke`, `secrets`, `metadata`, `health`.
Settable from Python (`sidecar.faults.fail("state", times=2, status=503)`) or
over HTTP with `POST /dev/faults` and a JSON object (see `Faults.apply`).
A latency longer than the client's timeout is how a test makes a call time
out (the sidecar still serves it afterwards, as a slow daprd would).
`injected` counts the faults actually applied, per API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

APIS = ("state", "jobs", "publish", "invoke", "secrets", "metadata", "health")


@dataclass(slots=True)
class ApiFault:
    pass_next: int = 0  # calls served normally before fail/drop start ("mid-flow")
    fail_next: int = 0
    fail_status: int = 500
    drop_next: int = 0
    kill_next: int = 0
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one call: wait `latency` s, then drop, fail with a status, or serve."""

    latency: float = 0.0
    drop: bool = False
    fail_status: int | None = None
    kill: bool = False  # serve the call, then run the kill hook and drop the connection


_SERVE = Decision()


class Faults:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._apis: dict[str, ApiFault] = {api: ApiFault() for api in APIS}
        self._down = False
        self._down_until: float | None = None  # a timed outage comes back on its own
        self._monotonic = monotonic
        self.injected: dict[str, int] = dict.fromkeys(APIS, 0)

    @property
    def down(self) -> bool:
        if self._down and self._down_until is not None and self._monotonic() >= self._down_until:
            self._down, self._down_until = False, None
        return self._down

    def fail(self, api: str, times: int = 1, status: int = 500, after: int = 0) -> None:
        """Answer the next `times` calls of `api` with `status` and a daprd-like error body
        (after serving `after` calls normally)."""
        fault = self._get(api)
        fault.fail_next = times
        fault.fail_status = status
        fault.pass_next = after

    def drop(self, api: str, times: int = 1, after: int = 0) -> None:
        """Close the connection without an answer on the next `times` calls of `api`
        (after serving `after` calls normally)."""
        fault = self._get(api)
        fault.drop_next = times
        fault.pass_next = after

    def kill(self, api: str, times: int = 1, after: int = 0) -> None:
        """Serve the next `times` calls of `api` (after `after` served normally), then
        kill the caller: the sidecar's `on_kill` hook runs (a test harness cancels the
        worker there, as kill -9 would) and the connection is dropped unanswered."""
        fault = self._get(api)
        fault.kill_next = times
        fault.pass_next = after

    def latency(self, api: str, seconds: float) -> None:
        """Delay every call of `api` by `seconds` (0 to stop)."""
        self._get(api).latency = seconds

    def set_down(self, down: bool = True, seconds: float | None = None) -> None:
        """Every call of every API drops its connection until `set_down(False)`/`clear()`,
        or, with `seconds`, until that much (real) time has passed: down and back up."""
        self._down = down
        self._down_until = self._monotonic() + seconds if down and seconds is not None else None

    def clear(self, api: str | None = None) -> None:
        if api is None:
            self.set_down(False)
            for name in APIS:
                self._apis[name] = ApiFault()
        else:
            self._apis[self._check(api)] = ApiFault()

    def decide(self, api: str) -> Decision:
        """Consume one call's worth of faults for `api`."""
        if self.down:
            self._count(api)
            return Decision(drop=True)
        fault = self._apis.get(api)
        if fault is None:
            return _SERVE
        if fault.pass_next > 0 and (fault.drop_next > 0 or fault.fail_next > 0
                                    or fault.kill_next > 0):
            fault.pass_next -= 1
            return Decision(latency=fault.latency) if fault.latency else _SERVE
        if fault.kill_next > 0:
            fault.kill_next -= 1
            self._count(api)
            return Decision(latency=fault.latency, kill=True)
        if fault.drop_next > 0:
            fault.drop_next -= 1
            self._count(api)
            return Decision(latency=fault.latency, drop=True)
        if fault.fail_next > 0:
            fault.fail_next -= 1
            self._count(api)
            return Decision(latency=fault.latency, fail_status=fault.fail_status)
        if fault.latency:
            return Decision(latency=fault.latency)
        return _SERVE

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec.

        `{"clear": true}` or `{"clear": "state"}`; `{"down": true|false}`, optionally
        with `"seconds": 2.5` (down, then back up on its own);
        `{"api": "state", "fail": 2, "status": 503, "drop": 1, "latency": 0.05}`
        (any subset of fail/drop/latency; `"after": n` serves n calls before failing or
        dropping). Raises ValueError when malformed.
        """
        clear = spec.get("clear")
        if clear is True:
            self.clear()
        elif isinstance(clear, str):
            self.clear(clear)
        if "down" in spec:
            seconds = spec.get("seconds")
            if seconds is not None and (
                not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0
            ):
                raise ValueError("'seconds' must be a number of seconds >= 0")
            self.set_down(bool(spec["down"]), None if seconds is None else float(seconds))
        api = spec.get("api")
        if api is None:
            if any(k in spec for k in ("fail", "drop", "kill", "latency")):
                raise ValueError("'api' is required with fail/drop/latency")
            return
        if not isinstance(api, str):
            raise ValueError("'api' must be a string")
        after = _int(spec.get("after", 0), "after")
        if "fail" in spec:
            self.fail(api, _int(spec["fail"], "fail"), _int(spec.get("status", 500), "status"),
                      after)
        if "drop" in spec:
            self.drop(api, _int(spec["drop"], "drop"), after)
        if "kill" in spec:
            self.kill(api, _int(spec["kill"], "kill"), after)
        if "latency" in spec:
            latency = spec["latency"]
            if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
                raise ValueError("'latency' must be a number of seconds >= 0")
            self.latency(api, float(latency))

    def to_json(self) -> dict[str, Any]:
        return {
            "down": self.down,
            "injected": dict(self.injected),
            "apis": {
                name: {
                    "fail": f.fail_next,
                    "status": f.fail_status,
                    "drop": f.drop_next,
                    "kill": f.kill_next,
                    "after": f.pass_next,
                    "latency": f.latency,
                }
                for name, f in self._apis.items()
            },
        }

    def _count(self, api: str) -> None:
        if api in self.injected:
            self.injected[api] += 1

    def _get(self, api: str) -> ApiFault:
        return self._apis[self._check(api)]

    @staticmethod
    def _check(api: str) -> str:
        if api not in APIS:
            raise ValueError(f"unknown api {api!r}; one of {', '.join(APIS)}")
        return api


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name!r} must be an integer >= 0")
    return value
