"""Handle task events and job triggers: idempotent, atomic, counted.

Task event (k reminders, nothing changed before): GET record, k job POSTs,
one compare-and-set save = k + 2 sidecar calls. Job operations happen before
the save, so a failure anywhere leaves the record untouched and Dapr's
redelivery redoes the whole (idempotent) event. A lost compare-and-set means
another replica applied an event meanwhile: re-read, re-plan, and repair the
jobs this attempt touched, so the jobs end as the newest record says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import structlog

from worker import applied, jsoncodec, logs, tracing
from worker.clock import Clock, system_clock
from worker.errors import (
    JOB_ANSWER,
    Conflict,
    InvalidEvent,
    PermanentSidecarError,
    Status,
    status_for,
)
from worker.events import Ignored, TaskEvent, parse_delivery
from worker.firing import decide, parse_job_data
from worker.keys import fired_key, task_key
from worker.messages import reminder_due
from worker.metrics import Metrics
from worker.plan import (
    EventOutcome,
    JobSpec,
    NextOccurrence,
    Plan,
    PlanConfig,
    make_plan,
    record_ttl,
)
from worker.records import Order, dump_record, load_record
from worker.schedule import format_utc
from worker.settings import Settings
from worker.types import SidecarAPI

MAX_CAS_ATTEMPTS: Final = 4
# A next-occurrence claim left "pending" this long is taken to be abandoned (a
# crashed replica); the task service dedupes the repeat by idempotency_key.
CLAIM_LEASE: Final = timedelta(seconds=60)
CLAIM_TTL_SECONDS: Final = 90 * 24 * 3600
# How long a published reminder's mark is kept: far beyond the scheduler's retries.
FIRED_TTL_SECONDS: Final = 7 * 24 * 3600
SETTLE_ATTEMPTS: Final = 3  # reads and ETag writes of a claim's outcome before RETRY
# The task service's answers to a next-occurrence request that no retry can change
# (the request itself is refused). 409 is success: it already has the occurrence.
# 401/403/404 stay retried: a wrong deployment (token, app id, method) can be fixed.
HOPELESS_STATUSES: Final = frozenset({400, 413, 422})

log = structlog.get_logger("worker")


class Service:
    def __init__(self, settings: Settings, sidecar: SidecarAPI, metrics: Metrics,
                 clock: Clock = system_clock) -> None:
        self.settings = settings
        self.sidecar = sidecar
        self.metrics = metrics
        self.clock = clock
        self.config = PlanConfig(settings.all_day_time, settings.default_reminders,
                                 settings.misfire_grace_delta, settings.default_quiet_hours)

    # -- pub/sub ------------------------------------------------------------
    async def handle_delivery(self, body: bytes, trace_id: str | None = None) -> Status:
        """Answer one pub/sub delivery: SUCCESS, RETRY or DROP; never raises.

        `trace_id`: the delivery's `traceparent` header, used when the envelope has none.
        """
        try:
            parsed = parse_delivery(body)
        except Exception as exc:  # nothing but this body can make parsing fail
            return self._event_failed("unknown", exc, log.bind(**_present(trace_id=trace_id)))
        return await self.handle_parsed(parsed, trace_id)

    async def handle_parsed(self, parsed: TaskEvent | Ignored,
                            trace_id: str | None = None) -> Status:
        if isinstance(parsed, Ignored):
            self.metrics.events.labels("other", "ignored").inc()
            log.info("event ignored", event_type=parsed.event_type[:100])
            return Status.SUCCESS
        # Every line logged while handling the event (here and below) carries its ids.
        token = logs.bind(**_present(event_id=parsed.event_id or parsed.ce_id,
                                     task_id=parsed.task_id, event_type=parsed.event_type,
                                     trace_id=parsed.trace_id or trace_id))
        try:
            return await self._answer(parsed)
        finally:
            logs.unbind(token)

    async def _answer(self, parsed: TaskEvent) -> Status:
        try:
            outcome = await self.handle_event(parsed)
        except Exception as exc:
            return self._event_failed(parsed.event_type, exc, log)
        self.metrics.events.labels(parsed.event_type, outcome).inc()
        log.info("event handled", outcome=outcome, **applied.fields())
        return Status.SUCCESS

    def _event_failed(self, event_type: str, exc: Exception, logger: Any) -> Status:
        """Log and count a task event that raised `exc`; its answer (errors.status_for)."""
        status = status_for(exc)
        if status is Status.RETRY:
            logger.warning("event will be retried", error=str(exc))
        elif isinstance(exc, InvalidEvent):
            logger.warning("event dropped", reason=exc.reason)
        else:  # the same input would fail again: dead-letter it, stack logged once
            logger.exception("event dropped", reason="unexpected error",
                             error_type=type(exc).__name__)
        label = "retry" if status is Status.RETRY else "invalid"
        self.metrics.events.labels(event_type, label).inc()
        return status

    async def handle_event(self, event: TaskEvent) -> EventOutcome:
        """Apply one task event: processed, partial, duplicate or stale. Raises on failure.

        Order of effects, so that a crash between any two leaves every job the saved
        record lists in the scheduler: new jobs are scheduled before the record is
        saved, obsolete ones deleted only after it (the record names them `retired`,
        so a redelivery deletes them again). A crash in between, overtaken by a newer
        event, leaves at most an orphan job that no record lists: its trigger
        publishes nothing and the scheduler forgets it once it has fired.

        partial: applied without the parts listed in `plan.problems` (logged once).
        """
        applied.last.set(None)
        store = self.settings.state_store
        key = task_key(event.user_id, event.task_id)
        scheduled: set[str] = set()  # by earlier attempts of this call: same names again
        rejected: PermanentSidecarError | None = None
        for _ in range(MAX_CAS_ATTEMPTS):
            got = await self.sidecar.state_get(store, key)
            record, etag = (load_record(got[0]), got[1]) if got else (None, None)
            now = self.clock()
            plan = make_plan(record, event, now, self.config)
            if log.is_enabled_for(logging.DEBUG):  # its fields cost more than the check
                log.debug("event planned", now=format_utc(now), changes=event.changes,
                          record_before=record, record_after=plan.record,
                          schedule=[[j.name, format_utc(j.due_time)] for j in plan.schedule],
                          delete=plan.delete)
            if plan.outcome != "processed":
                # plan.delete: a duplicate's retired jobs (its deletes failed after its
                # save). And jobs an earlier attempt scheduled that the record, now at
                # or past this event, does not list: no record can ever list them.
                dead = scheduled - set(plan.record.jobs)
                await self._job_ops([], set(plan.delete) | dead)
                if plan.next is not None:
                    await self._retry_rejected(plan.next, now)
                applied.last.set(applied.summary(event, plan, plan.outcome))
                return plan.outcome
            todo = [job for job in plan.schedule if job.name not in scheduled]
            await self._job_ops(todo, set())
            scheduled.update(job.name for job in todo)
            if plan.next is not None and rejected is None:
                try:
                    await self._request_next(plan.next, now)
                except PermanentSidecarError as exc:
                    if exc.api != "invoke" or exc.status not in HOPELESS_STATUSES:
                        raise
                    rejected = exc  # the completion is applied all the same, then dropped
            try:
                await self.sidecar.state_save(store, key, dump_record(plan.record), etag=etag,
                                              first_write=etag is None,
                                              ttl_seconds=record_ttl(record, plan.record))
            except Conflict:
                continue
            return await self._after_save(plan, scheduled, rejected, event)
        raise Conflict(f"task record kept changing under {MAX_CAS_ATTEMPTS} attempts")

    async def _after_save(self, plan: Plan, scheduled: set[str],
                          rejected: PermanentSidecarError | None,
                          event: TaskEvent) -> EventOutcome:
        """The saved plan's last effects: obsolete jobs deleted, counts, the answer."""
        # Obsolete jobs go only now. A failure here is retried: the redelivery is a
        # duplicate, and deletes the jobs the record lists as retired.
        dead = scheduled - set(plan.record.jobs)
        await self._job_ops([], set(plan.delete) | dead)
        # Counted once the event is applied, not once per attempt.
        if plan.series_ended:
            self.metrics.next_occurrences.labels("ended").inc()
        if plan.skipped:
            self.metrics.reminders.labels("skipped").inc(plan.skipped)
            for kind, n in plan.missed.items():
                self.metrics.missed.labels(kind).inc(n)
            log.info("reminders missed", missed=plan.missed, reason="past the misfire grace")
        if rejected is not None:
            raise InvalidEvent(
                f"task service rejected the next occurrence (HTTP {rejected.status}); "
                f"the completion is applied, the event goes to the dead-letter topic "
                f"to be replayed once the task service accepts it: {rejected}")
        applied.last.set(applied.summary(event, plan, plan.event_outcome))
        if plan.problems:
            log.warning("event applied without some parts", problems=plan.problems)
        return plan.event_outcome

    async def _job_ops(self, schedule: list[JobSpec], delete: set[str]) -> None:
        if not schedule and not delete:
            return
        if len(schedule) + len(delete) == 1:  # the common case: no task group, no closure
            if schedule:
                job = schedule[0]
                await self._job_op("schedule", self.sidecar.job_schedule(
                    job.name, job.due_time, job.data))
            else:
                await self._job_op("delete", self.sidecar.job_delete(next(iter(delete))))
            return
        errors: list[Exception] = []

        async def one(op: str, call: Awaitable[None]) -> None:
            try:
                await self._job_op(op, call)
            except Exception as exc:
                errors.append(exc)

        calls = [("schedule", self.sidecar.job_schedule(job.name, job.due_time, job.data))
                 for job in schedule]
        calls += [("delete", self.sidecar.job_delete(name)) for name in delete]
        async with anyio.create_task_group() as tg:
            for op, call in calls:
                tg.start_soon(one, op, call)
        if errors:
            raise errors[0]

    async def _job_op(self, op: str, call: Awaitable[None]) -> None:
        """One job call, counted by outcome; raises its error."""
        try:
            await call
        except Exception:
            self.metrics.jobs.labels(op, "error").inc()
            raise
        self.metrics.jobs.labels(op, "ok").inc()

    async def _retry_rejected(self, nxt: NextOccurrence, now: datetime) -> None:
        """A completion seen again: ask again only if the task service rejected it before."""
        got = await self.sidecar.state_get(self.settings.state_store, nxt.key)
        claim = got[0] if got else None
        if isinstance(claim, dict) and claim.get("state") == "rejected":
            await self._request_next(nxt, now)

    async def _request_next(self, nxt: NextOccurrence, now: datetime) -> None:
        """Ask the task service for the next occurrence, at most once per occurrence.

        The claim (state key = the occurrence's idempotency key) is taken with
        first-write; a claim left pending by a crashed delivery is taken over after
        its lease, and the task service dedupes the repeat by idempotency_key (the
        same key: the occurrence depends only on the record and the event).
        """
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
            state = claim.get("state") if isinstance(claim, dict) else None
            if state == "done":
                return  # a redelivery: already requested
            at = claim.get("at") if isinstance(claim, dict) else None
            if state == "pending" and at and now - datetime.fromisoformat(at) < CLAIM_LEASE:
                raise Conflict("next occurrence being requested by another delivery") from None
            await self.sidecar.state_save(store, key, pending, etag=etag,
                                          ttl_seconds=CLAIM_TTL_SECONDS)
        try:
            status, _ = await self.sidecar.invoke(self.settings.task_app_id,
                                                  self.settings.next_occurrence_method,
                                                  nxt.body)
        except PermanentSidecarError as exc:
            self.metrics.next_occurrences.labels("error").inc()
            if exc.status not in HOPELESS_STATUSES:
                await self._release(key)
                raise
            # Kept (not released): a replay of the completion finds it and asks again.
            await self._settle_claim(
                key, {"state": "rejected", "at": format_utc(now), "status": exc.status})
            log.error("task service rejected the next occurrence", status=exc.status,
                      error=str(exc), next_due_at=nxt.body["next_due_at"])
            raise
        except Exception:
            self.metrics.next_occurrences.labels("error").inc()
            await self._release(key)
            raise
        await self._settle_claim(key, {"state": "done", "at": format_utc(now)})
        self.metrics.next_occurrences.labels("requested").inc()
        log.info("next occurrence requested", task_id=nxt.body["parent_task_id"],
                 next_due_at=nxt.body["next_due_at"],
                 already_there=status == 409)

    async def _settle_claim(self, key: str, value: dict[str, Any]) -> None:
        """Overwrite our claim with its outcome, by ETag.

        Not a plain save: Dapr's Redis state store refuses a save without an ETag
        to a key once written with first-write concurrency (the claim was), with
        a 500, so the outcome is written against the claim's current ETag; a key
        gone meanwhile (its TTL) is inserted again."""
        store = self.settings.state_store
        for _ in range(SETTLE_ATTEMPTS):
            got = await self.sidecar.state_get(store, key)
            try:
                if got is None:
                    await self.sidecar.state_save(store, key, value, first_write=True,
                                                  ttl_seconds=CLAIM_TTL_SECONDS)
                else:
                    await self.sidecar.state_save(store, key, value, etag=got[1],
                                                  ttl_seconds=CLAIM_TTL_SECONDS)
                return
            except Conflict:
                continue  # another delivery took over the lease meanwhile: read again
        raise Conflict(f"next-occurrence claim {key} kept changing; retry")

    async def _release(self, key: str) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.sidecar.state_delete(self.settings.state_store, key)
            except Exception as exc:  # the lease expires on its own
                log.warning("could not release next-occurrence claim", error=str(exc))

    # -- jobs ---------------------------------------------------------------
    async def handle_job(self, name: str, body: bytes, trace_id: str | None = None) -> int:
        """Answer a job trigger with an HTTP status: 200 done, 500 retry later."""
        try:
            user_id, task_id, instant, order = _job_of(name, body)
        except InvalidEvent as exc:
            return self._trigger_failed(exc, log.bind(**_present(job=name[:100],
                                                                 trace_id=trace_id)))
        bound = log.bind(**_present(task_id=task_id, job=name, trace_id=trace_id))
        try:
            await self._fire(bound, name, user_id, task_id, instant, order)
        except Exception as exc:
            return self._trigger_failed(exc, bound)
        return 200

    def _trigger_failed(self, exc: Exception, logger: Any) -> int:
        """Log and count a job trigger that raised `exc`; its HTTP answer."""
        status = status_for(exc)
        if status is Status.RETRY:
            logger.warning("job trigger will be retried", error=str(exc))
            self.metrics.reminders.labels("error").inc()
        else:
            if isinstance(exc, InvalidEvent):
                logger.warning("job trigger ignored", reason=exc.reason)
            else:
                logger.exception("job trigger dropped: the same trigger would fail again",
                                 error_type=type(exc).__name__)
            self.metrics.reminders.labels("skipped").inc()
        return JOB_ANSWER[status]

    async def _fire(self, bound: Any, name: str, user_id: str, task_id: int | str,
                    instant: datetime, order: Order) -> None:
        store, marker = self.settings.state_store, fired_key(user_id, name)
        # the record and the published mark in one call
        got, mark = await self.sidecar.state_get_many(
            store, [task_key(user_id, task_id), marker])
        record = load_record(got[0]) if got else None
        fired_at = self.clock()
        decision = decide(record, name, order, fired_at, self.config.misfire_grace)
        if decision == "behind":
            raise Conflict("the event that scheduled this job is not saved yet")
        if decision == "skip" or record is None:
            bound.info("reminder skipped", reason="superseded",
                       **_present(status=record and record.status))
            self.metrics.reminders.labels("skipped").inc()
            return
        slot = record.jobs[name]
        if decision == "missed":  # the misfire policy: too late to be useful
            bound.warning("reminder missed", kind=slot.kind, remind_at=format_utc(slot.at),
                          late_seconds=round((fired_at - slot.at).total_seconds()),
                          reason="past the misfire grace")
            self.metrics.reminders.labels("skipped").inc()
            self.metrics.missed.labels(slot.kind).inc(slot.count)
            return
        if mark is not None:
            bound.info("reminder skipped", reason="already published (a re-fired job)")
            self.metrics.reminders.labels("skipped").inc()
            return
        envelope = reminder_due(self.settings.app_id, user_id, task_id, record.task, slot,
                                fired_at)
        if (trace := tracing.current.get()) is not None:  # CloudEvents distributed tracing
            envelope["traceparent"] = trace
        await self.sidecar.publish(self.settings.pubsub, self.settings.reminder_topic, envelope)
        await self._mark_fired(bound, marker, fired_at)
        self.metrics.reminders.labels("published").inc()
        if slot.deferred_from:
            self.metrics.deferred.labels(slot.kind).inc(slot.count)
        self.metrics.lateness.observe(max(0.0, (fired_at - instant).total_seconds()))
        bound.info("reminder published", reminder_id=envelope["id"])

    async def _mark_fired(self, bound: Any, marker: str, fired_at: datetime) -> None:
        """Remember that this job's reminder was published, so a re-fire (the scheduler
        delivers at least once) publishes nothing more. Best effort: the reminder is
        out; without the mark a re-fire publishes it again under the same id, which
        consumers dedupe. Two triggers racing within one publish both publish (same id):
        claiming before publishing would lose the reminder to a crash in between."""
        try:
            await self.sidecar.state_save(self.settings.state_store, marker,
                                          {"fired_at": format_utc(fired_at)},
                                          first_write=True, ttl_seconds=FIRED_TTL_SECONDS)
        except Conflict:
            pass  # a racing trigger marked it
        except Exception as exc:
            bound.warning("could not mark the reminder published", error=str(exc))


def _present(**fields: Any) -> dict[str, Any]:
    """`fields` without the absent ones (None): a log line leaves out what it lacks."""
    return {k: v for k, v in fields.items() if v is not None}


def _job_of(name: str, body: bytes) -> tuple[str, int | str, datetime, Order]:
    """The reminder a trigger body names. InvalidEvent for a foreign or hostile body:
    no retry can change it."""
    try:
        return parse_job_data(jsoncodec.loads(body or b"null"), name)
    except InvalidEvent:
        raise
    except Exception as exc:
        raise InvalidEvent(f"job data unusable ({type(exc).__name__})") from None
