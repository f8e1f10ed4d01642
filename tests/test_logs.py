"""The JSON log line as configured for the daemon: its timestamp and the bound fields."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from worker import logs


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(out))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("json", "info")
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level


def _read(out: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_has_level_and_an_rfc3339_utc_timestamp(lines: io.BytesIO) -> None:
    before = datetime.now(UTC)
    structlog.get_logger("worker").info("event handled", outcome="processed")
    after = datetime.now(UTC)
    (line,) = _read(lines)
    assert line["level"] == "info" and line["event"] == "event handled"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    stamp = datetime.fromisoformat(line["timestamp"])
    assert before - timedelta(microseconds=1) <= stamp <= after


def test_bound_fields_are_on_every_line_until_unbound(lines: io.BytesIO) -> None:
    log = structlog.get_logger("worker")
    outer = logs.bind(event_id="ev-1", task_id=7)
    inner = logs.bind(trace_id="00-ab")
    log.info("one")
    log.info("two", task_id=8)  # a field given to the call wins
    logs.unbind(inner)
    log.warning("three")
    logs.unbind(outer)
    log.info("four")
    one, two, three, four = _read(lines)
    assert (one["event_id"], one["task_id"], one["trace_id"]) == ("ev-1", 7, "00-ab")
    assert (two["event_id"], two["task_id"]) == ("ev-1", 8)
    assert three["event_id"] == "ev-1" and "trace_id" not in three
    assert three["level"] == "warning"
    assert not {"event_id", "task_id", "trace_id"} & set(four)


def test_the_timestamp_follows_the_clock_across_a_second(
        lines: io.BytesIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # The text up to the second is cached: a line in the next second must not reuse it.
    readings = iter([1_700_000_000_999_999_000, 1_700_000_001_000_001_000,
                     1_700_000_001_500_000_000])
    monkeypatch.setattr(logs.time, "time_ns", lambda: next(readings))
    log = structlog.get_logger("worker")
    for _ in range(3):
        log.info("tick")
    assert [line["timestamp"] for line in _read(lines)] == [
        "2023-11-14T22:13:20.999999Z", "2023-11-14T22:13:21.000001Z",
        "2023-11-14T22:13:21.500000Z"]
