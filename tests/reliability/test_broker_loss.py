"""Broker loss: Redis dies with 10,000 recalls pending and comes back empty (no persistence).

Load: 10,000 phones, each with one pending recall (SIP 486 on an always-open UTC plan, so each
falls due exactly 15 minutes after its call). The worker runs on, with its dispatcher, while its
Redis is stopped for FAULT_S seconds and started again empty. The recalls fall due in three
groups: during the fault, in the dispatch horizon just after it (their firings were handed to the
broker before the fault, and are lost with it), and later (handed over after it).

Must hold: every recall fires exactly once after Redis is back (one "fired" line in the worker's
log, one ``fired`` row, the phone eligible), none before its due time; the figures are the
lateness (``fired_at - due_at``) of each group, max and median.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.test_integration import (
    BUSY,
    EARLY_TOLERANCE,
    REDISPATCH_AFTER,
    RULES,
    busy_due_in,
    event,
    notifications,
    utcnow,
    wait_until,
)
from tests.reliability.conftest import Figures, Stack
from tests.reliability.support import errors_besides_broker_away, seconds
from tests.servers import PostgresServer, RedisServer
from worker.client import RecallClient
from worker.store.models import Phone, ProcessedEvent, Recall

pytestmark = pytest.mark.integration

RECALLS = 10_000
#: Seconds from the first event published to the fault: time to take 10,000 events.
LEAD_S = 60
#: How long Redis stays down.
FAULT_S = 10
#: (group, count, first due, last due), due times in seconds after the fault starts.
GROUPS = (
    ("due during the fault", 4_000, 1.0, FAULT_S - 0.5),
    ("due in the 30 s after it, handed over before it", 3_000, FAULT_S + 1.0, 30.0),
    ("due later, handed over after it", 3_000, 45.0, 90.0),
)
#: A recall due during or right after the fault fires by then: the broker back, the next
#: dispatcher tick, the lost firing's redispatch delay, and slack for a loaded host.
LATENESS_LIMIT = timedelta(seconds=FAULT_S) + REDISPATCH_AFTER + timedelta(seconds=20)
#: A recall handed over after the fault fires on time, as without a fault.
ON_TIME = timedelta(seconds=5)


def schedule(fault_at: datetime) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The events, and each recall's group: due times spread evenly over each group's span."""
    events: list[dict[str, Any]] = []
    group_of: dict[str, str] = {}
    for name, count, first, last in GROUPS:
        for n in range(count):
            due = fault_at + timedelta(seconds=first + (last - first) * n / count)
            event_id = f"bl-{len(events)}"
            events.append(event(event_id, f"P{len(events)}", due - BUSY))
            group_of[event_id] = name
    return events, group_of


@pytest.mark.reliability
@pytest.mark.timeout(900)
def test_broker_loss(
    postgres: PostgresServer,
    own_redis: RedisServer,
    stack: Callable[..., Stack],
    figures: Figures,
) -> None:
    started = stack(own_redis.url, postgres, RULES)
    worker, db = started.worker, started.db
    client = RecallClient(own_redis.url)
    fault_at = utcnow() + timedelta(seconds=LEAD_S)
    events, group_of = schedule(fault_at)
    client.publish_many(events, batch=500)
    client.app.close()
    wait_until(
        lambda: db.count(ProcessedEvent) == RECALLS,
        timeout=LEAD_S - 5,
        what="every event taken before the fault",
        workers=(worker,),
    )
    pending = db.count(Recall, Recall.state == "pending")
    figures("recalls pending when Redis was stopped", pending)
    assert pending == RECALLS

    time.sleep(max(0.0, (fault_at - utcnow()).total_seconds()))
    stopped_at = utcnow()
    own_redis.stop()
    handed_over = db.count(Recall, Recall.dispatched_at.is_not(None), Recall.state == "pending")
    figures("firings waiting in the broker (handed over, pending) when it died", handed_over)
    time.sleep(FAULT_S)
    own_redis.start()  # empty: no data file, no append-only file
    back_at = utcnow()
    figures("seconds Redis was down", f"{(back_at - stopped_at).total_seconds():.1f}")
    fired_during_fault = db.count(Recall, Recall.fired_at >= stopped_at, Recall.fired_at < back_at)
    figures("recalls fired while Redis was down", fired_during_fault)

    last_due = fault_at + timedelta(seconds=GROUPS[-1][3])
    wait_until(
        lambda: db.count(Recall, Recall.state == "fired") == RECALLS,
        timeout=(last_due - utcnow()).total_seconds() + 120,
        what="every recall to fire",
        workers=(worker,),
    )
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker exited"
    with db.session() as session:
        recalls = list(session.scalars(select(Recall)))
        phones = {row.phone_id: row for row in session.scalars(select(Phone))}
    fired_lines = Counter(re.findall(r"recall (bl-\d+) fired: phone ", worker.text()))
    twice = [rid for rid, n in fired_lines.items() if n > 1]
    never = [r.recall_id for r in recalls if fired_lines[r.recall_id] == 0]
    figures("recalls fired", len(fired_lines))
    figures("recalls fired more than once", len(twice))
    figures("recalls never fired", len(never))
    bodies = Counter(body["recall_id"] for body in notifications(own_redis.url))
    figures("dialer notifications on the new Redis", sum(bodies.values()))
    figures("recalls notified more than once", sum(n > 1 for n in bodies.values()))
    assert not twice, twice[:20]
    assert not never, never[:20]
    assert set(bodies) == {r.recall_id for r in recalls}

    lateness: dict[str, list[timedelta]] = {name: [] for name, *_ in GROUPS}
    for recall in recalls:
        assert recall.fired_at is not None
        assert recall.fired_at >= back_at, f"{recall.recall_id} fired before Redis came back"
        late = recall.fired_at - recall.due_at
        assert late >= -EARLY_TOLERANCE, f"{recall.recall_id} fired {late} early"
        lateness[group_of[recall.recall_id]].append(late)
        phone = phones[recall.phone_id]
        assert (phone.eligible, phone.eligible_at, phone.pending_recall_id) == (
            True,
            recall.fired_at,
            None,
        )
    for name, *_ in GROUPS:
        worst, median = seconds(lateness[name])
        figures(f"lateness, {name}: max", f"{worst:.3f} s")
        figures(f"lateness, {name}: median", f"{median:.3f} s")
    for late in lateness[GROUPS[0][0]] + lateness[GROUPS[1][0]]:
        assert late < LATENESS_LIMIT
    for late in lateness[GROUPS[2][0]]:
        assert late < ON_TIME
    away, other = errors_besides_broker_away(worker)
    figures("errors logged about the broker being away", away)
    figures("other errors logged", len(other))
    assert not other, other[:20]


def test_worker_outlives_a_broker_restart(
    postgres: PostgresServer,
    own_redis: RedisServer,
    stack: Callable[..., Stack],
) -> None:
    """Regression: with a firing held for its due time, losing Redis made the worker exit
    (worker/runtime/consumer.py). It must reconnect, fire the recall and take new events."""
    started = stack(own_redis.url, postgres, RULES)
    worker, db = started.worker, started.db
    client = RecallClient(own_redis.url)
    client.publish(event("blip-1", "P-blip-1", busy_due_in(10)))
    client.app.close()
    wait_until(
        lambda: (r := db.recalls("blip-1").get("blip-1")) is not None and r.dispatched_at,
        what="the firing to be held by the worker",
        workers=(worker,),
    )
    own_redis.stop()
    time.sleep(2)
    own_redis.start()
    fired = wait_until(
        lambda: (r := db.recalls("blip-1")["blip-1"]).state == "fired" and r,
        timeout=60,
        what="the recall to fire after the broker came back",
        workers=(worker,),
    )
    assert fired.fired_at is not None
    assert fired.fired_at - fired.due_at < REDISPATCH_AFTER + timedelta(seconds=10)
    client = RecallClient(own_redis.url)
    client.publish(event("blip-2", "P-blip-2", utcnow(), sip_code=404))
    client.app.close()
    wait_until(lambda: db.events("blip-2"), what="an event after the restart", workers=(worker,))
    assert worker.process is not None
    assert worker.process.poll() is None, worker.text()[-3000:]
    assert "Unrecoverable error" not in worker.text()
    assert errors_besides_broker_away(worker)[1] == []
