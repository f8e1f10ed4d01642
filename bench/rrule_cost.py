"""CPU per next-occurrence search over the costliest rules we can construct (issue 8).

    python -m bench.rrule_cost [--runs N]

Each rule is timed cold (every cache of the recurrence code cleared first: what one
user's first event costs) and warm (the same search again), with time.process_time,
over N runs; the table gives median and max per rule and the worst case overall.
Target: at most 20 ms of CPU per event. Figures are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from worker.rrule import parse as rrule_parse
from worker.rules import recurrence
from worker.rules.recurrence import Recurrence, next_occurrence, parse_recurrence
from worker.schedule import load_zone, resolve_local

TARGET_MS = 20.0
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALL_MINUTES = ",".join(map(str, range(60)))
ALL_HOURS = ",".join(map(str, range(24)))
# (name, rule, dtstart as written, completed occurrence as written, zone)
CASES: list[tuple[str, str, str | None, str, str]] = [
    # the rules of issue 8
    ("daily/7 on Sundays, due Wednesday", "FREQ=DAILY;INTERVAL=7;BYDAY=SU", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("... with COUNT=3", "FREQ=DAILY;INTERVAL=7;BYDAY=SU;COUNT=3", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("... with UNTIL past", "FREQ=DAILY;INTERVAL=7;BYDAY=SU;UNTIL=20200101", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("hourly/49 hours 1-3 on Sundays", "FREQ=HOURLY;INTERVAL=49;BYHOUR=1,2,3;BYDAY=SU", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("monthly/3 in a month never reached", "FREQ=MONTHLY;INTERVAL=3;BYMONTH=4", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("hourly COUNT=100000, late", "FREQ=HOURLY;COUNT=100000", "2015-01-01T00:30:00",
     "2026-05-29T14:30:00", "Europe/Berlin"),
    ("hourly COUNT=100000, ended", "FREQ=HOURLY;COUNT=100000", "1976-01-01T00:30:00",
     "2026-11-26T12:30:00", "Europe/Berlin"),
    ("hourly, every minute", f"FREQ=HOURLY;BYMINUTE={ALL_MINUTES}", None,
     "2026-11-26T12:59:00", "Europe/Berlin"),
    ("hourly, every minute and second",
     f"FREQ=HOURLY;BYMINUTE={ALL_MINUTES};BYSECOND={ALL_MINUTES}", None,
     "2026-11-26T12:59:59", "Europe/Berlin"),
    # our own: huge sets, BYSETPOS, DST jumps, COUNT late in long series, rare matches
    ("daily 86400 times, BYSETPOS=-1",
     f"FREQ=DAILY;BYHOUR={ALL_HOURS};BYMINUTE={ALL_MINUTES};BYSECOND={ALL_MINUTES};BYSETPOS=-1",
     None, "2026-11-26T23:59:59", "Europe/Berlin"),
    ("yearly 31M times, BYSETPOS=-2,2",
     f"FREQ=YEARLY;BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;BYHOUR={ALL_HOURS};"
     f"BYMINUTE={ALL_MINUTES};BYSECOND={ALL_MINUTES};BYSETPOS=-2,2",
     None, "2026-11-26T12:00:00", "Europe/Berlin"),
    ("minutely every second over Berlin's gap",
     f"FREQ=MINUTELY;BYSECOND={ALL_MINUTES}", None, "2026-03-29T01:59:59", "Europe/Berlin"),
    ("minutely every second over Apia's jump",
     f"FREQ=MINUTELY;BYSECOND={ALL_MINUTES}", None, "2011-12-29T23:59:30", "Pacific/Apia"),
    ("monthly 5th Monday on the 1st (never)", "FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("monthly/7 5th Friday 31st COUNT, late", "FREQ=MONTHLY;INTERVAL=7;BYDAY=5FR;"
     "BYMONTHDAY=31;COUNT=100000", "1970-01-01T09:00:00", "8990-01-01T09:00:00",
     "Europe/Berlin"),
    ("yearly Feb 29 on Monday, COUNT, late", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;"
     "COUNT=100000", "1970-01-01T09:00:00", "8990-01-01T09:00:00", "Europe/Berlin"),
    ("yearly week 53 and -1, COUNT, late", "FREQ=YEARLY;BYWEEKNO=53,-1;BYDAY=MO,SU;"
     "COUNT=100000;WKST=SU", "1970-01-01T09:00:00", "8990-01-01T09:00:00", "Europe/Berlin"),
    ("weekly all days COUNT, late", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;COUNT=100000",
     "1970-01-05T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely/7 in hour 3 on Sundays", "FREQ=MINUTELY;INTERVAL=7;BYHOUR=3;BYDAY=SU", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely 1 in 10080, COUNT late", "FREQ=MINUTELY;BYHOUR=3;BYMINUTE=7;BYDAY=SU;"
     "COUNT=100000", "1970-01-04T03:07:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("daily in January COUNT, late", "FREQ=DAILY;BYMONTH=1;COUNT=100000",
     "1970-01-01T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("daily all months COUNT, 20 years in", "FREQ=DAILY;BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;"
     "COUNT=100000", "2006-11-26T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("daily/7 on the 31st", "FREQ=DAILY;INTERVAL=7;BYMONTHDAY=31", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("daily/7 Sundays in January (never)", "FREQ=DAILY;INTERVAL=7;BYDAY=SU;BYMONTH=1", None,
     "2026-11-25T09:00:00", "Europe/Berlin"),
    ("hourly Feb 29 on Monday", "FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely on Feb 29", "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely on yearday 366 Mondays", "FREQ=MINUTELY;BYYEARDAY=366;BYDAY=MO", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("weekly in February, every 13 weeks", "FREQ=WEEKLY;INTERVAL=13;BYMONTH=2", None,
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("hourly/10000 hours BYHOUR=5 Sundays", "FREQ=HOURLY;INTERVAL=10000;BYHOUR=5;BYDAY=SU",
     None, "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely/7919 at 03:07 on Feb 29 (none by 9000)",  "FREQ=MINUTELY;INTERVAL=7919;BYMONTH=2;"
     "BYMONTHDAY=29;BYHOUR=3;BYMINUTE=7", None, "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely/7919 all months COUNT, late", "FREQ=MINUTELY;INTERVAL=7919;"
     "BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;COUNT=100000", "1970-01-01T09:00:00",
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely/1031 all months COUNT, late", "FREQ=MINUTELY;INTERVAL=1031;"
     "BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;COUNT=100000", "1970-01-01T09:00:00",
     "2026-11-26T09:00:00", "Europe/Berlin"),
    ("minutely/1031 odd days COUNT, late (step bound)", "FREQ=MINUTELY;INTERVAL=1031;"
     "BYMONTHDAY=" + ",".join(map(str, range(1, 32, 2))) + ";COUNT=100000",
     "1970-01-01T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("hourly in January at 9 COUNT, late", "FREQ=HOURLY;BYMONTH=1;BYHOUR=9;COUNT=100000",
     "1970-01-01T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("weekly/3 in February COUNT, late", "FREQ=WEEKLY;INTERVAL=3;BYMONTH=2;BYDAY=MO,TU;"
     "COUNT=100000", "1970-01-05T09:00:00", "2026-11-26T09:00:00", "Europe/Berlin"),
    ("UNTIL year 9000, rare", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;"
     "UNTIL=90001231T000000Z", None, "8990-01-01T09:00:00", "Europe/Berlin"),
]


def clear_caches() -> None:
    rrule_parse.parse_rule.cache_clear()
    recurrence._expander.cache_clear()
    recurrence._offsets.cache_clear()


def cpu_ms(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000


def measure(runs: int) -> list[tuple[str, float, float, float, float, str]]:
    rows = []
    for name, rule, dtstart, current, zone_name in CASES:
        zone = load_zone(zone_name)
        value = {"rrule": rule, **({"dtstart": dtstart} if dtstart else {})}
        wall = datetime.fromisoformat(current)
        after = resolve_local(wall, zone)

        def event(value: object = value, wall: datetime = wall, after: datetime = after,
                  zone: object = zone) -> datetime | None:
            assert zone is not None
            rec = parse_recurrence(value, zone, datetime.min.time())  # type: ignore[arg-type]
            assert isinstance(rec, Recurrence)
            return next_occurrence(rec, zone, wall, after)  # type: ignore[arg-type]

        cold, warm = [], []
        for _ in range(runs):
            clear_caches()
            cold.append(cpu_ms(event))
            warm.append(cpu_ms(event))
        answer = event()
        shown = "ended" if answer is None else answer.strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append((name, statistics.median(cold), max(cold), statistics.median(warm),
                     max(warm), shown))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    rows = measure(runs)
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"{runs} runs per rule, CPU ms (time.process_time)\n")
    print("| rule | cold median | cold max | warm median | warm max | answer |")
    print("|---|---|---|---|---|---|")
    for name, cmed, cmax, wmed, wmax, shown in rows:
        print(f"| {name} | {cmed:.2f} | {cmax:.2f} | {wmed:.2f} | {wmax:.2f} | {shown} |")
    worst = max(rows, key=lambda r: r[2])
    verdict = "met" if worst[2] <= TARGET_MS else "NOT met"
    print(f"\nworst case: {worst[0]}: {worst[2]:.2f} ms cold (max of {runs}); "
          f"target {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
