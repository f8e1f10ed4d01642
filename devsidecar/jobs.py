"""The jobs API and a scheduler that really fires: `POST {app}/job/{name}`.

Validation and answers follow daprd's, and so do the trigger rules:
2xx or 404 is done, anything else is retried by the job's failure policy,
then the trigger is lost. Time comes from the injected clock; the loop wakes
when a job is added or a `ManualClock` moves.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
from anyio.abc import TaskStatus

from worker.clock import Clock, ManualClock, system_clock

from .asgi import ApiError, Request, Response, empty, json_response
from .cron import Schedule, ScheduleError, next_after, parse_schedule
from .protovalue import NotAValue, as_value_json
from .records import FailurePolicy, Job, Trigger
from .timeparse import parse_instant, parse_proto_duration

_NAME_SANITIZER = str.maketrans("", "", "_:- ")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_NAME_PART = 253
DEFAULT_POLICY = FailurePolicy()
# Clocks that announce their jumps only need a slow safety poll; others need a short one.
_SLOW_POLL = 1.0
_FAST_POLL = 0.05
# Triggers in flight to the app at once.
_MAX_TRIGGERS_IN_FLIGHT = 64


@dataclass(slots=True)
class _Entry:
    name: str
    next_fire: datetime
    data_json: bytes | None
    schedule_text: str | None
    schedule: Schedule | None
    repeats: int | None
    ttl: datetime | None
    policy: FailurePolicy
    due_time_text: str | None
    occurrence: datetime  # the scheduled instant being fired (retries keep it)
    fired: int = 0
    attempt: int = 1
    in_flight: bool = False

    def snapshot(self) -> Job:
        return Job(
            name=self.name,
            due_time=self.next_fire,
            data_json=self.data_json,
            schedule=self.schedule_text,
            repeats=self.repeats,
            ttl=self.ttl,
            failure_policy=self.policy,
            fired=self.fired,
            due_time_text=self.due_time_text,
        )


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _field(body: dict[str, Any], camel: str, snake: str) -> Any:
    return body[camel] if camel in body else body.get(snake)


def _schedule_error(message: str) -> ApiError:
    return ApiError(500, "DAPR_SCHEDULER_SCHEDULE_JOB", f"failed to schedule job due to: {message}")


def _bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def parse_failure_policy(value: Any) -> FailurePolicy:
    if value is None:
        return DEFAULT_POLICY
    malformed = _bad_request(
        "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: failurePolicy {value!r}"
    )
    if not isinstance(value, dict):
        raise malformed
    if "drop" in value:
        if "constant" in value or not isinstance(value["drop"], dict):
            raise malformed
        return FailurePolicy(kind="drop", interval=timedelta(0), max_retries=0)
    constant = value.get("constant")
    if not isinstance(constant, dict):
        raise malformed
    interval = timedelta(0)
    if constant.get("interval") is not None:
        if not isinstance(constant["interval"], str):
            raise malformed
        parsed = parse_proto_duration(constant["interval"])
        if parsed is None or parsed < timedelta(0):
            raise malformed
        interval = parsed
    retries = _field(constant, "maxRetries", "max_retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise malformed
    return FailurePolicy(kind="constant", interval=interval, max_retries=retries)


def valid_name(name: str, action: str, code: str) -> str:
    """The job name as daprd takes it from the URL (spaces trimmed), checked like the
    scheduler (go-etcd-cron's validator): with `_ : -` and spaces dropped and lower-cased,
    each `||`-separated part must be a DNS-1123 subdomain (dot-separated ASCII letters and
    digits, at most 253 characters). An empty name is 400; an invalid one is a plain error
    from the scheduler, which daprd answers with 500."""
    name = name.strip()
    if not name:
        raise _bad_request("DAPR_SCHEDULER_JOB_NAME_EMPTY", "Name is empty")
    sanitized = name.translate(_NAME_SANITIZER).lower()
    for part in sanitized.split("||"):
        if len(part) > _MAX_NAME_PART or not _DNS1123_SUBDOMAIN.fullmatch(part):
            raise ApiError(500, code, f"failed to {action} job due to: job name is invalid "
                           f"{sanitized!r}: a lowercase RFC 1123 subdomain is required")
    return name


class Jobs:
    def __init__(
        self,
        clock: Clock,
        client: httpx2.AsyncClient,
        app_base_url: str,
        app_api_token: str | None,
        triggers: list[Trigger],
        replica_urls: tuple[str, ...] = (),
    ) -> None:
        self._clock = clock
        self._client = client
        self._app = app_base_url.rstrip("/")
        self._replicas = (self._app, *(u.rstrip("/") for u in replica_urls))
        self._token = app_api_token
        self._triggers = triggers
        self._jobs: dict[str, _Entry] = {}
        self._heap: list[tuple[datetime, int, _Entry]] = []
        self._seq = itertools.count()
        self._event = anyio.Event()
        self._limiter = anyio.CapacityLimiter(_MAX_TRIGGERS_IN_FLIGHT)

    # ---- inspection

    def snapshot(self) -> dict[str, Job]:
        return {name: entry.snapshot() for name, entry in self._jobs.items()}

    # ---- HTTP handlers

    def schedule(self, request: Request, name: str) -> Response:
        body = request.json() if request.body.strip() else {}
        if not isinstance(body, dict):
            raise _bad_request(
                "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: expected an object"
            )
        if "name" in body:
            raise _bad_request("DAPR_SCHEDULER_JOB_NAME", "Set the job name in the url only")
        name = valid_name(name, "schedule", "DAPR_SCHEDULER_SCHEDULE_JOB")
        entry = self._parse(body, name)
        overwrite = body.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise _bad_request("ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: overwrite")
        if name in self._jobs and not overwrite:
            raise ApiError(
                409,
                "DAPR_SCHEDULER_SCHEDULE_JOB",
                f"failed to schedule job due to: job {name} already exists",
            )
        self._jobs[name] = entry
        self._push(entry)
        return empty()

    def get(self, request: Request, name: str) -> Response:
        name = valid_name(name, "get", "DAPR_SCHEDULER_GET_JOB")
        entry = self._jobs.get(name)
        if entry is None:
            raise ApiError(
                500, "DAPR_SCHEDULER_GET_JOB",
                # daprd 1.18.2's text, word for word (seen end to end)
                f"failed to get job due to: rpc error: code = NotFound desc = job not found: "
                f"{name}"
            )
        snapshot = entry.snapshot()
        if snapshot.data_json is None:
            # daprd 1.18.2 cannot encode a job without data (seen end to end)
            raise ApiError(500, "ERR_INTERNAL", "failed to encode response as JSON: proto: "
                           "google.protobuf.Value: none of the oneof fields is set")
        return json_response(snapshot.to_api_json())

    def delete(self, request: Request, name: str) -> Response:
        self._jobs.pop(valid_name(name, "delete", "DAPR_SCHEDULER_DELETE_JOB"), None)
        return empty()

    def _parse(self, body: dict[str, Any], name: str) -> _Entry:
        now = self._clock()
        due_text = _field(body, "dueTime", "due_time") or None
        schedule_text = body.get("schedule") or None
        if due_text is None and schedule_text is None:
            raise _bad_request(
                "DAPR_SCHEDULER_EMPTY", "Schedule is empty: set a schedule or a dueTime"
            )
        if not isinstance(due_text, str | None) or not isinstance(schedule_text, str | None):
            raise _bad_request(
                "ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: dueTime/schedule"
            )
        due: datetime | None = None
        if due_text is not None:
            due = parse_instant(due_text, now)
            if due is None:
                raise _schedule_error(f"invalid dueTime {due_text!r}")
        schedule: Schedule | None = None
        if schedule_text is not None:
            try:
                schedule = parse_schedule(schedule_text)
            except ScheduleError as exc:
                raise _schedule_error(f"invalid schedule: {exc}") from None
        repeats = body.get("repeats")
        if repeats is not None:
            if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
                raise _bad_request("DAPR_SCHEDULER_REPEATS", "repeats must be an integer >= 1")
            if repeats > 1 and schedule is None:
                raise _bad_request("DAPR_SCHEDULER_REPEATS", "repeats > 1 needs a schedule")
        first = due
        if first is None:
            assert schedule is not None
            first = next_after(schedule, now)
            if first is None:
                raise _schedule_error(f"schedule {schedule_text!r} never fires")
        # checked in daprd's order: ttl, failure policy, data
        ttl = _parse_ttl(body.get("ttl") or None, schedule, first, now)
        policy = parse_failure_policy(_field(body, "failurePolicy", "failure_policy"))
        data_json = _parse_data(body.get("data"))
        return _Entry(
            name=name,
            next_fire=first,
            data_json=data_json,
            schedule_text=schedule_text,
            schedule=schedule,
            repeats=repeats,
            ttl=ttl,
            policy=policy,
            due_time_text=due_text,
            occurrence=first,
        )

    # ---- the scheduler

    def wake(self) -> None:
        self._event.set()

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.next_fire, next(self._seq), entry))
        self.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        announces = self._clock is system_clock or isinstance(self._clock, ManualClock)
        poll = _SLOW_POLL if announces else _FAST_POLL
        if isinstance(self._clock, ManualClock):
            self._clock.subscribe(self.wake)
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    now = self._clock()
                    while self._heap and self._heap[0][0] <= now:
                        when, _, entry = heapq.heappop(self._heap)
                        if (
                            self._jobs.get(entry.name) is entry
                            and entry.next_fire == when
                            and not entry.in_flight
                        ):
                            entry.in_flight = True
                            tg.start_soon(self._trigger, entry)
                    timeout = poll
                    if self._heap:
                        timeout = min(poll, max((self._heap[0][0] - now).total_seconds(), 0.0))
                    with anyio.move_on_after(timeout):
                        await self._event.wait()
                    self._event = anyio.Event()
        finally:
            if isinstance(self._clock, ManualClock):
                self._clock.unsubscribe(self.wake)

    async def _trigger(self, entry: _Entry) -> None:
        headers = {"content-type": "application/json", "traceparent": new_traceparent()}
        if self._token is not None:
            headers["dapr-api-token"] = self._token
        app = random.choice(self._replicas)  # a trigger goes to one random replica
        url = f"{app}/job/{quote(entry.name, safe='')}"
        status: int | None
        async with self._limiter:
            try:
                answer = await self._client.post(
                    url, content=entry.data_json or b"", headers=headers
                )
                status = answer.status_code
            except httpx2.HTTPError:
                status = None
        done = status is not None and (200 <= status < 300 or status == 404)
        attempt = entry.attempt
        outcome = "done"
        if not done:
            retries_used = attempt - 1
            policy = entry.policy
            exhausted = policy.kind == "drop" or (
                policy.max_retries is not None and retries_used >= policy.max_retries
            )
            outcome = "lost" if exhausted else "retry"
        self._triggers.append(Trigger(entry.name, status, outcome, attempt, self._clock(),
                                      headers["traceparent"]))
        entry.in_flight = False
        if self._jobs.get(entry.name) is not entry:
            return  # deleted or overwritten meanwhile
        if outcome == "retry":
            entry.attempt += 1
            entry.next_fire = self._clock() + entry.policy.interval
            self._push(entry)
            return
        self._after_fire(entry)

    def _after_fire(self, entry: _Entry) -> None:
        entry.fired += 1
        entry.attempt = 1
        finished = entry.schedule is None or (
            entry.repeats is not None and entry.fired >= entry.repeats
        )
        following = None if entry.schedule is None else next_after(entry.schedule, entry.occurrence)
        if following is not None:
            # Catch up once (not once per missed occurrence) after a long pause or clock jump.
            following = max(following, self._clock())
        if finished or following is None or (entry.ttl is not None and following > entry.ttl):
            del self._jobs[entry.name]
            return
        entry.next_fire = entry.occurrence = following
        self._push(entry)


def _parse_ttl(ttl_text: object, schedule: Schedule | None, first: datetime,
               now: datetime) -> datetime | None:
    """A job's `ttl` (an instant or a duration from now), later than its first fire."""
    if ttl_text is None:
        return None
    if schedule is None:
        raise _bad_request("DAPR_SCHEDULER_TTL", "ttl needs a schedule")
    if not isinstance(ttl_text, str):
        raise _bad_request("ERR_MALFORMED_REQUEST", "failed deserializing HTTP body: ttl")
    ttl = parse_instant(ttl_text, now)
    if ttl is None:
        raise _schedule_error(f"invalid ttl {ttl_text!r}")
    if ttl <= first:
        raise _bad_request("DAPR_SCHEDULER_TTL", "ttl must be later than the due time")
    return ttl


def _parse_data(data: Any) -> bytes | None:
    """A job's data as daprd keeps it (a protobuf Value: numbers become float64s)."""
    try:
        return None if data is None else as_value_json(data)
    except NotAValue as exc:
        raise _bad_request(
            "ERR_MALFORMED_REQUEST", f"failed deserializing HTTP body: {exc}"
        ) from None
