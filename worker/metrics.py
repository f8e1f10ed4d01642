"""The worker's metrics (docs/operations.md, "Metrics"), built on a registry passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Sidecar calls take ~1 ms on loopback; daprd may wait 30 s for the scheduler.
SIDECAR_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Lateness spans Dapr's immediate fire (~ms) to retries minutes later.
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class Labelled:
    """A labelled counter whose children are looked up once: prometheus-client's
    `labels()` validates and takes a lock on every call (two per task event)."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def labels(self, *values: str) -> Counter:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


@dataclass(frozen=True)
class Metrics:
    events: Labelled
    jobs: Labelled
    reminders: Labelled
    next_occurrences: Labelled
    lateness: Histogram
    sidecar_seconds: Histogram
    missed: Labelled
    deferred: Labelled

    @classmethod
    def create(cls, registry: CollectorRegistry, *, process: bool = True) -> Metrics:
        """Register the worker's metrics (and process metrics) on `registry`."""
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        def counter(name: str, doc: str, labels: list[str]) -> Labelled:
            return Labelled(Counter(name, doc, labels, registry=registry))

        return cls(
            events=counter("reminder_worker_events", "Task events handled", ["type", "outcome"]),
            jobs=counter("reminder_worker_jobs", "Dapr job operations", ["op", "outcome"]),
            reminders=counter("reminder_worker_reminders_published",
                              "Fired reminder jobs by outcome", ["outcome"]),
            next_occurrences=counter("reminder_worker_next_occurrences",
                                     "Next occurrences of recurring tasks", ["outcome"]),
            lateness=Histogram("reminder_worker_reminder_lateness_seconds",
                               "Fire time minus reminder instant", buckets=LATENESS_BUCKETS,
                               registry=registry),
            sidecar_seconds=Histogram("reminder_worker_sidecar_request_seconds",
                                      "Dapr sidecar call latency", ["api", "outcome"],
                                      buckets=SIDECAR_BUCKETS, registry=registry),
            missed=counter("reminder_worker_reminders_missed",
                           "Reminders not published: later than the misfire grace "
                           "(also counted skipped in reminders_published)",
                           ["kind"]),
            deferred=counter("reminder_worker_reminders_deferred",
                             "Reminders published at the end of quiet hours (each one a "
                             "merged publication stands for)",
                             ["kind"]),
        )
