"""Recall tasks: the periodic dispatcher and ``recall.mark_eligible``, which fires recalls."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta

from config.settings import get_settings
from tasks.base import RecallTask
from worker.app import app
from worker.names import DISPATCH_TASK, FIRE_TASK
from worker.runtime.metrics import record
from worker.runtime.notify import publish_eligible
from worker.store.queries import recall_counts
from worker.store.recalls import claim_due, fire_recalls

log = logging.getLogger(__name__)

# Claimed per transaction: big enough for a morning burst in a few round trips, small enough to
# keep each transaction short.
CLAIM_LIMIT = 10_000
# Recall ids per mark_eligible message: one message, one transaction, one bulk update.
IDS_PER_MESSAGE = 500
# A firing delivered this early still counts as on time (broker and worker clocks differ).
EARLY_TOLERANCE = timedelta(milliseconds=500)


# Counting pending recalls for the gauges is one indexed query, but not every second.
COUNT_EVERY_S = 15.0
_last_count = 0.0


def _update_gauges(task: RecallTask) -> None:
    global _last_count
    if not record.enabled or time.monotonic() - _last_count < COUNT_EVERY_S:
        return
    _last_count = time.monotonic()
    with task.transaction() as session:
        counts = recall_counts(session, task.now())
    record.recall_counts(counts.pending, counts.due_next_hour, counts.overdue)


@app.task(name=DISPATCH_TASK, base=RecallTask, bind=True)
def dispatch_due(self: RecallTask) -> int:
    """Hand recalls falling due within the horizon to ``recall.mark_eligible``, at their time."""
    settings = get_settings()
    _update_gauges(self)
    total = 0
    while True:
        now = self.now()
        with self.transaction() as session:
            claimed = claim_due(
                session,
                now,
                horizon=timedelta(seconds=settings.dispatch_horizon_s),
                redispatch_after=timedelta(seconds=settings.redispatch_after_s),
                limit=CLAIM_LIMIT,
            )
        # One message per second of due time, sent for the latest due time in that second.
        by_second: dict[datetime, list[tuple[datetime, str]]] = defaultdict(list)
        for recall_id, due_at in claimed:
            by_second[due_at.replace(microsecond=0)].append((max(due_at, now), recall_id))
        for group in by_second.values():
            for start in range(0, len(group), IDS_PER_MESSAGE):
                part = group[start : start + IDS_PER_MESSAGE]
                eta = max(due for due, _ in part)
                mark_eligible.apply_async(([recall_id for _, recall_id in part],), eta=eta)
        total += len(claimed)
        if len(claimed) < CLAIM_LIMIT:
            if total:
                log.info("dispatched %d recalls falling due", total)
            return total


@app.task(name=FIRE_TASK, base=RecallTask, bind=True)
def mark_eligible(self: RecallTask, recall_ids: list[str]) -> int:
    """Mark the phones of these recalls dial-eligible, if the recalls are still current."""
    now = self.now()
    with self.transaction() as session:
        fired = fire_recalls(session, recall_ids, now, early_tolerance=EARLY_TOLERANCE)
        # Published before the commit: if the broker refuses, the firing rolls back and the
        # task retries, so every eligible phone is announced at least once (maybe twice).
        publish_eligible(app, get_settings().notify_queue, fired)
    record.fired((item.fired_at - item.due_at).total_seconds() for item in fired)
    for item in fired:
        log.info(
            "recall %s fired: phone %s eligible (%.1fs after due)",
            item.recall_id,
            item.phone_id,
            (item.fired_at - item.due_at).total_seconds(),
            extra={"phone_id": item.phone_id, "recall_id": item.recall_id},
        )
    return len(fired)
