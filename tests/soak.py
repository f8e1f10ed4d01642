"""A randomized, seeded soak: many tasks, two replicas behind one development sidecar.

    python -m tests.soak            # SOAK_SEED (1), SOAK_RUNS (1), SOAK_TASKS (3000),
                                    # SOAK_BUDGET (seconds per run; default soak_budget)

Phase 1 (clock frozen at START): every task's events (created, full-payload updates,
sometimes completed or deleted) are published shuffled, with random duplicates and
random sidecar faults (fail / drop on state, jobs, invoke). The clock is then moved
in steps to MID, so reminders fire (publish faults injected between steps). Phase 2
(clock frozen at MID): a second wave of updates, completions and deletions for tasks
still active, plus stale late copies of phase-1 events. Then the clock runs to END.

The oracle is computed here, independently of the worker's code: a task's state is
its newest event's (events of a task carry increasing timestamps; terminal events
come last), reminder instants are due minus whole-minute offsets plus remind_at.
The reminder rules in the mix: some tasks repeat until done (`repeat`: overdue reminders
after the due time), some end phase 1 snoozed (a `task.snoozed` event, the newest of
the task, carrying the full payload as every event here does). While the clock runs
to END, some active tasks with repetitions are completed *racing* their triggers: the
completion is published while the step that fires a repetition runs. For those, the
reminders due before the step must be published; those due after the clock at which
the completion's save landed (the sidecar logs each state write with its clock) must
not: their triggers read the task completed; those in between may or may not be (the
race). The save lands by the step's end, unless a kill cut the completion's delivery
off: the replicas come back with the clock 11 minutes on, and a repetition due in
those minutes races the redelivery.

Invariant: every expected (kind, instant) got exactly one reminder.due id; none was
published for one not expected (completed, deleted, superseded); every event
was answered SUCCESS (none lost, none dead-lettered); one next-occurrence request per
completed recurring task; no raw id in a state key or job name; no connection left
open on a killed replica. A run that has no result within its budget (SOAK_BUDGET,
else `soak_budget`) is a violation naming what it was doing: it never hangs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import anyio

from tests.cluster import Cluster, cluster
from tests.harness import START

MID = START + timedelta(days=2)
END = START + timedelta(days=15)  # past every instant a phase-2 task can have (repeats included)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
OFFSETS: tuple[Any, ...] = (5, 15, 30, 60, "PT2H", "P1D", "PT45M")
RULES = ("daily", "weekly", "FREQ=DAILY;INTERVAL=2", "FREQ=WEEKLY;BYDAY=MO,WE,FR")
# Overdue series with occurrences minutes apart: a redelivery after a kill (the clock
# moves on by the claim lease) would find another "next" if it depended on that clock.
OVERDUE_RULES = ("FREQ=HOURLY;BYMINUTE=0,10,20,30,40,50",) * 3 + ("FREQ=HOURLY", "daily")
REPEAT_EVERY = {"PT30M": 30, "PT2H": 120, "PT7H": 420}
HOSTILE_USERS = ("a/b", "../..", "x?y#z", "p||q", "üser ✓", "%2F", "a" * 300)


def _z(dt: datetime) -> str:
    return dt.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offset_minutes(offset: Any) -> int:
    if isinstance(offset, int):
        return offset
    return {"PT2H": 120, "P1D": 1440, "PT45M": 45}[offset]  # no DST change in this window


@dataclass
class Spec:
    due: datetime
    zone: str
    offsets: list[Any]
    remind_at: list[datetime]
    recurrence: str | None
    title: str
    repeat: dict[str, Any] | None = None
    snooze: datetime | None = None  # set by a task.snoozed event (the task's newest)

    def payload(self, rng: random.Random) -> dict[str, Any]:
        due = (_z(self.due) if rng.random() < 0.5
               else self.due.astimezone(ZoneInfo(self.zone)).isoformat())
        p: dict[str, Any] = {"title": self.title, "due_at": due, "timezone": self.zone,
                             "reminders": list(self.offsets),
                             "remind_at": [_z(d) for d in self.remind_at]}
        if self.recurrence:
            p["recurrence"] = self.recurrence
        p["repeat"] = self.repeat  # None clears an earlier one: every event is complete
        return p

    def instants(self) -> set[tuple[str, str]]:
        """(kind, instant) of every reminder this state wants."""
        out = {("reminder", _z(self.due - timedelta(minutes=_offset_minutes(o))))
               for o in self.offsets}
        out |= {("reminder", _z(d)) for d in self.remind_at}
        if self.repeat:
            every = timedelta(minutes=REPEAT_EVERY[self.repeat["every"]])
            out |= {("overdue", _z(self.due + k * every))
                    for k in range(1, self.repeat["max"] + 1)}
        if self.snooze is not None:
            out.add(("snooze", _z(self.snooze)))
        return out


@dataclass
class Task:
    user: str
    task_id: int | str
    events: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)

    def newest(self) -> tuple[datetime, str, dict[str, Any]]:
        return max(self.events, key=lambda e: e[0])


@dataclass
class Figures:
    seed: int
    tasks: int = 0
    events: int = 0
    deliveries: int = 0
    duplicates_sent: int = 0
    faults_injected: int = 0
    reminders_expected: int = 0
    reminders_published: int = 0
    reminders_duplicated: int = 0  # at-least-once: a key published again with its one id
    reminders_missing: int = 0
    reminders_unexpected: int = 0
    next_expected: int = 0
    next_requested: int = 0
    next_repeated: int = 0  # same key and occurrence again (a kill before the claim)
    overdue_completions: int = 0
    races: int = 0  # completions published while their repetitions fired
    races_saved_late: int = 0  # of those, saved after their step's end (a kill cut them off)
    races_published_late: int = 0  # reminders due after such a step, published before the save
    by_kind: dict[str, int] = field(default_factory=dict)  # published, by kind
    kills: int = 0
    orphan_jobs: int = 0  # scheduled by an attempt no record kept; fired, published nothing
    events_not_success: int = 0
    seconds: float = 0.0
    phase: str = "generating events"  # what the run is doing (named if it runs out of time)
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"soak seed={self.seed} tasks={self.tasks} events={self.events} "
                f"(+{self.duplicates_sent} duplicates, {self.deliveries} deliveries) "
                f"faults={self.faults_injected} kills={self.kills} "
                f"reminders expected={self.reminders_expected} "
                f"published={self.reminders_published} (same id again {self.reminders_duplicated}) "
                f"missing={self.reminders_missing} unexpected={self.reminders_unexpected} "
                f"next_occurrence expected={self.next_expected} "
                f"requested={self.next_requested} (repeats {self.next_repeated}, "
                f"overdue {self.overdue_completions}) orphan_jobs={self.orphan_jobs} "
                f"kinds={self.by_kind} races={self.races} "
                f"(saved after their step {self.races_saved_late}, reminders due after "
                f"it published first {self.races_published_late}) "
                f"events_not_success="
                f"{self.events_not_success} in {self.seconds:.1f}s")


def _spec(rng: random.Random, earliest: datetime, recurring: bool) -> Spec:
    """A task whose every reminder instant is a day after `earliest` or later (so none
    'fires at once', even after the clock moved on for every kill)."""
    due = earliest + timedelta(days=2, minutes=rng.randrange(60, 8 * 1440))
    offsets = rng.sample(OFFSETS, rng.randrange(0, 4))
    remind_at = [earliest + timedelta(days=1, minutes=rng.randrange(10, 8 * 1440))
                 for _ in range(rng.choice((0, 0, 1)))]
    repeat = ({"every": rng.choice(tuple(REPEAT_EVERY)), "max": rng.randrange(1, 6)}
              if rng.random() < 0.3 else None)
    return Spec(due, rng.choice(ZONES), offsets, remind_at,
                rng.choice(RULES) if recurring else None, f"task {rng.randrange(10**6)}",
                repeat)


def _doc(task: Task, etype: str, ts: datetime, payload: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_type": etype, "event_version": "1.0",
                           "event_id": f"{etype}-{ts.timestamp()}", "task_id": task.task_id,
                           "user_id": task.user, "timestamp": _z(ts)}
    if payload is not None:
        doc["payload"] = payload
    return doc


class Model:
    """What should happen, from the events as generated."""

    def __init__(self) -> None:
        self.state: dict[int, tuple[str, Spec]] = {}  # task index -> (status, spec)
        self.fired: dict[tuple[Any, ...], None] = {}  # expected reminder keys
        self.allowed: set[tuple[Any, ...]] = set()  # may be published or not (a race)
        self.late: set[tuple[Any, ...]] = set()  # of those, due after their race's step
        self.next_expected: set[int] = set()

    def apply_newest(self, i: int, etype: str, spec: Spec) -> None:
        status = {"task.completed": "completed", "task.deleted": "deleted"}.get(etype, "active")
        if etype == "task.completed" and spec.recurrence:
            self.next_expected.add(i)
        self.state[i] = (status, spec)

    def expect_fires(self, tasks: list[Task], after: datetime, until: datetime) -> None:
        for i, (status, spec) in self.state.items():
            if status != "active":
                continue
            for kind, at in spec.instants():
                if _z(after) < at <= _z(until):
                    t = tasks[i]
                    self.fired[(t.user, json.dumps(t.task_id), kind, at)] = None

    def raced(self, t: Task, spec: Spec, before: datetime, saved: datetime) -> None:
        """`t` was completed in the step that began at clock `before`; the completion's
        save landed at clock `saved` (usually the step's end, later when a kill cut its
        delivery off and the replicas came back with the clock moved on).

        A reminder due by `before` fired in an earlier step: expected. One due after
        `saved`: its trigger came after the save and reads the task completed: never.
        One due in between: its trigger may have read the record before the save (the
        race): published or not.
        """
        for kind, at in spec.instants():
            key = (t.user, json.dumps(t.task_id), kind, at)
            if at > _z(saved):
                self.fired.pop(key, None)  # after the completion's save: never
            elif at > _z(before) and key in self.fired:
                del self.fired[key]
                self.allowed.add(key)  # may have fired before the save


def published_counts(reminders: list[dict[str, Any]]) -> dict[tuple[Any, ...], set[str]]:
    """(user, task, kind, remind_at) -> the set of reminder.due ids published for it."""
    out: dict[tuple[Any, ...], set[str]] = {}
    for env in reminders:
        d = env["data"]
        key = (d["user_id"], json.dumps(d["task_id"]), d["kind"], d["remind_at"])
        out.setdefault(key, set()).add(env["id"])
    return out


async def _inject(c: Cluster, rng: random.Random, apis: Iterable[str]) -> None:
    for api in apis:
        roll = rng.random()
        if api == "invoke":  # invocations are few: kill between one and its claim often
            roll = 0.5 + rng.random() / 2 if rng.random() < 0.6 else roll
        if roll < 0.5:
            times, after = rng.randrange(1, 5), rng.randrange(0, 6)
            if rng.random() < 0.5:
                c.sidecar.faults.fail(api, times=times, status=rng.choice((500, 503)),
                                      after=after)
            else:
                c.sidecar.faults.drop(api, times=times, after=after)
        elif roll < 0.75:
            # kill -9 of the workers right after this API's effect: after a job call,
            # between a save and the deletes, between an invocation and its claim...
            after = rng.randrange(0, 3 if api == "invoke" else 40)  # invocations are few
            c.sidecar.faults.kill(api, times=1, after=after)


async def _deliver(c: Cluster, rng: random.Random, docs: list[dict[str, Any]],
                   figures: Figures, batch: int) -> list[str]:
    """Shuffled, with duplicates, in batches with faults injected before each."""
    sent = list(docs)
    for doc in docs:
        if rng.random() < 0.25:
            extra = rng.randrange(1, 3)
            sent += [doc] * extra
            figures.duplicates_sent += extra
    rng.shuffle(sent)
    ids: list[str] = []
    for start in range(0, len(sent), batch):
        await _inject(c, rng, ("state", "jobs", "invoke"))
        ids += await c.publish_all(sent[start:start + batch])
    await c.wait_settled(ids, wait=60 + len(ids) / 20)
    c.sidecar.faults.clear()
    return ids


Race = Callable[[datetime, datetime], list[dict[str, Any]]]


async def _advance(c: Cluster, rng: random.Random, until: datetime, step: timedelta,
                   race: Race | None = None) -> list[str]:
    """Run the clock to `until`; `race(t0, t1)` gives events to publish while the step
    from t0 to t1 fires its jobs. Returns the envelope ids of those events."""
    sent: list[str] = []
    while c.clock() < until:
        if race is not None:
            # a trigger still retrying from the last step would race too: the oracle
            # below knows only the step's own reminders, so let those finish first
            await c.drain_retries()
        if rng.random() < 0.3:
            await _inject(c, rng, ("publish", "state"))
        t0 = c.clock()
        t1 = min(t0 + step, until)
        docs = race(t0, t1) if race else []
        if not docs:
            await c.fire_until(t1, step, wait=120)
            continue
        ids: list[str] = []

        async def publish(docs: list[dict[str, Any]] = docs, ids: list[str] = ids) -> None:
            ids.extend(await c.publish_all(docs))

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            tg.start_soon(c.fire_until, t1, step, 120)
        await c.wait_settled(ids, wait=60 + len(ids) / 20)
        sent += ids
    c.sidecar.faults.clear()
    await c.drain_retries()
    return sent


async def _drive(c: Cluster, rng: random.Random, tasks: list[Task], model: Model,
                 docs1: list[dict[str, Any]], figures: Figures, batch: int,
                 step: timedelta) -> tuple[list[str], set[str]]:
    """Both phases on the cluster: (envelope ids of every event sent, job names listed)."""
    figures.phase = "delivering phase 1"
    ids = await _deliver(c, rng, docs1, figures, batch)
    listed = _listed(c)
    model.expect_fires(tasks, START, MID)
    figures.phase = "running the clock to MID"
    await _advance(c, rng, MID, step)

    base2 = START + timedelta(hours=1)
    docs2: list[dict[str, Any]] = []
    for i, task in enumerate(tasks):
        status, spec = model.state[i]
        if status == "active" and rng.random() < 0.4:
            ts = base2 + timedelta(seconds=rng.randrange(1000))
            roll = rng.random()
            etype = ("task.updated" if roll < 0.5 else
                     "task.completed" if roll < 0.8 else "task.deleted")
            if etype == "task.updated":
                spec = _spec(rng, MID, spec.recurrence is not None)
            payload = None if etype == "task.deleted" else spec.payload(rng)
            doc = _doc(task, etype, ts, payload)
            task.events.append((ts, etype, doc))
            model.apply_newest(i, etype, spec)
            docs2.append(doc)
        if rng.random() < 0.05:  # a late redelivery of an old event: stale
            docs2.append(rng.choice(task.events[:-1] or task.events)[2])
            figures.duplicates_sent += 1
    figures.events += len(docs2)
    figures.phase = "delivering phase 2"
    ids += await _deliver(c, rng, docs2, figures, batch)
    listed |= _listed(c)
    model.expect_fires(tasks, MID, END)
    # Completions racing their triggers: active tasks with repetitions, completed
    # while the step that fires one of their overdue reminders runs.
    racers: dict[int, datetime] = {}
    for i, (status, spec) in model.state.items():
        if status == "active" and spec.repeat and rng.random() < 0.5:
            every = timedelta(minutes=REPEAT_EVERY[spec.repeat["every"]])
            racers[i] = spec.due + every * rng.randrange(1, spec.repeat["max"] + 1)
    raced: dict[int, tuple[datetime, datetime]] = {}

    def race(t0: datetime, t1: datetime) -> list[dict[str, Any]]:
        docs = []
        for i, when in racers.items():
            if t0 < when <= t1:
                spec = model.state[i][1]
                ts = t0 + timedelta(seconds=1)
                doc = _doc(tasks[i], "task.completed", ts, spec.payload(rng))
                tasks[i].events.append((ts, "task.completed", doc))
                model.apply_newest(i, "task.completed", spec)
                raced[i] = (t0, t1)
                docs.append(doc)
        return docs

    figures.phase = "running the clock to END, completions racing their triggers"
    ids += await _advance(c, rng, END, step, race)
    saved = completions_saved(c, tasks, raced)
    for i, (t0, t1) in raced.items():
        # never saved: the record check reports it; the model then allows nothing
        spec, done = model.state[i][1], saved.get(i, t0)
        model.raced(tasks[i], spec, t0, done)
        figures.races_saved_late += done > t1
        model.late |= {(tasks[i].user, json.dumps(tasks[i].task_id), kind, at)
                       for kind, at in spec.instants() if _z(t1) < at <= _z(done)}
    figures.races = len(raced)
    figures.events += len(raced)
    figures.phase = "draining the jobs left"
    await c.drain_jobs()
    return ids, listed


def completions_saved(c: Cluster, tasks: list[Task],
                      indices: Iterable[int]) -> dict[int, datetime]:
    """Task index -> the clock when the first write saying `completed` of its record
    landed (the sidecar's log of state writes), for those of `indices` that have one."""
    from worker.keys import task_key  # the key function: where to look, not the oracle

    wanted = {task_key(tasks[i].user, tasks[i].task_id): i for i in indices}
    saved: dict[int, datetime] = {}
    for w in c.sidecar.state_writes:
        i = wanted.get(w.key)
        if i is not None and i not in saved and (w.value or {}).get("status") == "completed":
            saved[i] = w.time
    return saved


def soak_budget(n_tasks: int) -> float:
    """Seconds a run of `n_tasks` may take before it counts as stuck (about ten times
    what it takes on a 2-core machine: 1000 tasks in about 30 s, 3000 in 80 s)."""
    return 60 + 0.2 * n_tasks


async def run_soak(seed: int, n_tasks: int, *, replicas: int = 2, batch: int = 400,
                   step: timedelta = timedelta(hours=3),
                   budget: float | None = None) -> Figures:
    rng = random.Random(seed)
    figures = Figures(seed=seed, tasks=n_tasks)
    started = time.perf_counter()
    tasks: list[Task] = []
    model = Model()
    base1 = START - timedelta(hours=2)
    docs1: list[dict[str, Any]] = []
    for i in range(n_tasks):
        user = (rng.choice(HOSTILE_USERS) if rng.random() < 0.05 else f"user-{i % 97}")
        task = Task(user, i if rng.random() < 0.7 else f"t-{i}")
        tasks.append(task)
        recurring = rng.random() < 0.3
        ts = base1 + timedelta(seconds=rng.randrange(0, 600))
        spec = _spec(rng, START, recurring)
        etype = "task.created"
        task.events.append((ts, etype, _doc(task, etype, ts, spec.payload(rng))))
        for _ in range(rng.choice((0, 0, 1, 2))):
            ts += timedelta(seconds=1 + rng.randrange(100))
            spec = _spec(rng, START, recurring)
            etype = "task.updated"
            task.events.append((ts, etype, _doc(task, etype, ts, spec.payload(rng))))
        roll = rng.random()
        if recurring and roll < 0.25:
            # an overdue recurring task, completed: the next occurrence must not depend
            # on when (after how many kills and redeliveries) the completion is handled
            spec = Spec(START - timedelta(days=rng.randrange(1, 40), minutes=rng.randrange(600)),
                        rng.choice(ZONES), [], [], rng.choice(OVERDUE_RULES), spec.title)
            ts += timedelta(seconds=1)
            task.events.append((ts, "task.updated", _doc(task, "task.updated", ts,
                                                         spec.payload(rng))))
            ts += timedelta(seconds=1)
            etype = "task.completed"
            task.events.append((ts, etype, _doc(task, etype, ts, spec.payload(rng))))
            figures.overdue_completions += 1
        elif roll < 0.15:
            ts += timedelta(seconds=1)
            etype = "task.completed"  # carries the whole task: order-independent meaning
            task.events.append((ts, etype, _doc(task, etype, ts, spec.payload(rng))))
        elif roll < 0.25:
            ts += timedelta(seconds=1)
            etype = "task.deleted"  # ids only
            task.events.append((ts, etype, _doc(task, etype, ts, None)))
        elif roll < 0.4:
            # snoozed, as the newest event: a day and a bit from its timestamp, so it
            # fires in phase 1 and never at once
            ts += timedelta(seconds=1)
            etype = "task.snoozed"
            minutes = 26 * 60 + rng.randrange(10, 18 * 60)
            spec = replace(spec, snooze=ts + timedelta(minutes=minutes))
            extra = ({"for": f"PT{minutes}M"} if rng.random() < 0.5
                     else {"until": _z(ts + timedelta(minutes=minutes))})
            task.events.append((ts, etype, _doc(task, etype, ts, spec.payload(rng) | extra)))
        model.apply_newest(i, etype, spec)
        docs1 += [e[2] for e in task.events]
    figures.events += len(docs1)

    async with cluster(replicas) as c:
        # a killed worker is back after 11 minutes: past the claim lease, and past an
        # occurrence of the 10-minute overdue series
        c.restart_on_kill(timedelta(minutes=11))
        budget = soak_budget(n_tasks) if budget is None else budget
        with anyio.move_on_after(budget) as deadline:
            ids, listed = await _drive(c, rng, tasks, model, docs1, figures, batch, step)
        if deadline.cancelled_caught:  # every wait has a deadline; the run has one too
            figures.violations.append(
                f"no result within {budget:g}s: still {figures.phase} (clock "
                f"{c.clock()}, {c.kills} kills so far)")
        else:
            figures.faults_injected = sum(c.sidecar.faults.injected.values())
            figures.kills = c.kills
            fired = {t.name for t in c.sidecar.job_triggers}
            figures.orphan_jobs = len((fired | set(c.sidecar.jobs())) - listed)
            _check(c, tasks, model, ids, figures)
    figures.seconds = time.perf_counter() - started
    return figures


def _story(c: Cluster, tasks: list[Task], key: tuple[Any, ...]) -> str:
    """What the run did with the task of reminder `key`: its events as generated, each
    write of its record (clock, status, the event applied), each delivery of its events
    (clock, answer) and when the reminder was published."""
    from worker.keys import task_key

    user, task_id = key[0], json.loads(key[1])
    task = next(t for t in tasks if (t.user, t.task_id) == (user, task_id))
    lines = [f"    task {user}/{task_id}: events " + ", ".join(
        f"{_z(ts)} {etype}" for ts, etype, _ in sorted(task.events, key=lambda e: e[0]))]
    record_key = task_key(user, task_id)
    for w in c.sidecar.state_writes:
        if w.key == record_key:
            value = w.value or {}
            lines.append(f"    record written at clock {_z(w.time)}: {value.get('status')} "
                         f"(event {(value.get('order') or ['?'])[0]})")
    for p in c.sidecar.published:
        data = p.envelope.get("data")
        if not isinstance(data, dict) or data.get("user_id") != user \
                or data.get("task_id") != task_id:
            continue
        if p.topic == "reminders":
            lines.append(f"    published at clock {_z(p.time)}: reminder.due "
                         f"{data.get('kind')} {data.get('remind_at')}")
            continue
        ce = p.envelope.get("id")
        tries = [f"{_z(d.time)} {d.answer}" for d in c.sidecar.deliveries if d.event_id == ce]
        lines.append(f"    published at clock {_z(p.time)}: {data.get('event_type')} "
                     f"ts={data.get('timestamp')}; deliveries: {', '.join(tries) or 'none'}")
    return "\n".join(lines)


def _listed(c: Cluster) -> set[str]:
    """Every job name the records list once a delivery phase has settled."""
    return {name for record in c.records().values() for name in record["jobs"]}


def _check(c: Cluster, tasks: list[Task], model: Model, ids: list[str],
           figures: Figures) -> None:
    v = figures.violations
    deliveries = c.sidecar.deliveries
    figures.deliveries = len(deliveries)
    answers = c.final_answers(ids)
    figures.events_not_success = sum(n for a, n in answers.items() if a != "SUCCESS")
    if figures.events_not_success or c.sidecar.dead_letters:
        v.append(f"events not SUCCESS: {dict(answers)}; dead letters "
                 f"{len(c.sidecar.dead_letters)}")
    records = c.records()
    from worker.keys import task_key  # the key function: where to look, not the oracle

    for i, task in enumerate(tasks):
        ts, _, _ = task.newest()
        record = records.get(task_key(task.user, task.task_id))
        status = model.state[i][0]
        if record is None or record["order"][0] != _z(ts) or record["status"] != status:
            v.append(f"task {i}: record {record and (record['order'], record['status'])} "
                     f"!= newest event {_z(ts)} {status}")
    published = published_counts(c.reminders())
    figures.reminders_expected = len(model.fired)
    for key in published:
        figures.by_kind[key[2]] = figures.by_kind.get(key[2], 0) + 1
    figures.reminders_published = len(c.reminders())
    figures.reminders_duplicated = figures.reminders_published - len(published)
    missing = [k for k in model.fired if k not in published]
    unexpected = [k for k in published if k not in model.fired and k not in model.allowed]
    many_ids = [k for k, s in published.items() if len(s) != 1]
    figures.races_published_late = len(model.late & set(published))
    figures.reminders_missing, figures.reminders_unexpected = len(missing), len(unexpected)
    if missing:
        v.append(f"{len(missing)} reminders missing, e.g. {missing[:3]}")
    if unexpected:
        v.append(f"{len(unexpected)} reminders not expected, e.g. {unexpected[:3]}")
        v += [_story(c, tasks, key) for key in unexpected[:3]]
    if many_ids:
        v.append(f"{len(many_ids)} reminder instants with several ids")
    # At least once per completion, and always the same occurrence with the same key:
    # a repeat (after a kill between the invocation and its claim) is deduped by key.
    parents: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for inv in c.sidecar.invocations:
        body = inv.json
        key = (body["user_id"], json.dumps(body["parent_task_id"]))
        parents.setdefault(key, set()).add((body["idempotency_key"], body["next_due_at"]))
    figures.next_requested = len(c.sidecar.invocations)
    figures.next_expected = len(model.next_expected)
    figures.next_repeated = figures.next_requested - len(parents)
    wanted = {(tasks[i].user, json.dumps(tasks[i].task_id)) for i in model.next_expected}
    if set(parents) != wanted or any(len(n) != 1 for n in parents.values()):
        v.append(f"next occurrences: {len(parents)} tasks requested "
                 f"{sum(len(n) for n in parents.values())} distinct occurrences, "
                 f"{len(wanted)} expected one each")
    if c.sidecar.jobs():
        v.append(f"{len(c.sidecar.jobs())} jobs left after the end")
    if c.dead_connections():  # a killed replica must answer nothing, ever again
        v.append(f"{c.dead_connections()} connections still open on killed replicas")
    try:
        c.check_no_raw_ids()
    except AssertionError as exc:
        v.append(f"raw id in a key or job name: {exc}")


def main() -> int:
    from worker.logs import configure

    configure("json", "error")  # figures on stdout, not a line per event
    # uvicorn logs as errors what the harness does on purpose: the development sidecar's
    # simulated dropped connections (a response begun, never completed), and a killed
    # replica's handlers stopped where they stood (no response begun; their connections
    # are aborted, but the handler may return before uvicorn has seen that).
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: not any(text in record.getMessage() for text in (
            "without completing response", "without starting response")))
    seed = int(os.environ.get("SOAK_SEED", "1"))
    runs = int(os.environ.get("SOAK_RUNS", "1"))
    n_tasks = int(os.environ.get("SOAK_TASKS", "3000"))
    budget = float(os.environ["SOAK_BUDGET"]) if os.environ.get("SOAK_BUDGET") else None
    failed = False
    for s in range(seed, seed + runs):
        figures = anyio.run(partial(run_soak, s, n_tasks, budget=budget))
        print(figures.line(), flush=True)
        for violation in figures.violations:
            print(f"  VIOLATION: {violation}", flush=True)
        failed = failed or bool(figures.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
