"""Builders shared by the reliability scenarios (importable as ``tests.reliability.support``)."""

from __future__ import annotations

import statistics
from datetime import timedelta
from pathlib import Path


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
