"""Prometheus metrics of the workers, correct under Celery's prefork pool.

Each pool process writes its samples to files in a per-worker directory (prometheus_client's
multiprocess mode), and the worker's main process serves them all at ``/metrics`` on
``RECALL_METRICS_PORT`` (default 9547; 0 turns metrics off). ``prometheus_client`` is imported
in ``start``, before the pool forks, which then picks the file-backed value class.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from config.settings import Settings

__all__ = ["record", "start", "stop_child"]

log = logging.getLogger(__name__)

# Fire lateness buckets (seconds): the target is p99 under 2 s; a lost broker message shows up
# as about RECALL_REDISPATCH_AFTER_S (15 s) late.
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 300)
INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class _Metrics:
    decisions: Any
    dead_letters: Any
    ingest_seconds: Any
    event_age_seconds: Any
    fire_lateness: Any
    recalls_pending: Any
    recalls_due_soon: Any
    recalls_overdue: Any


_metrics: _Metrics | None = None


def _build() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        decisions=Counter(
            "recall_decisions", "Decisions made, by action, reason and source.",
            ["action", "reason", "source"],
        ),
        dead_letters=Counter(
            "recall_dead_letters", "Inputs refused and kept as dead letters, by reason.", ["reason"]
        ),
        ingest_seconds=Histogram(
            "recall_ingest_seconds",
            "Time to validate, decide and store one message: its transaction, shared or not.",
            ["task"], buckets=INGEST_BUCKETS,
        ),
        event_age_seconds=Histogram(
            "recall_event_age_seconds", "From a call's occurred_at to its decision being stored.",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 86400),
        ),
        fire_lateness=Histogram(
            "recall_fire_lateness_seconds", "From a recall's due time to its phone being eligible.",
            buckets=LATENESS_BUCKETS,
        ),
        recalls_pending=Gauge(
            "recall_recalls_pending", "Recalls waiting to fall due.",
            multiprocess_mode="livemostrecent",
        ),
        recalls_due_soon=Gauge(
            "recall_recalls_due_soon", "Pending recalls due within the next hour.",
            multiprocess_mode="livemostrecent",
        ),
        recalls_overdue=Gauge(
            "recall_recalls_overdue", "Pending recalls more than a minute past their due time.",
            multiprocess_mode="livemostrecent",
        ),
    )  # fmt: skip


def start(settings: Settings) -> None:
    """In the worker's main process, before the pool forks: set up and serve the metrics."""
    global _metrics
    if settings.metrics_port == 0:
        return
    directory = settings.ready_home() / "metrics" / str(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # Celery's command line loads Flower's plugin, which imports prometheus_client before this
    # runs: choose the value class again now that the directory is set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    address, port = settings.metrics_address, settings.metrics_port
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as error:
        log.warning("metrics not served on %s port %s: %s", address, port, error)
    else:
        log.info("metrics at http://%s:%s/metrics", address, port)
    _metrics = _build()


def stop_child(pid: int) -> None:
    """A pool process is gone: its live gauges no longer count."""
    if _metrics is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Recorder:
    """What the tasks record; every method does nothing when metrics are off."""

    def decisions(self, items: Iterable[tuple[str, str, str | None]]) -> None:
        if _metrics is not None:
            for action, reason, source in items:
                _metrics.decisions.labels(action, reason, source or "none").inc()

    def dead_letters(self, reason: str, count: int = 1) -> None:
        if _metrics is not None and count:
            _metrics.dead_letters.labels(reason).inc(count)

    def ingest(
        self, task: str, seconds: float, event_ages: Iterable[float], messages: int = 1
    ) -> None:
        """``messages`` taken in one transaction of ``seconds``: each counts that time."""
        if _metrics is not None:
            histogram = _metrics.ingest_seconds.labels(task)
            for _ in range(messages):
                histogram.observe(seconds)
            for age in event_ages:
                _metrics.event_age_seconds.observe(max(age, 0.0))

    def fired(self, lateness: Iterable[float]) -> None:
        if _metrics is not None:
            for seconds in lateness:
                _metrics.fire_lateness.observe(max(seconds, 0.0))

    def recall_counts(self, pending: int, due_soon: int, overdue: int) -> None:
        if _metrics is not None:
            _metrics.recalls_pending.set(pending)
            _metrics.recalls_due_soon.set(due_soon)
            _metrics.recalls_overdue.set(overdue)

    @property
    def enabled(self) -> bool:
        return _metrics is not None


record = _Recorder()
