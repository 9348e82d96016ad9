"""Builders shared by the reliability scenarios (importable as ``tests.reliability.support``)."""

from __future__ import annotations

import re
import statistics
from datetime import timedelta
from pathlib import Path

from tests.workers import WorkerProcess

#: What a worker logs while its broker is away: the consumer's and the dispatcher's failed
#: connection attempts (each followed by its traceback), and Celery's own complaint that its
#: Gossip step cannot close channels of the connection it dropped (logged, then it reconnects).
#: Anything else logged as an error is not expected.
BROKER_AWAY = re.compile(
    r"Connection refused|Cannot connect to redis"
    # kombu's own line when a message of the lost connection cannot be acknowledged or given
    # back (worker/runtime/consumer.py makes that a connection error); the broker keeps it as
    # unacked.
    r"|Couldn't (?:ack|reject) '[^']+', ?reason: ?\S*ConnectionError"
    r"|Error on restarting Gossip: AttributeError\(\"'NoneType' object has no attribute"
    r" 'connection_errors'\"\)"
)


def worker_env(broker: str, database: str, home: Path, **more: str) -> dict[str, str]:
    """A worker's environment on real servers; metrics off (several workers share the host)."""
    return {
        "RECALL_BROKER_URL": broker,
        "RECALL_DATABASE_URL": database,
        "RECALL_HOME": str(home),
        "RECALL_METRICS_PORT": "0",
        **more,
    }


def seconds(values: list[timedelta]) -> tuple[float, float]:
    """(max, median) of durations, in seconds."""
    found = [value.total_seconds() for value in values]
    return max(found), statistics.median(found)


def errors_besides_broker_away(worker: WorkerProcess) -> tuple[int, list[str]]:
    """(error lines about the broker being away, every other ERROR or CRITICAL line)."""
    away, other = 0, []
    for line in worker.text().splitlines():
        if re.search(r"ERROR/|CRITICAL/", line):
            if BROKER_AWAY.search(line):
                away += 1
            else:
                other.append(line)
    return away, other
