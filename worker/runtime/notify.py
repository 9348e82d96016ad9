"""Eligibility notifications: a small JSON message per phone that became dial-eligible.

Published on a plain queue (``RECALL_NOTIFY_QUEUE``, default ``recall.eligible``) of the same
broker, for the dialer to consume. The body is ``Fired.to_json()``: see docs/NOTIFICATIONS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kombu.entity import Queue

from worker.store.recalls import Fired

__all__ = ["publish_eligible"]


def publish_eligible(app: Any, queue_name: str, fired: Sequence[Fired]) -> None:
    if not fired:
        return
    queue = Queue(queue_name, routing_key=queue_name, durable=True)
    with app.producer_or_acquire() as producer:
        for item in fired:
            producer.publish(
                item.to_json(),
                exchange="",
                routing_key=queue_name,
                declare=[queue],
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
            )
