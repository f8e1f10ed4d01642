"""Pure: what a job trigger means, and whether it publishes.

A job's data names the reminder (user, task, instant, and for a reminder that is
not a plain one its slot: `kinds.Slot`) and the order of the event that scheduled
it (`plan.job_spec`); `parse_job_data` reads it back and checks it against the
job's name, `decide` compares it with the task record and applies the misfire
policy (docs/reminders.md, "Late reminders").
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Final, Literal

from worker.errors import InvalidEvent
from worker.keys import job_name
from worker.records import Order, TaskRecord
from worker.rules.kinds import Slot
from worker.rules.misfire import DEFAULT_GRACE, judge, task_grace

Decision = Literal["publish", "skip", "behind", "missed"]

_DECIMAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
# Jobs scheduled before job data held strings carry the task id as a JSON number;
# daprd rounds one above 2**53 to a float64. Ids up to 2**64 are recovered from the
# job name (at most 2 x 4096 digests); beyond that no Snowflake-style id goes.
_EXACT_FLOAT_INT: Final = 2**53
_RECOVERABLE_INT: Final = 2**64


def parse_job_data(data: object, name: str) -> tuple[str, int | str, datetime, Order]:
    """(user_id, task_id, instant, order) of the job `name` from its data.

    Reads the string form `job_spec` writes and the number form of older jobs.
    InvalidEvent if the data is foreign or does not match the name.
    """
    foreign = InvalidEvent("job data is not a reminder of this worker")
    if not isinstance(data, dict):
        raise InvalidEvent("job data is not an object")
    try:
        user_id, raw_id = data["user_id"], data["task_id"]
        instant = datetime.fromisoformat(data["remind_at"])
        order = Order.from_json(data["order"])
        slot = data.get("slot")  # absent for a plain reminder (its name is its instant's)
        if slot is not None and (not isinstance(slot, str) or Slot.parse(slot).at != instant):
            raise foreign
    except (KeyError, TypeError, ValueError, IndexError):
        raise foreign from None
    id_type = data.get("task_id_type")
    task_id: int | str
    if id_type == "string" and isinstance(raw_id, str):
        task_id = raw_id
    elif id_type == "number" and isinstance(raw_id, str) and _DECIMAL_INT.fullmatch(raw_id):
        task_id = int(raw_id)
    elif id_type is None and isinstance(raw_id, int | str) and not isinstance(raw_id, bool):
        task_id = raw_id  # a job scheduled before job data held strings
    else:
        raise foreign
    if not isinstance(user_id, str) or instant.tzinfo is None:
        raise foreign
    if name not in (job_name(user_id, task_id, instant, order.to_json(), slot=slot),
                    job_name(user_id, task_id, instant)):  # named before generations
        recovered = (_unrounded(user_id, task_id, instant, name)
                     if id_type is None and isinstance(task_id, int) else None)
        if recovered is None:
            raise InvalidEvent("job name does not match its data")
        task_id = recovered
    return user_id, task_id, instant, order


def _unrounded(user_id: str, rounded: int, instant: datetime, name: str) -> int | None:
    """The integer id that daprd's float64 rounding turned into `rounded`, found by
    the job name it was scheduled under; None when there is none."""
    if not _EXACT_FLOAT_INT < abs(rounded) < _RECOVERABLE_INT:
        return None
    image = float(rounded)
    centre, spacing = int(image), int(math.ulp(image))
    for candidate in range(centre - spacing, centre + spacing + 1):
        if float(candidate) == image and job_name(user_id, candidate, instant) == name:
            return candidate
    return None


def decide(record: TaskRecord | None, name: str, order: Order, now: datetime,
           default_grace: timedelta | None = DEFAULT_GRACE) -> Decision:
    """What the trigger of job `name`, scheduled by the event of `order`, does at `now`.

    behind: the record does not show that event yet (its save is in flight): retry.
    skip: the task is no longer active or no longer wants this job (superseded).
    missed: too late to be useful (the misfire policy: the task's due time has passed and the
    reminder is more than the task's misfire grace, else `default_grace`, late).
    publish: the reminder is due.
    """
    if record is None or record.order < order:
        return "behind"
    if record.status != "active" or name not in record.jobs:
        return "skip"
    slot = record.jobs[name]
    if not judge(slot.at, record.task.due_at, now, task_grace(record.task, default_grace)).publish:
        return "missed"
    return "publish"
