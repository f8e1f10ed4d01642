"""Deterministic ids: state keys, job names, reminder ids, idempotency keys.

Digests of the user, the task and an instant, never their raw text (no input in
a key or a job name); the same inputs give the same id in every replica and
every release, so a redelivery finds what the first delivery made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from worker.jsoncodec import stable_encoder
from worker.schedule import format_utc

_ID_ENCODE = stable_encoder(ensure_ascii=True, separators=(",", ":"))


def _digest(*parts: object) -> str:
    # JSON keeps types and boundaries apart: 1 vs "1", ("a|b", "c") vs ("a", "b|c").
    return hashlib.sha256(_ID_ENCODE(parts).encode()).hexdigest()


@lru_cache(maxsize=4096)
def _user_digest(user: str) -> str:
    return _digest("user", user)[:16]


def _ids(user_id: str, task_id: int | str) -> tuple[str, int | str]:
    valid_task = isinstance(task_id, int | str) and not isinstance(task_id, bool)
    if not isinstance(user_id, str) or not valid_task:
        raise ValueError("user_id must be a string and task_id an integer or a string")
    return user_id, task_id


def task_key(user_id: str, task_id: int | str) -> str:
    """State key of the task record: "rw-task-<16 hex of user>-<32 hex of user+task>"."""
    user, task = _ids(user_id, task_id)
    return f"rw-task-{_user_digest(user)}-{_digest('task', user, task)[:32]}"


def job_name(user_id: str, task_id: int | str, instant: datetime,
             scheduled_by: Sequence[str] | None = None, *, slot: str | None = None) -> str:
    """Dapr job name of one reminder instant: "rw-<40 hex>".

    `scheduled_by` is the order ([timestamp, fingerprint]) of the event that first
    wanted the job. Naming a job by its generation means a job deleted as obsolete
    by one event can never be a job that a newer event scheduled for the same
    instant (a late delete would otherwise remove the newer event's reminder).
    Without it: the name of jobs scheduled before generations existed.
    `slot`: the reminder's slot key (`worker.rules.kinds.Slot.key`) when it is not a plain
    reminder; a plain reminder's key is its instant, so its name is unchanged.
    """
    user, task = _ids(user_id, task_id)
    what = slot if slot is not None else format_utc(instant)
    if scheduled_by is None:
        return f"rw-{_digest('job', user, task, what)[:40]}"
    return f"rw-{_digest('job', user, task, what, list(scheduled_by))[:40]}"


def reminder_id(user_id: str, task_id: int | str, instant: datetime,
                kind: str = "reminder") -> str:
    """CloudEvent id of the reminder.due for one reminder instant: "rw-rem-<40 hex>".

    Per (user, task, kind, instant); kind `reminder` keeps the id it had before kinds
    existed (consumers dedupe on it).
    """
    user, task = _ids(user_id, task_id)
    if kind == "reminder":
        return f"rw-rem-{_digest('reminder', user, task, format_utc(instant))[:40]}"
    return f"rw-rem-{_digest('reminder', user, task, format_utc(instant), kind)[:40]}"


def occurrence_key(user_id: str, task_id: int | str, occurrence: datetime) -> str:
    """Idempotency key and claim state key of one next occurrence: "rw-occ-<16>-<32 hex>"."""
    user, task = _ids(user_id, task_id)
    digest = _digest("occurrence", user, task, format_utc(occurrence))[:32]
    return f"rw-occ-{_user_digest(user)}-{digest}"


def fired_key(user_id: str, job: str) -> str:
    """State key marking that job `job`'s reminder.due was published:
    "rw-fired-<16 hex of user>-<32 hex>". A re-fired job finds it and publishes nothing."""
    return f"rw-fired-{_user_digest(user_id)}-{_digest('fired', user_id, job)[:32]}"
