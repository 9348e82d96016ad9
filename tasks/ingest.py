"""Ingestion tasks (contract): ``recall.process_call_result`` and its batch twin."""

from __future__ import annotations

import logging
from typing import Any

from config.settings import get_settings
from tasks.base import RecallTask
from worker.app import app
from worker.pipeline import IngestReport, ingest, raw_text
from worker.runtime import current_rules
from worker.store import record_dead_letters

log = logging.getLogger(__name__)


def _ingest(task: RecallTask, payloads: list[Any]) -> dict[str, int]:
    rules = current_rules()
    now = task.now()
    with task.transaction() as session:
        report: IngestReport = ingest(session, payloads, rules, now, task=task.name)
    for decision in report.decisions:
        log.info(
            "event %s phone %s: %s %s",
            decision.event_id,
            decision.phone_id,
            decision.action,
            decision.reason,
            extra={"event_id": decision.event_id, "phone_id": decision.phone_id},
        )
    return report.counts()


@app.task(name="recall.process_call_result", base=RecallTask, bind=True)
def process_call_result(self: RecallTask, event: Any) -> dict[str, int]:
    """Take one call-result event (a JSON object, or its JSON text)."""
    return _ingest(self, [event])


@app.task(name="recall.process_call_results", base=RecallTask, bind=True)
def process_call_results(self: RecallTask, events: Any) -> dict[str, int]:
    """Take a list of call-result events in one transaction; bad ones go to the dead letters."""
    limit = get_settings().max_batch
    if not isinstance(events, list) or len(events) > limit:
        detail = (
            f"events: batch of {len(events)} is over the limit of {limit}"
            if isinstance(events, list)
            else f"events: must be a list of events, got {type(events).__name__}"
        )
        with self.transaction() as session:
            record_dead_letters(
                session,
                [
                    {
                        "task": self.name,
                        "event_id": None,
                        "reason": "invalid_event",
                        "detail": detail,
                        "payload": raw_text(events),
                        "received_at": self.now(),
                    }
                ],
            )
        log.warning("batch refused: %s", detail)
        return {"reject": 1}
    return _ingest(self, events)
