"""The misfire policy, pure (docs/reminders.md): is a reminder firing now still worth sending?

A reminder is published while the task's due time is still ahead (a "15 minutes
before" reminder an hour late is still useful before the meeting), or while it is
at most `grace` late; otherwise it is missed. `grace` None means no limit. The same
rule decides, when an event is applied, whether an instant already past fires at
once or is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from worker.records import NO_GRACE_LIMIT, Task

DEFAULT_GRACE: Final = timedelta(hours=1)  # Quartz/APScheduler practice: late, not stale


@dataclass(frozen=True)
class Verdict:
    action: Literal["publish", "missed"]
    late: timedelta  # now minus the reminder instant (zero when not late)

    @property
    def publish(self) -> bool:
        return self.action == "publish"


def judge(instant: datetime, due: datetime | None, now: datetime,
          grace: timedelta | None) -> Verdict:
    """Publish or missed, for a reminder of `instant` (aware) handled at `now`."""
    late = max(now - instant, timedelta(0))
    if grace is None or late <= grace or (due is not None and due > now):
        return Verdict("publish", late)
    return Verdict("missed", late)


def task_grace(task: Task, default: timedelta | None) -> timedelta | None:
    """The task's misfire grace: its own (`payload.misfire_grace`), else `default` (the
    setting); None: no limit."""
    grace = default if task.misfire_grace is None else task.misfire_grace
    return None if grace == NO_GRACE_LIMIT else grace
