"""Fault injection per API: fail the next N calls, add latency, drop connections, go down.

APIs: `state`, `jobs`, `publish`, `invoke`, `secrets`, `metadata`, `health`.
Settable from Python (`sidecar.faults.fail("state", times=2, status=503)`) or
over HTTP with `POST /dev/faults` and a JSON object (see `Faults.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

APIS = ("state", "jobs", "publish", "invoke", "secrets", "metadata", "health")


@dataclass(slots=True)
class ApiFault:
    fail_next: int = 0
    fail_status: int = 500
    drop_next: int = 0
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one call: wait `latency` s, then drop, fail with a status, or serve."""

    latency: float = 0.0
    drop: bool = False
    fail_status: int | None = None


_SERVE = Decision()


class Faults:
    def __init__(self) -> None:
        self._apis: dict[str, ApiFault] = {api: ApiFault() for api in APIS}
        self.down = False

    def fail(self, api: str, times: int = 1, status: int = 500) -> None:
        """Answer the next `times` calls of `api` with `status` and a daprd-like error body."""
        fault = self._get(api)
        fault.fail_next = times
        fault.fail_status = status

    def drop(self, api: str, times: int = 1) -> None:
        """Close the connection without an answer on the next `times` calls of `api`."""
        self._get(api).drop_next = times

    def latency(self, api: str, seconds: float) -> None:
        """Delay every call of `api` by `seconds` (0 to stop)."""
        self._get(api).latency = seconds

    def set_down(self, down: bool = True) -> None:
        """Every call of every API drops its connection until `set_down(False)`/`clear()`."""
        self.down = down

    def clear(self, api: str | None = None) -> None:
        if api is None:
            self.down = False
            for name in APIS:
                self._apis[name] = ApiFault()
        else:
            self._apis[self._check(api)] = ApiFault()

    def decide(self, api: str) -> Decision:
        """Consume one call's worth of faults for `api`."""
        if self.down:
            return Decision(drop=True)
        fault = self._apis.get(api)
        if fault is None:
            return _SERVE
        if fault.drop_next > 0:
            fault.drop_next -= 1
            return Decision(latency=fault.latency, drop=True)
        if fault.fail_next > 0:
            fault.fail_next -= 1
            return Decision(latency=fault.latency, fail_status=fault.fail_status)
        if fault.latency:
            return Decision(latency=fault.latency)
        return _SERVE

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec.

        `{"clear": true}` or `{"clear": "state"}`; `{"down": true|false}`;
        `{"api": "state", "fail": 2, "status": 503, "drop": 1, "latency": 0.05}`
        (any subset of fail/drop/latency). Raises ValueError when malformed.
        """
        clear = spec.get("clear")
        if clear is True:
            self.clear()
        elif isinstance(clear, str):
            self.clear(clear)
        if "down" in spec:
            self.set_down(bool(spec["down"]))
        api = spec.get("api")
        if api is None:
            if any(k in spec for k in ("fail", "drop", "latency")):
                raise ValueError("'api' is required with fail/drop/latency")
            return
        if not isinstance(api, str):
            raise ValueError("'api' must be a string")
        if "fail" in spec:
            self.fail(api, _int(spec["fail"], "fail"), _int(spec.get("status", 500), "status"))
        if "drop" in spec:
            self.drop(api, _int(spec["drop"], "drop"))
        if "latency" in spec:
            latency = spec["latency"]
            if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
                raise ValueError("'latency' must be a number of seconds >= 0")
            self.latency(api, float(latency))

    def to_json(self) -> dict[str, Any]:
        return {
            "down": self.down,
            "apis": {
                name: {
                    "fail": f.fail_next,
                    "status": f.fail_status,
                    "drop": f.drop_next,
                    "latency": f.latency,
                }
                for name, f in self._apis.items()
            },
        }

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
