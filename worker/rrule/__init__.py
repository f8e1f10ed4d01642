"""The RFC 5545 recurrence rule engine, pure: RRULE text parsed (`parse`), and
expanded in naive wall-clock time (`expand`, over the day filters of `days` and
the sets of `sets`). It imports nothing else of the worker."""
