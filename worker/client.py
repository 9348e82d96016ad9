"""A small client for dialers written in Python: publish call results as the contract says.

    from worker.client import RecallClient
    client = RecallClient("redis://redis.internal:6379/0")
    client.publish({"event_id": "e1", "plan_id": "default", ...})
    client.publish_many(events)           # one message per 500 events

The client needs only Celery: it sends by task name and never imports the worker's code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from celery import Celery

from worker.names import BATCH_TASK, CALL_RESULTS_QUEUE, SINGLE_TASK

__all__ = ["RecallClient"]


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


class RecallClient:
    """Publishes events to ``call_results`` with the JSON serializer, as the worker expects."""

    def __init__(self, broker_url: str | None = None, *, app: Celery | None = None) -> None:
        if app is None:
            app = Celery("recall-client", broker=broker_url)
            app.conf.update(task_serializer="json", accept_content=["json"])
        self.app = app

    def publish(self, event: Any) -> None:
        """Send one event (a dict, or its JSON text) to ``recall.process_call_result``."""
        self.app.send_task(SINGLE_TASK, args=[event], queue=CALL_RESULTS_QUEUE)

    def publish_many(self, events: Iterable[Any], *, batch: int = 500) -> tuple[int, int]:
        """Send events in lists of ``batch`` to ``recall.process_call_results``.

        Returns (events sent, messages sent).
        """
        sent = messages = 0
        with self.app.producer_or_acquire() as producer:
            for chunk in batched(events, batch):
                self.app.send_task(
                    BATCH_TASK, args=[chunk], queue=CALL_RESULTS_QUEUE, producer=producer
                )
                sent += len(chunk)
                messages += 1
        return sent, messages
