"""The worker's error tree and how each branch is answered to Dapr.

    WorkerError
     +-- InvalidEvent        the input can never be handled: DROP (dead letter), log why
     +-- TransientError      try again later: pub/sub RETRY, job trigger 500
     |    +-- SidecarUnavailable   connection refused, timeout, 5xx from the sidecar
     |    +-- Conflict             an ETag or first-write race lost; re-read and redo
     +-- PermanentSidecarError    the sidecar refused the request as malformed (4xx):
                                  retrying the same request cannot help
     +-- StartupError        the worker cannot run beside this sidecar (a daprd older
          |                   than 1.16): one line, exit 2
          +-- SettingsError   bad configuration (a setting, or a token the sidecar
               |              rejects): one line naming the setting, exit 2
               +-- ListenError  a port taken, a host that is no address here

A permanent sidecar error on an event is still answered RETRY, not DROP: the
event itself was fine, the deployment is wrong (unknown component, token),
and a fixed deployment should still see it.

Anything else (an InvalidEvent, or an exception no branch names: OverflowError,
RecursionError, a bug) would be raised again by the same input: never RETRY,
which with unlimited redelivery would block the partition behind it. `retryable`
draws that line, `status_for` turns it into the pub/sub answer and `JOB_ANSWER`
into a job trigger's HTTP status: the one place errors become answers.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, Final


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class InvalidEvent(WorkerError):
    """An input that no retry can fix; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(WorkerError):
    """A failure that may pass: Dapr should deliver again."""


class SidecarUnavailable(TransientError):
    """The sidecar did not answer, or answered 5xx."""

    def __init__(self, api: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{api}: {detail}")
        self.api = api
        self.status = status


class Conflict(TransientError):
    """An optimistic-concurrency write lost (ETag mismatch or key present)."""


class PermanentSidecarError(WorkerError):
    """The sidecar rejected the request itself (4xx other than a conflict)."""

    def __init__(self, api: str, status: int, body: str) -> None:
        super().__init__(f"{api}: HTTP {status}: {body[:200]}")
        self.api = api
        self.status = status


class StartupError(WorkerError):
    """The worker cannot start here; the message says what to change."""

    label = "cannot start"  # the CLI prints "reminder-worker: {label}: {message}"

    def line(self) -> str:
        """The one line the command line prints for this error."""
        return f"reminder-worker: {self.label + ': ' if self.label else ''}{self}"


class SettingsError(StartupError):
    """A setting cannot be used; the message names it."""

    label = "bad setting"


class ListenError(SettingsError):
    """A port cannot be listened on (taken, no such address); the message names the
    port and its setting, and reads as a sentence without a label."""

    label = ""


def startup_error(exc: BaseException) -> StartupError | None:
    """The StartupError in `exc`, also when task groups wrapped it; else None."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = startup_error(inner)
            if found is not None:
                return found
    return None


class Status(enum.StrEnum):
    """The pub/sub answers daprd understands (case-sensitive)."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


def retryable(exc: BaseException) -> bool:
    """Can the same input succeed later? Only when the sidecar or the network failed."""
    return isinstance(exc, TransientError | PermanentSidecarError | OSError | TimeoutError)


def status_for(exc: BaseException) -> Status:
    """The answer to an input whose handling raised `exc`: RETRY or DROP."""
    return Status.RETRY if retryable(exc) else Status.DROP


# A job trigger is answered in HTTP: 500 makes daprd fire it again (its failure
# policy), 200 acknowledges it; a DROP is acknowledged (a retry cannot help).
JOB_ANSWER: Final[Mapping[Status, int]] = {Status.SUCCESS: 200, Status.RETRY: 500,
                                           Status.DROP: 200}


MAX_SHOWN: Final = 80  # characters of a bad value a problem repeats


def shown(value: Any, message: str) -> str:
    """` (got <value as JSON>)` after `message`, unless it shows the value already."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN - 3] + "..."
    if text in message or (isinstance(value, str) and (repr(value)[:MAX_SHOWN] in message
                                                        or value in message)):
        return ""
    return f" (got {text})"
