"""Ingestion tasks (contract): ``recall.process_call_result`` and its batch twin."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from config.settings import get_settings
from tasks.base import RecallTask
from worker.app import app
from worker.domain.intake import event_id_of
from worker.names import BATCH_TASK, SINGLE_TASK
from worker.runtime.batching import BufferedTask
from worker.runtime.metrics import record
from worker.runtime.rules_cache import rules_in_force
from worker.store.dead_letters import Letter, record_dead_letters
from worker.store.ingest import ingest

log = logging.getLogger(__name__)


def _refuse(
    task: RecallTask,
    detail: str,
    payload: object,
    event_id: str | None = None,
    task_id: str | None = None,
) -> None:
    """Keep an input the task cannot take as a dead letter (invalid_event)."""
    with task.transaction() as session:
        letter = Letter.of(task.name, "invalid_event", detail, payload, task.now(), event_id)
        record_dead_letters(session, [letter])
    record.dead_letters("invalid_event")
    log.warning("refused by %s: %s", task.name, detail, extra={"task_id": task_id})


def _ingest(
    task: RecallTask, payloads: list[Any], task_ids: Sequence[str] | None = None
) -> list[str]:
    """Take ``payloads`` in one transaction; the action for each, in order ("reject" included).

    ``task_ids``, when several messages brought one payload each: their ids, for the log lines
    (else the running task's), and each message is counted in ``recall_ingest_seconds`` with the
    time of the transaction it shared.
    """
    ids: Sequence[str | None] = task_ids or [None] * len(payloads)
    started = time.perf_counter()
    try:
        with task.transaction() as session:
            now = task.now()
            rules = rules_in_force(session, now)  # recorded before any decision made with them
            report = ingest(
                session, payloads, rules, now, task=task.name, skew_s=get_settings().clock_skew_s
            )
    except task.autoretry_for:
        raise  # the database is away: retry the whole message later
    except Exception as error:
        # A bug or a value the database refuses must not take the good events down with it:
        # split the batch, and keep the one event that still fails as a dead letter.
        if len(payloads) > 1:
            log.exception("batch of %d failed; taking its events one by one", len(payloads))
            return [
                action
                for payload, task_id in zip(payloads, ids, strict=True)
                for action in _ingest(task, [payload], [task_id] if task_id else None)
            ]
        log.exception("event failed")
        payload = payloads[0]
        detail = f"event: could not be processed ({type(error).__name__}: {error})"
        _refuse(task, detail.splitlines()[0], payload, event_id_of(payload), ids[0])
        return ["reject"]
    record.ingest(
        task.name,
        time.perf_counter() - started,
        (now.timestamp() - event.occurred_at.timestamp() for event in report.events),
        messages=len(task_ids or [None]),
    )
    record.decisions((d.action, d.reason, d.source) for d in report.decisions)
    decisions, rejected = iter(report.decisions), iter(report.rejected)
    for task_id, action in zip(ids, report.actions, strict=True):
        if action == "reject":
            event_id, reason, detail = next(rejected)
            record.dead_letters(reason)
            log.warning(
                "dead letter (%s): %s",
                reason,
                detail,
                extra={"event_id": event_id, "task_id": task_id},
            )
            continue
        decision = next(decisions)
        log.info(
            "event %s phone %s: %s (%s)",
            decision.event_id,
            decision.phone_id,
            decision.action,
            decision.reason,
            extra={"event_id": decision.event_id, "phone_id": decision.phone_id,
                   "task_id": task_id},
        )  # fmt: skip
    return report.actions


class OneEventTask(RecallTask, BufferedTask):
    """``recall.process_call_result``: the worker takes several of its messages at a time, in
    one transaction (worker/runtime/batching.py); called any other way, it is an ordinary task."""

    abstract = True

    def flush_policy(self) -> tuple[int, float]:
        settings = get_settings()
        return settings.ingest_flush_count, settings.ingest_flush_ms / 1000

    def batchable(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return len(args) == 1 and not kwargs  # else refused, alone, as before

    def run_together(self, ids: Sequence[str], args: Sequence[tuple[Any, ...]]) -> list[Any] | None:
        try:
            actions = _ingest(self, [one[0] for one in args], ids)
        except self.autoretry_for as error:
            log.warning("%d messages wait for the database: %r", len(args), error)
            return None
        return [{action: 1} for action in actions]


@app.task(name=SINGLE_TASK, base=OneEventTask, bind=True)
def process_call_result(self: RecallTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Take one call-result event (a JSON object, or its JSON text) as the only argument."""
    if len(args) != 1 or kwargs:
        detail = (
            f"arguments: expected one event, got {len(args)} positional"
            f" and {len(kwargs)} keyword arguments"
        )
        _refuse(self, detail, {"args": list(args), "kwargs": kwargs})
        return {"reject": 1}
    return {_ingest(self, [args[0]])[0]: 1}


@app.task(name=BATCH_TASK, base=RecallTask, bind=True)
def process_call_results(self: RecallTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Take a list of call-result events in one transaction; bad ones go to the dead letters."""
    limit = get_settings().max_batch
    events = args[0] if len(args) == 1 and not kwargs else None
    if not isinstance(events, list):
        detail = "arguments: expected one list of events"
        _refuse(self, detail, {"args": list(args), "kwargs": kwargs})
        return {"reject": 1}
    if len(events) > limit:
        # One dead letter per event, so that each can be replayed once the sender is fixed.
        for index, event in enumerate(events, start=1):
            detail = f"events: batch of {len(events)} is over the limit of {limit} (event {index})"
            _refuse(self, detail, event, event_id_of(event))
        return {"reject": len(events)}
    return dict(Counter(_ingest(self, events)))
