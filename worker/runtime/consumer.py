"""The worker's message consumer: Celery's own, plus a dead letter for every message it refuses,
and a worker that outlives the loss of its broker (with ``worker.redis_transport``).

Celery drops a message it cannot decode (not JSON: pickle is refused by design) or that names an
unknown task, with only a log line. Operators need those too, with the raw payload, so that a
misconfigured sender is found and nothing the dialer sent is silently lost.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.worker.consumer import Consumer

from worker.runtime.metrics import record
from worker.store.database import session_scope
from worker.store.dead_letters import Letter, record_dead_letters

log = logging.getLogger(__name__)

__all__ = ["RecallConsumer", "keep_refused_message"]


def keep_refused_message(task: str, detail: str, body: object) -> None:
    """Store a refused broker message as a dead letter; never raises (the consumer must live)."""
    letter = Letter.of(task, "invalid_event", detail, body, datetime.now(UTC))
    try:
        with session_scope() as session:
            record_dead_letters(session, [letter])
        record.dead_letters("invalid_event")
    except Exception:
        log.exception("could not keep a refused message as a dead letter: %s", detail)


def _task_name(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    name = headers.get("task") if isinstance(headers, dict) else None
    return str(name) if name else "unknown"


def _payload(body: object, message: Any) -> object:
    # Celery hands the decoded body only for protocol 1; for protocol 2 (what every sender uses
    # now) it is None, and the raw body, undecoded (a refused pickle stays unpickled), is kept.
    return body if body is not None else getattr(message, "body", None)


class RecallConsumer(Consumer):  # type: ignore[misc]  # celery ships no type hints
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Celery 5.7 first collects the broken connection, then closes it: closing its Redis
        # channels tries to give the held messages (firings waiting for their time) back through
        # the dropped client, which now raises a connection error (see above). Nothing can be
        # given back to a broker that is gone: close as far as possible, then reconnect.
        connection = self.connection
        if connection is not None:
            close = connection.close
            lost = (AttributeError, *self.connection_errors)

            def close_broken_connection() -> None:
                try:
                    close()
                except lost as error:
                    log.warning("broker connection lost; closed it as far as possible (%r)", error)

            connection.close = close_broken_connection
        super().on_connection_error_after_connected(exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        content_type = getattr(message, "content_type", None)
        detail = f"message: cannot decode a {content_type} body ({type(exc).__name__}: {exc})"
        keep_refused_message(_task_name(message), detail, message.body)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        keep_refused_message("unknown", "message: not a Celery task message", body)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = _task_name(message)
        keep_refused_message(name, f"message: unknown task {name!r}", _payload(body, message))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        detail = f"message: invalid task message: {exc}"
        keep_refused_message(_task_name(message), detail, _payload(body, message))
        super().on_invalid_task(body, message, exc)
