"""Single-event messages taken several at a time (worker/runtime/batching.py), on a real worker.

A real ``recall worker`` (prefork, concurrency 2), a real Redis and PostgreSQL; the messages are
published as a dialer does. What is checked is what the worker left: rows (their shared
``processed_at`` tells which events were stored in one transaction), dead letters, task events
(what Flower shows), log lines and the Prometheus endpoint.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from tests.db.test_operations import scrape
from tests.integration.test_integration import assert_no_errors, wait_until
from tests.reliability.fast_harness import fresh_database, worker_env
from tests.servers import PostgresServer, free_port
from tests.workers import WorkerProcess
from worker.names import CALL_RESULTS_QUEUE, SINGLE_TASK
from worker.store.models import DeadLetter, ProcessedEvent

pytestmark = pytest.mark.integration

RULES = '[[plans]]\nid = "open"\ntimezone = "UTC"\n'


def event(n: int, **fields: Any) -> dict[str, Any]:
    occurred = datetime.now(UTC) - timedelta(minutes=1)
    return {"event_id": f"b-{n}", "plan_id": "open", "lead_id": f"L{n}", "phone_id": f"P{n}",
            "sip_code": 486, "occurred_at": occurred.isoformat(), **fields}  # fmt: skip


class Stack:
    """A fresh database, a broker client and the worker's environment, for one test."""

    def __init__(self, url: str, engine: Any, broker: str, tmp: Path) -> None:
        self.url, self.engine, self.broker = url, engine, broker
        rules = tmp / "rules.toml"
        rules.write_text(RULES, encoding="utf-8")
        self.env = worker_env(broker, url, tmp / "home", rules)
        self.sender = Celery("test-sender", broker=broker)
        self.sender.conf.update(task_serializer="json", accept_content=["json"])

    def send(self, *args: Any, task_id: str) -> None:
        self.sender.send_task(SINGLE_TASK, args=list(args), queue=CALL_RESULTS_QUEUE,
                              task_id=task_id)  # fmt: skip

    def stored(self) -> dict[str, datetime]:
        """Each stored event's ``processed_at``: the clock of the transaction that stored it."""
        with self.engine.connect() as connection:
            query = select(ProcessedEvent.event_id, ProcessedEvent.processed_at)
            return {row[0]: row[1] for row in connection.execute(query)}

    def dead_letters(self) -> list[tuple[str | None, str, str]]:
        with self.engine.connect() as connection:
            query = select(DeadLetter.event_id, DeadLetter.reason, DeadLetter.detail)
            return [tuple(row) for row in connection.execute(query.order_by(DeadLetter.id))]


@pytest.fixture
def stack(postgres: PostgresServer, broker_url: str, tmp_path: Path) -> Iterator[Stack]:
    with fresh_database(postgres) as (url, engine):
        made = Stack(url, engine, broker_url, tmp_path)
        yield made
        made.sender.close()


class TaskEvents:
    """The task events a monitor such as Flower receives, captured in a thread."""

    def __init__(self, broker: str) -> None:
        self.app = Celery("test-monitor", broker=broker)
        self.seen: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._capture, daemon=True)
        self.receiver: Any = None

    def _capture(self) -> None:
        def keep(event: dict[str, Any]) -> None:
            if event["type"].startswith("task-"):
                self.seen[event["uuid"]].append((event["type"], event.get("result")))

        with self.app.connection() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": keep})
            self.receiver.on_consume_ready = lambda *_, **__: self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        assert self.ready.wait(30), "the event receiver did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)
        self.app.close()


def test_several_single_messages_are_stored_in_one_transaction_each_still_seen_on_its_own(
    stack: Stack, worker_process: Callable[..., WorkerProcess]
) -> None:
    # A flush interval far longer than the test: only the count hands messages over.
    port = free_port()
    env = {**stack.env, "RECALL_INGEST_FLUSH_COUNT": "10", "RECALL_INGEST_FLUSH_MS": "600000",
           "RECALL_METRICS_PORT": str(port)}  # fmt: skip
    for n in range(30):
        stack.send(event(n), task_id=f"task-{n}")
    with TaskEvents(stack.broker) as events:
        worker = worker_process(env)
        wait_until(lambda: len(stack.stored()) == 30, 60, "30 events stored", (worker,))
        wait_until(
            lambda: all(("task-succeeded", {"recall": 1}) in events.seen[f"task-{n}"]
                        for n in range(30)),
            timeout=30, what="every task-succeeded event",
        )  # fmt: skip

    # Three transactions of ten events each, not thirty of one.
    assert sorted(Counter(stack.stored().values()).values()) == [10, 10, 10]
    # What Flower shows: each message received, started and succeeded with its own result.
    for n in range(30):
        kinds = [kind for kind, _ in events.seen[f"task-{n}"]]
        assert kinds == ["task-received", "task-started", "task-succeeded"], (n, kinds)
    # The logs: Celery's line for each message and ours for each event.
    text = worker.text()
    for n in range(30):
        assert re.search(rf"Task {SINGLE_TASK}\[task-{n}\] succeeded in [\d.e-]+s: ", text), n
        line = f"event b-{n} phone P{n}: recall (sip_recall) [task=task-{n} event=b-{n} "
        assert line in text, n
    # The metrics: each message in recall_ingest_seconds, each decision counted.
    samples = scrape(port)
    assert samples[f'recall_ingest_seconds_count{{task="{SINGLE_TASK}"}}'] == 30
    decided = 'recall_decisions_total{action="recall",reason="sip_recall",source="sip_code"}'
    assert samples[decided] == 30
    assert_no_errors(worker)


def test_a_lone_message_is_stored_after_the_flush_interval(
    stack: Stack, worker_process: Callable[..., WorkerProcess]
) -> None:
    env = {**stack.env, "RECALL_INGEST_FLUSH_COUNT": "50", "RECALL_INGEST_FLUSH_MS": "2000"}
    worker = worker_process(env)
    sent = time.monotonic()
    stack.send(event(1), task_id="lone")
    time.sleep(1)
    assert stack.stored() == {}, "stored before the flush interval was over"
    wait_until(lambda: "b-1" in stack.stored(), timeout=30, what="the lone event stored")
    # Not held for other messages that never come: stored soon after the interval.
    assert time.monotonic() - sent < 15
    assert_no_errors(worker)


def test_bad_events_among_good_single_messages_are_each_their_own_dead_letter(
    stack: Stack, worker_process: Callable[..., WorkerProcess]
) -> None:
    # 19: the message with two arguments is refused alone; the other 19 are taken together.
    env = {**stack.env, "RECALL_INGEST_FLUSH_COUNT": "19", "RECALL_INGEST_FLUSH_MS": "600000"}
    for n in range(20):
        if n == 4:
            stack.send(event(n, sip_code=99), task_id=f"task-{n}")
        elif n == 9:
            stack.send(event(n, plan_id="nope"), task_id=f"task-{n}")
        elif n == 13:
            stack.send(event(n), "and one too many", task_id=f"task-{n}")
        elif n == 17:
            stack.send(f'{{"event_id": "b-{n}", "plan_id": "open", ', task_id=f"task-{n}")
        else:
            stack.send(event(n), task_id=f"task-{n}")
    worker = worker_process(env)
    wait_until(lambda: len(stack.dead_letters()) == 4, 60, "4 dead letters", (worker,))
    wait_until(lambda: len(stack.stored()) == 16, 60, "16 events stored", (worker,))

    good = {f"b-{n}" for n in range(20)} - {"b-4", "b-9", "b-13", "b-17"}
    stored = stack.stored()
    assert set(stored) == good
    # The good ones beside the bad were taken together (the ill-formed message went alone).
    assert len(set(stored.values())) == 1
    letters = stack.dead_letters()
    by_id = {event_id: (reason, detail) for event_id, reason, detail in letters if event_id}
    assert set(by_id) == {"b-4", "b-9"}
    assert by_id["b-4"][0] == "invalid_event"
    assert by_id["b-4"][1].startswith("sip_code: ")
    assert by_id["b-9"] == ("unknown_plan", "plan_id: plan 'nope' is not in the rules")
    # Without an id: the message with two arguments, and JSON text that does not parse.
    anonymous = sorted(detail for event_id, reason, detail in letters if event_id is None)
    assert anonymous[0] == "arguments: expected one event, got 2 positional and 0 keyword arguments"
    assert anonymous[1].startswith("event: ")
    assert {reason for event_id, reason, _ in letters if event_id is None} == {"invalid_event"}
    assert_no_errors(worker)
