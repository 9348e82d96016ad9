"""A no-op task on the recall app itself: Celery's own cost under the worker's exact settings.

``recall worker --include bench.noop`` registers it beside the real tasks; ``make bench`` drains
a queue of them to get the baseline the ingestion tasks are compared with.
"""

from __future__ import annotations

from worker.app import app


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing: the message is received, the task runs, the message is acknowledged."""
