"""Handle task events and job triggers: idempotent, atomic, counted.

Task event (k reminders, nothing changed before): GET record, k job POSTs,
one compare-and-set save = k + 2 sidecar calls. Job operations happen before
the save, so a failure anywhere leaves the record untouched and Dapr's
redelivery redoes the whole (idempotent) event. A lost compare-and-set means
another replica applied an event meanwhile: re-read, re-plan, and repair the
jobs this attempt touched, so the jobs end as the newest record says.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import structlog

from worker.errors import Conflict, InvalidEvent, PermanentSidecarError, Status, TransientError
from worker.events import Ignored, TaskEvent, parse_delivery
from worker.metrics import Metrics
from worker.plan import (
    JobSpec,
    NextOccurrence,
    PlanConfig,
    job_spec,
    make_plan,
    parse_job_data,
    record_is_behind,
)
from worker.schedule import UTC, format_utc, job_name, reminder_id, task_key
from worker.settings import Settings
from worker.sidecar import Sidecar

MAX_CAS_ATTEMPTS: Final = 4
# A next-occurrence claim left "pending" this long is taken to be abandoned (a
# crashed replica); the task service dedupes the repeat by idempotency_key.
CLAIM_LEASE: Final = timedelta(seconds=60)
CLAIM_TTL_SECONDS: Final = 90 * 24 * 3600
TOMBSTONE_TTL_SECONDS: Final = 90 * 24 * 3600  # completed/deleted records: stale events stay stale
# Dapr's ttlInSeconds -1: keep the value and ignore a TTL set earlier (without it,
# what happens to an existing TTL depends on the store).
PERSIST: Final = -1

Clock = Callable[[], datetime]
log = structlog.get_logger("worker")


def system_clock() -> datetime:
    return datetime.now(UTC)


class Service:
    def __init__(self, settings: Settings, sidecar: Sidecar, metrics: Metrics,
                 clock: Clock = system_clock) -> None:
        self.settings = settings
        self.sidecar = sidecar
        self.metrics = metrics
        self.clock = clock
        self.config = PlanConfig(settings.all_day_time, settings.default_reminders)

    # -- pub/sub ------------------------------------------------------------
    async def handle_delivery(self, body: bytes, trace_id: str | None = None) -> Status:
        """Answer one pub/sub delivery: SUCCESS, RETRY or DROP; never raises.

        `trace_id`: the delivery's `traceparent` header, used when the envelope has none.
        """
        try:
            parsed = parse_delivery(body)
        except InvalidEvent as exc:
            log.warning("event dropped", reason=exc.reason, trace_id=trace_id)
            self.metrics.events.labels("unknown", "invalid").inc()
            return Status.DROP
        return await self.handle_parsed(parsed, trace_id)

    async def handle_parsed(self, parsed: TaskEvent | Ignored,
                            trace_id: str | None = None) -> Status:
        if isinstance(parsed, Ignored):
            self.metrics.events.labels("other", "ignored").inc()
            log.info("event ignored", event_type=parsed.event_type[:100])
            return Status.SUCCESS
        # Every line logged while handling the event (here and below) carries its ids.
        tokens = structlog.contextvars.bind_contextvars(
            event_id=parsed.event_id, task_id=parsed.task_id, event_type=parsed.event_type,
            trace_id=parsed.trace_id or trace_id,
        )
        try:
            return await self._answer(parsed)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _answer(self, parsed: TaskEvent) -> Status:
        try:
            outcome = await self.handle_event(parsed)
        except InvalidEvent as exc:
            log.warning("event dropped", reason=exc.reason)
            self.metrics.events.labels(parsed.event_type, "invalid").inc()
            return Status.DROP
        except (TransientError, PermanentSidecarError) as exc:
            log.warning("event will be retried", error=str(exc))
            self.metrics.events.labels(parsed.event_type, "retry").inc()
            return Status.RETRY
        except Exception:
            log.exception("event failed unexpectedly; will be retried")
            self.metrics.events.labels(parsed.event_type, "retry").inc()
            return Status.RETRY
        self.metrics.events.labels(parsed.event_type, outcome).inc()
        log.info("event handled", outcome=outcome)
        return Status.SUCCESS

    async def handle_event(self, event: TaskEvent) -> str:
        """Apply one task event; returns processed, partial, duplicate or stale. Raises on failure.

        partial: applied without the parts listed in `plan.problems` (logged once).
        """
        store = self.settings.state_store
        key = task_key(event.user_id, event.task_id)
        scheduled: dict[str, JobSpec] = {}  # what earlier attempts did, to repair after a lost race
        deleted: set[str] = set()
        for _ in range(MAX_CAS_ATTEMPTS):
            got = await self.sidecar.state_get(store, key)
            record, etag = got if got else (None, None)
            now = self.clock()
            plan = make_plan(record, event, now, self.config)
            if plan.outcome != "processed":
                await self._repair(record, scheduled, deleted)
                return plan.outcome
            desired: dict[str, str] = plan.record["jobs"]
            todo = list(plan.schedule)
            todo += [self._respec(record, n, desired[n], now) for n in deleted
                     if n in desired and n not in {j.name for j in todo}]
            drop = set(plan.delete) | {n for n in scheduled if n not in desired}
            await self._job_ops(todo, drop)
            scheduled.update({j.name: j for j in todo})
            deleted |= drop
            if plan.next is not None:
                await self._request_next(plan.next, now)
            ttl: int | None = None
            if plan.record["status"] != "active":
                ttl = TOMBSTONE_TTL_SECONDS
            elif record is not None and record["status"] != "active":
                ttl = PERSIST  # a re-created task: drop the tombstone's TTL explicitly
            try:
                await self.sidecar.state_save(store, key, plan.record, etag=etag,
                                              first_write=etag is None, ttl_seconds=ttl)
            except Conflict:
                continue
            # Counted once the event is applied, not once per attempt.
            if plan.series_ended:
                self.metrics.next_occurrences.labels("ended").inc()
            if plan.skipped:
                self.metrics.reminders.labels("skipped").inc(plan.skipped)
            if plan.problems:
                log.warning("event applied without some parts", problems=plan.problems)
                return "partial"
            return "processed"
        raise Conflict(f"task record kept changing under {MAX_CAS_ATTEMPTS} attempts")

    def _respec(self, record: dict[str, Any] | None, name: str, at: str,
                now: datetime) -> JobSpec:
        """A live job of `record` again (a lost race deleted it)."""
        assert record is not None
        return job_spec(record["user_id"], record["task_id"], name, at, record["order"], now)

    async def _repair(self, record: dict[str, Any] | None, scheduled: dict[str, JobSpec],
                      deleted: set[str]) -> None:
        """Undo what a lost attempt did to jobs the newest record does not agree with."""
        if not scheduled and not deleted:
            return
        live: dict[str, str] = record["jobs"] if record and record["status"] == "active" else {}
        todo = [self._respec(record, n, live[n], self.clock()) for n in deleted if n in live]
        drop = {n for n in scheduled if n not in live}
        await self._job_ops(todo, drop)

    async def _job_ops(self, schedule: list[JobSpec], delete: set[str]) -> None:
        if not schedule and not delete:
            return
        errors: list[Exception] = []

        async def one(op: str, call: Awaitable[None]) -> None:
            try:
                await call
            except Exception as exc:
                self.metrics.jobs.labels(op, "error").inc()
                errors.append(exc)
            else:
                self.metrics.jobs.labels(op, "ok").inc()

        calls = [("schedule", self.sidecar.job_schedule(job.name, job.due_time, job.data))
                 for job in schedule]
        calls += [("delete", self.sidecar.job_delete(name)) for name in delete]
        if len(calls) == 1:  # the common case: a task group would cost more than the call
            await one(*calls[0])
        else:
            async with anyio.create_task_group() as tg:
                for op, call in calls:
                    tg.start_soon(one, op, call)
        if errors:
            raise errors[0]

    async def _request_next(self, nxt: NextOccurrence, now: datetime) -> None:
        """Ask the task service for the next occurrence, at most once per occurrence."""
        store, key = self.settings.state_store, nxt.key
        pending = {"state": "pending", "at": format_utc(now)}
        try:
            await self.sidecar.state_save(store, key, pending, first_write=True,
                                          ttl_seconds=CLAIM_TTL_SECONDS)
        except Conflict:
            got = await self.sidecar.state_get(store, key)
            if got is None:
                raise Conflict("next-occurrence claim vanished; retry") from None
            claim, etag = got
            if isinstance(claim, dict) and claim.get("state") == "done":
                return  # a redelivery: already requested
            at = claim.get("at") if isinstance(claim, dict) else None
            if at and now - datetime.fromisoformat(at) < CLAIM_LEASE:
                raise Conflict("next occurrence being requested by another delivery") from None
            await self.sidecar.state_save(store, key, pending, etag=etag,
                                          ttl_seconds=CLAIM_TTL_SECONDS)
        try:
            await self.sidecar.invoke(self.settings.task_app_id,
                                      self.settings.next_occurrence_method, nxt.body)
        except Exception:
            self.metrics.next_occurrences.labels("error").inc()
            with anyio.CancelScope(shield=True):
                try:
                    await self.sidecar.state_delete(store, key)
                except Exception as exc:  # the lease expires on its own
                    log.warning("could not release next-occurrence claim", error=str(exc))
            raise
        await self.sidecar.state_save(store, key, {"state": "done", "at": format_utc(now)},
                                      ttl_seconds=CLAIM_TTL_SECONDS)
        self.metrics.next_occurrences.labels("requested").inc()
        log.info("next occurrence requested", task_id=nxt.body["parent_task_id"],
                 next_due_at=nxt.body["next_due_at"])

    # -- jobs ---------------------------------------------------------------
    async def handle_job(self, name: str, body: bytes, trace_id: str | None = None) -> int:
        """Answer a job trigger with an HTTP status: 200 done, 500 retry later."""
        try:
            user_id, task_id, instant, order = parse_job_data(json.loads(body or b"null"))
            if job_name(user_id, task_id, instant) != name:
                raise InvalidEvent("job name does not match its data")
        except (InvalidEvent, ValueError) as exc:
            reason = exc.reason if isinstance(exc, InvalidEvent) else "job data is not JSON"
            log.warning("job trigger ignored", job=name[:100], reason=reason, trace_id=trace_id)
            self.metrics.reminders.labels("skipped").inc()
            return 200
        bound = log.bind(task_id=task_id, job=name, trace_id=trace_id)
        try:
            return await self._fire(bound, name, user_id, task_id, instant, order)
        except (TransientError, PermanentSidecarError) as exc:
            bound.warning("job trigger will be retried", error=str(exc))
            self.metrics.reminders.labels("error").inc()
            return 500
        except Exception:
            bound.exception("job trigger failed unexpectedly; will be retried")
            self.metrics.reminders.labels("error").inc()
            return 500

    async def _fire(self, bound: Any, name: str, user_id: str, task_id: int | str,
                    instant: datetime, order: list[str]) -> int:
        got = await self.sidecar.state_get(self.settings.state_store, task_key(user_id, task_id))
        record = got[0] if got else None
        if record_is_behind(record, order):
            raise Conflict("the event that scheduled this job is not saved yet")
        assert record is not None
        if record["status"] != "active" or name not in record["jobs"]:
            bound.info("reminder skipped", status=record["status"], reason="superseded")
            self.metrics.reminders.labels("skipped").inc()
            return 200
        fired_at = self.clock()
        task = record["task"]
        data: dict[str, Any] = {
            "event_type": "reminder.due", "event_version": "1.0",
            "task_id": task_id, "user_id": user_id,
            "due_at": task.get("due_at"), "remind_at": format_utc(instant),
            "fired_at": format_utc(fired_at), "timezone": task.get("timezone", "UTC"),
        }
        if task.get("title") is not None:
            data["title"] = task["title"]
        envelope = {
            "specversion": "1.0", "type": "reminder.due", "source": self.settings.app_id,
            "id": reminder_id(user_id, task_id, instant), "time": data["fired_at"],
            "datacontenttype": "application/json", "data": data,
        }
        await self.sidecar.publish(self.settings.pubsub, self.settings.reminder_topic, envelope)
        self.metrics.reminders.labels("published").inc()
        self.metrics.lateness.observe(max(0.0, (fired_at - instant).total_seconds()))
        bound.info("reminder published", reminder_id=envelope["id"])
        return 200
