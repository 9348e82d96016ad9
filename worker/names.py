"""The names on the wire (DESIGN.md sections 3 and 5): tasks and queues, written once.

Dialers, the worker, the dispatcher and the tools all send to or read from these names; they are
the contract, so they live here and nowhere else.
"""

from __future__ import annotations

__all__ = [
    "BATCH_TASK",
    "CALL_RESULTS_QUEUE",
    "DISPATCH_TASK",
    "FIRE_TASK",
    "RECALLS_QUEUE",
    "SINGLE_TASK",
    "TASK_QUEUES",
    "WORKER_QUEUES",
]

#: One call-result event as its only argument.
SINGLE_TASK = "recall.process_call_result"
#: A list of call-result events.
BATCH_TASK = "recall.process_call_results"
#: The periodic dispatcher: hands recalls falling due to FIRE_TASK.
DISPATCH_TASK = "recall.dispatch_due"
#: Marks the phones of due recalls dial-eligible.
FIRE_TASK = "recall.mark_eligible"

CALL_RESULTS_QUEUE = "call_results"
RECALLS_QUEUE = "recalls"
#: The queues a worker consumes.
WORKER_QUEUES = (CALL_RESULTS_QUEUE, RECALLS_QUEUE)
#: Where each task is sent.
TASK_QUEUES = {
    SINGLE_TASK: CALL_RESULTS_QUEUE,
    BATCH_TASK: CALL_RESULTS_QUEUE,
    DISPATCH_TASK: RECALLS_QUEUE,
    FIRE_TASK: RECALLS_QUEUE,
}
