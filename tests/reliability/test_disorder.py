"""Redelivery and disorder: shuffled, redelivered events on two workers end as one in-order run.

10,000 generated events (``worker.sample``), 20% of them sent twice, all shuffled, published as
single messages and small batches and consumed by two real worker processes at once on real
Redis and PostgreSQL. The final phones, recalls, attempts and every stored decision must equal
an in-order replay of the same events (``worker.replay.Simulation``).

The events lie in the future, so no recall falls due during the test: the live workers fire
nothing, and the replay's clock is stopped short of every due time (it would otherwise fire
recalls between one call and the next, which the workers, on the real clock, cannot yet do).
For the same reason the real clock and the replay's event-time clock decide alike: no recall is
"already due, so due now" for either. The workers refuse events further ahead of their clock
than RECALL_CLOCK_SKEW_S (hardening #2), so they run with a skew reaching past these.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.integration.test_integration import assert_no_errors
from tests.reliability.fast_harness import (
    fresh_database,
    publish_mixed,
    wait_for_decisions,
    worker_env,
)
from tests.servers import PostgresServer
from tests.workers import WorkerProcess
from worker.client import RecallClient
from worker.domain.events import parse_event
from worker.domain.phone import decision_json
from worker.domain.rules import Rules, load_rules
from worker.replay.sample import generate
from worker.replay.simulation import Simulation
from worker.store.models import Attempt, Phone, ProcessedEvent, Recall

EVENTS = 10_000
DUPLICATE_SHARE = 0.20
SEED = 20261127


class StoppedClock(Simulation):
    """An in-order replay whose clock never reaches a due time: no recall fires."""

    def __init__(self, rules: Rules) -> None:
        # The timeline fires a recall due before an event only up to the simulation's end.
        super().__init__(rules, until=datetime.min.replace(tzinfo=UTC))

    def advance(self, until: datetime) -> None:
        return None


def in_order(events: list[dict[str, Any]]) -> tuple[Simulation, dict[str, dict[str, Any]]]:
    """Replay ``events`` in event-time order; the decisions (JSON) by event id."""
    simulation = StoppedClock(load_rules())
    ordered = sorted(
        (parse_event(raw) for raw in events), key=lambda e: (e.occurred_at, e.event_id)
    )
    return simulation, {e.event_id: simulation.take(e).to_json() for e in ordered}


def expected_recalls(
    simulation: Simulation, decisions: dict[str, dict[str, Any]]
) -> dict[str, tuple[Any, ...]]:
    """The recall rows an in-order run writes: one per recall decision, the last one pending."""
    generation: Counter[str] = Counter()
    recalls = {}
    for event_id, decision in sorted(decisions.items(), key=lambda item: item[1]["_order"]):
        if decision["action"] not in ("recall", "suppress"):
            continue
        phone_id = decision["phone_id"]
        generation[phone_id] += 1
        if decision["action"] == "recall":
            current = simulation.phones[phone_id].pending_recall_id == event_id
            recalls[event_id] = (
                phone_id, generation[phone_id], decision["due_at"], decision["source"],
                decision["rule"], decision["reason"], "pending" if current else "superseded",
            )  # fmt: skip
    return recalls


def stored(engine: Engine) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Counter[str]]:
    """Decisions by event, recalls and phones as stored, and attempts per phone."""
    with Session(engine) as session:
        query = select(ProcessedEvent.event_id, ProcessedEvent.decision)
        decisions = dict(session.execute(query).all())
        recalls = {
            r.recall_id: (
                r.phone_id, r.generation, r.due_at.isoformat(), r.source, r.rule, r.reason,
                r.state,
            )
            for r in session.scalars(select(Recall))
        }  # fmt: skip
        phones = {p.phone_id: p for p in session.scalars(select(Phone))}
        session.expunge_all()
        attempts = Counter(
            dict(
                session.execute(
                    select(Attempt.phone_id, func.count()).group_by(Attempt.phone_id)
                ).all()
            )
        )
    return decisions, recalls, phones, attempts


def phone_view(row: Phone) -> dict[str, Any]:
    return {
        "lead_id": row.lead_id,
        "plan_id": row.plan_id,
        "eligible": row.eligible,
        "eligible_at": row.eligible_at,
        "generation": row.generation,
        "pending_recall_id": row.pending_recall_id,
        "last_result_at": row.last_result_at,
        "last_event_id": row.last_event_id,
        "last_decision": row.last_decision,
        "system_recalls": row.system_recalls,
    }


def test_shuffled_and_redelivered_events_on_two_workers_end_as_in_order(
    postgres: PostgresServer,
    broker_url: str,
    tmp_path: Path,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # A fixed start, in the future whenever this runs: the same events on every run.
    start = datetime(2099, 1, 5, tzinfo=UTC)
    events = generate(seed=SEED, leads=2400, start=start, days=10)[:EVENTS]
    assert len(events) == EVENTS
    rng = random.Random(SEED)
    sent = events + rng.sample(events, int(EVENTS * DUPLICATE_SHARE))
    rng.shuffle(sent)
    # How disordered the sending is: events sent after a newer one of the same phone.
    newest: dict[object, str] = {}
    late = 0
    for raw in sent:
        phone, moment = raw["phone_id"], str(raw["occurred_at"])
        late += moment < newest.get(phone, "")
        newest[phone] = max(moment, newest.get(phone, ""))

    simulation, want = in_order(events)
    for order, decision in enumerate(want.values()):
        decision["_order"] = order
    want_recalls = expected_recalls(simulation, want)
    for decision in want.values():
        del decision["_order"]

    with fresh_database(postgres) as (url, engine):
        # The skew reaches past the events' days (else dead letters, by design).
        skew = {
            "RECALL_CLOCK_SKEW_S": str(
                int((start - datetime.now(UTC)).total_seconds()) + 30 * 86400
            )
        }
        workers = tuple(
            worker_process({**worker_env(broker_url, url, tmp_path / name), **skew}, name=name)
            for name in ("a", "b")
        )
        client = RecallClient(broker_url)
        published = time.monotonic()
        # About 40% single messages, the rest in batches of 2-40.
        messages = publish_mixed(client, sent, rng, single_share=0.4, largest_batch=40)
        client.app.close()
        elapsed = wait_for_decisions(len(sent), *workers)
        took = time.monotonic() - published
        decisions, recalls, phones, attempts = stored(engine)
        assert_no_errors(*workers)
        assert all(w.process is not None and w.process.poll() is None for w in workers)

    wall = datetime.now(UTC)
    assert all(datetime.fromisoformat(r[2]) > wall for r in want_recalls.values()), (
        "a recall fell due during the test: the comparison would not hold"
    )
    assert decisions == want, [k for k in want if decisions.get(k) != want[k]][:10]
    assert recalls == want_recalls, [k for k in want_recalls if recalls.get(k) != want_recalls[k]]
    assert set(phones) == set(simulation.phones)
    per_phone = Counter(str(raw["phone_id"]) for raw in events)
    assert attempts == per_phone
    differing = []
    for phone_id, state in simulation.phones.items():
        expected = {
            **{key: getattr(state, key) for key in phone_view(phones[phone_id])},
            "last_decision": decision_json(state.last_decision),
        }
        if phone_view(phones[phone_id]) != expected:
            differing.append(phone_id)
        pending = state.pending
        if pending is not None:
            row = want_recalls[str(state.pending_recall_id)]
            assert datetime.fromisoformat(row[2]) == pending.due_at
            assert (row[3], row[4]) == (pending.source, pending.rule)
    assert differing == [], differing[:10]

    actions = Counter(d["action"] for d in decisions.values())
    by_worker = [sum(1 for line in w.text().splitlines() if "] event " in line) for w in workers]
    assert all(by_worker), f"a worker took no event: {by_worker}"
    print(
        f"\ndisorder: {EVENTS} events, {len(sent) - EVENTS} redelivered, {len(sent)} sent in "
        f"{messages} messages, {late} sent after a newer call of their phone; "
        f"{len(phones)} phones; decisions taken by the two workers: {by_worker[0]} + "
        f"{by_worker[1]}; processed in {took:.1f} s ({elapsed:.1f} s after publishing); "
        f"stored actions {dict(sorted(actions.items()))}; recalls {len(recalls)} "
        f"({Counter(r[6] for r in recalls.values())['pending']} pending); differing from "
        f"in-order: decisions {sum(decisions.get(k) != v for k, v in want.items())}, phones "
        f"{len(differing)}, recalls {sum(recalls.get(k) != v for k, v in want_recalls.items())}"
    )
