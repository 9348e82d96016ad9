"""Worker crash: ``kill -9`` a worker (its whole process group) mid-stream, then start it again.

Load: 20,000 events on 5,000 phones (4 each, on the shipped plans with their calling hours and
attempt caps), published as 4,000 single-event messages (``recall.process_call_result``) and 32
lists of 500 (``recall.process_call_results``), interleaved. Each phone's 4 events are 5,000
events apart in the queue, as a dialer's would be. Two kills: the first while single events are
being taken, the second (of the restarted worker) while lists are.

Must hold: every event decided exactly once (one ``events`` row each, none missing) and every
recall right: each phone ends with the pending recall a dry in-order replay of the same events
(``worker.replay.Simulation``, the engine of ``recall replay --dry-run``) gives it.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import func, select

from tests.integration.test_integration import assert_no_errors, utcnow, wait_until
from tests.reliability.conftest import Figures, Stack
from tests.servers import PostgresServer
from tests.workers import WorkerProcess
from worker.client import RecallClient
from worker.domain.events import parse_event
from worker.domain.phone import decision_json
from worker.domain.rules import load_rules
from worker.replay.simulation import Simulation
from worker.store.models import Attempt, Phone, ProcessedEvent, Recall

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

PHONES = 5_000
PER_PHONE = 4
BATCH = 500
#: Of every 5 chunks of 500 events, one goes as single-event messages: 4,000 singles in all.
SINGLE_EVERY = 5
#: Kill when this many events are stored, well into the stream with much still queued. In
#: publishing order the 16th chunk of 500 (events 7,500-8,000) is single events, the 27th on
#: (13,000-15,000) lists: the kills land in those, give or take what is running at the time.
KILLS = (7_750, 13_000)
#: The broker gives back the messages a dead worker held after this (RECALL_VISIBILITY_TIMEOUT_S).
VISIBILITY_TIMEOUT_S = 60
PLANS = ("default", "us_tcpa", "eu_sales")
ZONES = (None, "Europe/London", "America/Chicago", "Asia/Kolkata")
#: (SIP code, outcome): busy, no answer, unavailable, server errors, final numbers, machine,
#: user recalls and finals, an unknown outcome, a success.
RESULTS: tuple[tuple[int, str | None], ...] = (
    (486, None), (480, None), (503, None), (404, None), (408, None), (487, None), (603, None),
    (486, "SYSBUSY"), (480, "SYSNOANS"), (200, "SYSANSMACH"), (200, "CALLBACK"), (200, "SALE"),
    (200, "NOTNOW"), (486, "WHATEVER"), (200, None), (500, "SYSDROP"),
)  # fmt: skip


def generate(now_: Any, rng: random.Random) -> list[list[dict[str, Any]]]:
    """Events in rounds: round k holds the k-th event of every phone.

    Every event happened in the last two minutes, so the earliest recall (15 minutes) is due
    long after the scenario ends: nothing fires, and the worker's clock and the replay's
    simulated one give the same decisions.
    """
    base = now_ - timedelta(seconds=120)
    rounds: list[list[dict[str, Any]]] = [[] for _ in range(PER_PHONE)]
    for p in range(PHONES):
        plan = PLANS[p % len(PLANS)]
        zone = ZONES[rng.randrange(len(ZONES))]
        for k in range(PER_PHONE):
            code, outcome = RESULTS[rng.randrange(len(RESULTS))]
            raw: dict[str, Any] = {
                "event_id": f"crash-{p}-{k}",
                "plan_id": plan,
                "lead_id": f"L{p}",
                "phone_id": f"P{p}",
                "sip_code": code,
                "occurred_at": (base + timedelta(seconds=25 * k, milliseconds=p)).isoformat(),
            }
            if outcome:
                raw["outcome_code"] = outcome
            if zone:
                raw["timezone"] = zone
            if rng.random() < 0.1:
                raw["retry_after_s"] = rng.choice((60, 3600, 7200))
            rounds[k].append(raw)
    return rounds


def publish(client: RecallClient, rounds: list[list[dict[str, Any]]]) -> tuple[int, int]:
    """Send chunk after chunk: one in SINGLE_EVERY as single events, the others as lists."""
    singles = lists = 0
    chunk_number = 0
    for events in rounds:
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            if chunk_number % SINGLE_EVERY == 0:
                for item in chunk:
                    client.publish(item)
                singles += len(chunk)
            else:
                client.publish_many(chunk, batch=BATCH)
                lists += 1
            chunk_number += 1
    return singles, lists


def replay_in_order(events: list[dict[str, Any]]) -> tuple[Simulation, dict[str, dict[str, Any]]]:
    """A dry replay of the events in event-time order (ties in publishing order): the phones it
    ends with, and each event's decision in its JSON form."""
    simulation = Simulation(load_rules())
    parsed = sorted((parse_event(raw) for raw in events), key=lambda e: e.occurred_at)
    return simulation, {event.event_id: simulation.take(event).to_json() for event in parsed}


@pytest.mark.timeout(1200)
def test_worker_crash(
    postgres: PostgresServer,
    broker_url: str,
    stack: Callable[..., Stack],
    worker_process: Callable[..., WorkerProcess],
    figures: Figures,
) -> None:
    crashed = stack(broker_url, postgres, RECALL_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S))
    first, db = crashed.worker, crashed.db
    client = RecallClient(broker_url)
    rounds = generate(utcnow(), random.Random(20_000))
    events = [item for events in rounds for item in events]
    ids = {item["event_id"] for item in events}
    singles, lists = publish(client, rounds)
    figures("events published", len(events))
    figures("single-event messages", singles)
    figures("list messages (500 events each)", lists)

    broker = redis.Redis.from_url(broker_url)
    workers = [first]
    held_before: set[bytes] = set()
    for number, kill_at in enumerate(KILLS, start=1):
        wait_until(
            lambda kill_at=kill_at: db.count(ProcessedEvent) >= kill_at,
            timeout=600,
            what=f"{kill_at} events stored",
            workers=tuple(workers),
        )
        workers[-1].kill()
        killed_at = utcnow()
        at_kill = db.count(ProcessedEvent)
        # kombu's record of the messages taken and not acknowledged: those of this worker, and
        # those of the worker killed before if they have not come back yet.
        held = set(broker.hkeys("unacked")) - held_before
        held_before |= held
        tasks = Counter(
            orjson.loads(raw)[0]["headers"]["task"] for raw in broker.hmget("unacked", *held)
        )
        figures(f"kill {number}: events stored when kill -9 hit the worker", at_kill)
        figures(f"kill {number}: messages the killed worker held unacknowledged", dict(tasks))
        assert held, "the kill landed on an idle worker"
        assert at_kill < len(events), "test too fast: the stream was over before the kill"
        workers.append(worker_process(crashed.env, name=f"restarted-{number}"))
    broker.close()
    wait_until(
        lambda: db.count(ProcessedEvent) >= len(events),
        timeout=600,
        what="every event to be decided after the restarts",
        workers=tuple(workers),
    )
    done_at = utcnow()
    figures(
        "seconds from the last kill to the last event stored",
        f"{(done_at - killed_at).total_seconds():.1f}",
    )

    # Exactly once: one decision and one attempt per event, none missing, none extra.
    with db.session() as session:
        counted = dict(
            session.execute(
                select(ProcessedEvent.event_id, func.count()).group_by(ProcessedEvent.event_id)
            ).all()
        )
        attempts = dict(
            session.execute(select(Attempt.event_id, func.count()).group_by(Attempt.event_id)).all()
        )
    missing = ids - set(counted)
    doubled = [event_id for event_id, n in counted.items() if n != 1]
    figures("events missing", len(missing))
    figures("events decided more than once", len(doubled))
    assert not missing, sorted(missing)[:20]
    assert not doubled
    assert set(counted) == ids
    assert set(attempts) == ids
    assert set(attempts.values()) == {1}
    # The workers log each decision after its transaction commits: no event may have two.
    logs = "".join(worker.text() for worker in workers)
    logged = Counter(re.findall(r"event (crash-\d+-\d) phone P\d+: (?!duplicate)", logs))
    redelivered = re.findall(r"event crash-\d+-\d phone P\d+: duplicate", logs)
    figures("events with more than one decision logged", sum(n > 1 for n in logged.values()))
    figures("redelivered events found already decided (duplicate)", len(redelivered))
    assert set(logged.values()) == {1}

    # Every recall right: each phone's final state is the in-order replay's.
    simulation, replayed = replay_in_order(events)
    rows = db.events()
    stale = [row for row in rows.values() if row.action == "stale"]
    stale_phones = {row.phone_id for row in stale}
    figures("events taken out of order after the restart (stale)", len(stale))
    with db.session() as session:
        phones = {row.phone_id: row for row in session.scalars(select(Phone))}
        waiting = {
            row.phone_id: row
            for row in session.scalars(select(Recall).where(Recall.state == "pending"))
        }
        fired = session.scalar(
            select(func.count()).select_from(Recall).where(Recall.state == "fired")
        )
    assert fired == 0, "test too slow: recalls started to fall due"
    assert set(phones) == set(simulation.phones)
    wrong: list[str] = []
    recalls_checked = 0
    for phone_id, expected in simulation.phones.items():
        row = phones[phone_id]
        got_recall = waiting.get(phone_id)
        want = (expected.pending_recall_id, expected.pending.due_at if expected.pending else None,
                expected.pending.source if expected.pending else None,
                expected.pending.rule if expected.pending else None)  # fmt: skip
        got = (row.pending_recall_id, got_recall.due_at if got_recall else None,
               got_recall.source if got_recall else None,
               got_recall.rule if got_recall else None)  # fmt: skip
        same_phone = (
            row.last_event_id == expected.last_event_id
            and row.last_result_at == expected.last_result_at
            and row.eligible is expected.eligible is False
        )
        if want != got or not same_phone:
            wrong.append(f"{phone_id}: want {want} got {got}")
        recalls_checked += want[0] is not None
        if phone_id not in stale_phones and row.last_decision != decision_json(
            expected.last_decision
        ):
            wrong.append(f"{phone_id}: last decision {row.last_decision}")
    # Phones whose events all came in order: every decision is the replay's, event by event.
    for row in rows.values():
        if row.phone_id in stale_phones:
            continue
        if row.decision != replayed[row.event_id]:
            wrong.append(f"{row.event_id}: decision {row.decision} != {replayed[row.event_id]}")
    figures("pending recalls compared with the dry in-order replay", recalls_checked)
    figures("phones or decisions differing from the replay", len(wrong))
    assert not wrong, "\n".join(wrong[:20])
    assert len(waiting) == recalls_checked
    assert_no_errors(workers[-1])
