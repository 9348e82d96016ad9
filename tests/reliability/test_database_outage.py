"""Database outage: PostgreSQL stopped for 20 s under steady ingest, then started again.

Load: single events 4 times a second and a list of 25 events every 2 s, for BEFORE_S seconds
before the outage, through it, and AFTER_S seconds after it; plus 20 recalls falling due during
the outage. The PostgreSQL server is the test's own (never CI's shared cluster); it is stopped as
``pg_ctl stop -m fast`` does, cutting every connection, and started again on the same data.

Must hold: tasks retry with exponential backoff (each wait within its bound, no retry storm);
nothing is lost once the database is back (every event decided exactly once, no dead letter,
every recall due during the outage fires once); the worker never exits (its main process and
its pool processes stay the same all along).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import RETRY_BACKOFF_MAX_S
from tests.integration.test_integration import (
    RULES,
    assert_no_errors,
    busy_due_in,
    event,
    utcnow,
    wait_until,
)
from tests.reliability.conftest import Figures, Stack
from tests.servers import PostgresServer
from tests.workers import WorkerProcess
from worker.client import RecallClient
from worker.store.models import Attempt, DeadLetter, ProcessedEvent, Recall

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

BEFORE_S = 15
OUTAGE_S = 20
AFTER_S = 15
TICK_S = 0.25
BATCH_EVERY = 8  # ticks: a list of 25 events every 2 s
BATCH = 25
#: Recalls falling due during the outage, at 5 s to 15 s into it.
DUE_DURING = 20
#: More retries than this for one task during the outage would be a retry storm.
STORM = 20
RETRY_LINE = re.compile(r"Task (recall\.[a-z_]+)\[([0-9a-f-]+)\] retry: Retry in (\d+)s")


class Publisher(threading.Thread):
    """Publishes the steady stream until told to stop; keeps what it sent."""

    def __init__(self, broker: str) -> None:
        super().__init__(daemon=True)
        self.client = RecallClient(broker)
        self.sent: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            tick = 0
            while not self.halt.is_set():
                now = utcnow()
                if tick % BATCH_EVERY == 0:
                    batch = [
                        event(f"db-b{tick}-{n}", f"P-b{n}", now, sip_code=480) for n in range(BATCH)
                    ]
                    self.client.publish_many(batch, batch=BATCH)
                    self.sent += [item["event_id"] for item in batch]
                single = event(f"db-s{tick}", f"P-s{tick % 40}", now)
                self.client.publish(single)
                self.sent.append(single["event_id"])
                tick += 1
                self.halt.wait(TICK_S)
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.client.app.close()


class Watch(threading.Thread):
    """Polls the worker's main process and its pool processes every 0.1 s."""

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__(daemon=True)
        assert worker.process is not None
        self.process = worker.process
        self.started = self.children_now()
        self.children: set[int] = set(self.started)
        self.exited_at: float | None = None
        self.halt = threading.Event()

    def children_now(self) -> set[int]:
        """The pool processes and the dispatcher (beat) process."""
        pid = self.process.pid
        try:
            return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
        except OSError:
            return set()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.process.poll() is not None:
                self.exited_at = time.monotonic()
                return
            self.children |= self.children_now()
            self.halt.wait(0.1)


@pytest.mark.timeout(900)
def test_database_outage(
    own_postgres: PostgresServer,
    broker_url: str,
    stack: Callable[..., Stack],
    figures: Figures,
) -> None:
    started = stack(broker_url, own_postgres, RULES)
    worker, db = started.worker, started.db
    watch = Watch(worker)
    watch.start()
    client = RecallClient(broker_url)
    due_ids = [f"db-due-{n}" for n in range(DUE_DURING)]
    for n, event_id in enumerate(due_ids):
        due_in = BEFORE_S + 5 + 10 * n / DUE_DURING
        client.publish(event(event_id, f"P-due-{n}", busy_due_in(due_in)))
    client.app.close()
    publisher = Publisher(broker_url)
    publisher.start()

    time.sleep(BEFORE_S)
    taken_before = db.count(ProcessedEvent)
    own_postgres.halt()
    down_at = time.monotonic()
    time.sleep(OUTAGE_S)
    own_postgres.start()
    up_at = time.monotonic()
    figures("seconds PostgreSQL was down", f"{up_at - down_at:.1f}")
    figures("events taken before the outage", taken_before)
    time.sleep(AFTER_S)
    publisher.halt.set()
    publisher.join(timeout=30)
    assert publisher.error is None, publisher.error
    sent = publisher.sent + due_ids
    figures("events published (single and in lists of 25)", len(sent))

    wait_until(
        lambda: db.count(ProcessedEvent) >= len(sent),
        timeout=180,
        what="every event to be decided after the outage",
        workers=(worker,),
    )
    back_at = time.monotonic()
    wait_until(
        lambda: (
            db.count(Recall, Recall.recall_id.in_(due_ids), Recall.state == "fired") == DUE_DURING
        ),
        timeout=120,
        what="the recalls due during the outage to fire",
        workers=(worker,),
    )
    figures("seconds from PostgreSQL back to the last event decided", f"{back_at - up_at:.1f}")

    rows = db.events()
    missing = set(sent) - set(rows)
    figures("events lost", len(missing))
    figures("events decided more than once", db.count(Attempt) - len(rows))
    dead = db.count(DeadLetter)
    figures("dead letters", dead)
    assert not missing, sorted(missing)[:20]
    assert set(rows) == set(sent)
    assert db.count(Attempt) == len(sent)
    assert dead == 0

    text = worker.text()
    fired = Counter(re.findall(r"recall (db-due-\d+) fired: phone ", text))
    late = [r.fired_at - r.due_at for r in db.recalls(*due_ids).values() if r.fired_at]
    figures("recalls due during the outage fired (each once)", len(fired))
    figures("their lateness, max", f"{max(late).total_seconds():.3f} s")
    assert sorted(fired) == sorted(due_ids)
    assert set(fired.values()) == {1}

    retries: dict[str, list[int]] = defaultdict(list)
    names: Counter[str] = Counter()
    for name, task_id, wait in RETRY_LINE.findall(text):
        retries[task_id].append(int(wait))
        names[name] += 1
    figures("task retries logged", sum(len(waits) for waits in retries.values()))
    figures("tasks retried", len(retries))
    figures("retries by task", dict(names))
    figures("most retries of one task", max(len(waits) for waits in retries.values()))
    figures("longest wait before a retry", f"{max(max(w) for w in retries.values())} s")
    assert names["recall.process_call_result"] > 0
    # Exponential with full jitter: the n-th retry waits up to min(2**n, 30) s. The log does
    # not give n: a retry that waits 0 s runs at once in the other pool process, which may log
    # its own retry before the first process logs this one. So the bound is checked on the
    # waits overall: never over 30 s, and reaching well past what a fixed short delay gives.
    waits = [wait for task_waits in retries.values() for wait in task_waits]
    assert max(waits) <= RETRY_BACKOFF_MAX_S
    assert max(waits) >= 8
    # Backoff, not a storm: retrying at once, a task would fail hundreds of times in 20 s (a
    # refused connection takes milliseconds); waits of up to 1, 2, 4, 8, 16, 30 s allow a few.
    assert max(len(waits) for waits in retries.values()) <= STORM

    watch.halt.set()
    watch.join()
    figures("worker main process exited", watch.exited_at is not None)
    replaced = len(watch.children - watch.started)
    figures("child processes (pool, dispatcher) at the start", len(watch.started))
    figures("child processes replaced during the run", replaced)
    assert watch.exited_at is None
    assert worker.process is not None
    assert worker.process.poll() is None
    assert watch.started
    assert replaced == 0, (watch.started, watch.children)
    assert_no_errors(worker)  # retries are logged as such, not as errors
