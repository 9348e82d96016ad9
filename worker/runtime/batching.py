"""Several messages of one task taken together: a Celery task strategy that buffers requests.

Celery hands each message to a pool process on its own. For ``recall.process_call_result`` (one
event per message) that makes each event its own database transaction, and the transaction,
not Celery, is then most of the cost. With this strategy the worker's main process holds the
task's requests for a moment and hands them to one pool process together, which takes them in
one transaction (``BufferedTask.run_together``):

- a buffer is handed over when it holds ``count`` requests, or ``interval_s`` after its first
  request came, whichever is first: a lone message waits at most that long;
- everything Celery does for a message still happens per message: the ``task-received``,
  ``task-started`` and ``task-succeeded`` events (Flower), the worker's reserved and active
  requests, the log lines;
- each message is acknowledged only after ``run_together`` returned, that is after the
  transaction committed (acks late); a pool process lost meanwhile gives its messages back;
- when ``run_together`` cannot take them (the database is away), each message goes the usual
  way, as a task of its own, with the task's usual retries.

Only messages that go straight to the pool are buffered; a retry (it has an ETA), a
rate-limited message or an ill-formed one (``batchable``) goes the usual way. The buffer lives
in the main process only, so a worker killed with messages in it has acknowledged none of them:
the broker gives them back.

Buffering needs the worker's event loop (the prefork pool); with the solo or thread pool each
message runs on its own, as ``RECALL_INGEST_FLUSH_COUNT=1`` makes it everywhere.

celery-batches (PyPI) buffers the same way, but its 0.11 requires Celery below 5.7, acknowledges
a batch's messages even when the batch failed, sends no task events, and hands the task a list
of requests instead of its arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Task
from celery.app.trace import LOG_SUCCESS
from celery.worker.strategy import default as default_strategy

__all__ = ["BufferedTask", "MessageBuffer", "buffered_strategy"]

log = logging.getLogger(__name__)
trace_log = logging.getLogger("celery.app.trace")


class BufferedTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """A task whose messages the worker may take several at a time (see the module docstring)."""

    abstract = True
    Strategy = "worker.runtime.batching:buffered_strategy"

    def flush_policy(self) -> tuple[int, float]:
        """Most messages handed over together, and the longest the first waits (seconds)."""
        return 1, 0.0

    def batchable(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether a message with these arguments may be taken together with others."""
        return True

    def run_together(self, ids: Sequence[str], args: Sequence[tuple[Any, ...]]) -> list[Any] | None:
        """In a pool process: run the messages ``args`` (one tuple each) as one unit of work.

        Returns each message's result, in order, once its work is committed; or None when it
        could not be done now (e.g. the database is away): each message then runs on its own.
        """
        raise NotImplementedError


class _HandOver:
    """The consumer as the default strategy sees it, but handing requests to ``handle``."""

    def __init__(self, consumer: Any, handle: Callable[[Any], None]) -> None:
        self._consumer = consumer
        self.on_task_request = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def buffered_strategy(task: BufferedTask, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy (events, revocation, ETA, rate limits), but the requests ready
    to run go to a ``MessageBuffer`` instead of straight to the pool."""
    count, interval_s = task.flush_policy()
    # Only on the event loop (the prefork pool): there the timer and the pool's callbacks run in
    # the consumer's own thread. The solo and thread pools run each message as it comes.
    if count <= 1 or not getattr(consumer.controller, "use_eventloop", False):
        return default_strategy(task, app, consumer, **kwargs)
    buffer = MessageBuffer(task, consumer, count, interval_s)
    return default_strategy(task, app, _HandOver(consumer, buffer.add), **kwargs)


class MessageBuffer:
    """The requests of one task waiting in the worker's main process to be handed over together.

    The buffer is the consumer's: a new connection makes a new strategy and buffer, and Celery
    clears the timer (so the old buffer's requests, never acknowledged, return to the broker).
    """

    def __init__(self, task: BufferedTask, consumer: Any, count: int, interval_s: float) -> None:
        self.task, self.pool, self.timer = task, consumer.pool, consumer.timer
        #: The worker's own way to run one request.
        self.handle: Callable[[Any], None] = consumer.on_task_request
        # With the prefork pool, Celery sends a job to the pool only when a process is free (a
        # semaphore, released by the pool as each job ends): a set of requests is one job.
        semaphore = getattr(consumer.controller, "semaphore", None)
        self.when_free: Callable[..., Any] = semaphore.acquire if semaphore else _at_once
        self.count, self.interval_s = count, interval_s
        self._requests: list[Any] = []
        self._flush_entry: Any = None

    def add(self, request: Any) -> None:
        if not self.task.batchable(request.args, request.kwargs):
            self.handle(request)
            return
        self._requests.append(request)
        if len(self._requests) >= self.count:
            self.flush()
        elif self._flush_entry is None:
            self._flush_entry = self.timer.call_after(self.interval_s, self.flush)

    def flush(self) -> None:
        """Hand the buffered requests to the pool: alone, the usual way; else together."""
        requests, self._requests = self._requests, []
        if self._flush_entry is not None:
            self._flush_entry.cancel()
            self._flush_entry = None
        # Revoked meanwhile: revoked() acknowledges it and sends its event.
        requests = [request for request in requests if not request.revoked()]
        if len(requests) == 1:
            self.handle(requests[0])
        elif requests:
            self.when_free(_Together(self, requests).send)


def _at_once(callback: Callable[[], Any]) -> Any:
    return callback()


class _Together:
    """One hand-over of several requests to one pool process, and what comes back."""

    def __init__(self, buffer: MessageBuffer, requests: list[Any]) -> None:
        self.buffer = buffer
        self.requests = requests

    def send(self) -> None:
        task = self.buffer.task
        self.buffer.pool.apply_async(
            run_together,
            args=(task.name, [r.id for r in self.requests], [r.args for r in self.requests]),
            accept_callback=self.on_accepted,
            callback=self.on_returned,
            error_callback=self.on_failure,
        )

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        for request in self.requests:
            request.on_accepted(pid, time_accepted)  # active, and its task-started event

    def on_returned(self, returned: tuple[list[Any], float] | None) -> None:
        if returned is None:
            # Not done (the database is away): each runs on its own, with its own retries. It
            # was counted as started once already; Celery counts it again (worker stats only).
            log.warning("%d messages not taken together; each runs on its own", len(self))
            for request in self.requests:
                self.buffer.handle(request)
            return
        results, runtime = returned
        for request, result in zip(self.requests, results, strict=True):
            # Acknowledged now, its transaction committed; its task-succeeded event.
            request.on_success((False, result, runtime))

    def on_failure(self, exc_info: Any) -> None:
        # The pool process was lost (killed, out of memory): Celery's own handling for each
        # request, which gives the message back (task_reject_on_worker_lost).
        for request in self.requests:
            request.on_failure(exc_info)

    def __len__(self) -> int:
        return len(self.requests)


def run_together(
    name: str, ids: list[str], args: list[tuple[Any, ...]]
) -> tuple[list[Any], float] | None:
    """In a pool process: the task's ``run_together``, and each message's log line as Celery's."""
    from celery import current_app

    task: BufferedTask = current_app.tasks[name]
    started = time.monotonic()
    try:
        results = task.run_together(ids, args)
    except Exception:
        # Never the pool's error path: Celery would take it for the tasks' failure and
        # acknowledge the messages. Each runs on its own instead, and fails or succeeds there.
        log.exception("%d messages of %s could not be taken together", len(ids), name)
        return None
    if results is None:
        return None
    runtime = time.monotonic() - started
    for task_id, message_args, result in zip(ids, args, results, strict=True):
        context = {"id": task_id, "name": name, "return_value": result, "runtime": runtime,
                   "args": message_args, "kwargs": {}}  # fmt: skip
        trace_log.info(LOG_SUCCESS, context, extra={"data": context})
    return results, runtime
