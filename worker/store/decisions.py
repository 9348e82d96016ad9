"""Ingestion's writes: a batch of events decided through the timeline and stored in one go.

Every function takes an open session (the caller owns the transaction) and works in bulk: a batch
of events costs a fixed handful of statements, not a few per event. Concurrency is handled by
locking rows (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) in id
order, always leads before phones before recalls, so two workers on the same lead serialise and
never deadlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from msgspec.structs import replace
from psycopg import sql
from sqlalchemy import (
    delete,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from worker.domain.engine import APPLYING_ACTIONS, Decision, PendingRecall
from worker.domain.events import CallResult, parse_event
from worker.domain.phone import PhoneState, attempt_lookback, decision_json
from worker.domain.rules import Rules
from worker.domain.timeline import Before, StoredEvent, Timeline
from worker.domain.zones import epoch_us
from worker.store.bulk import chunks, copying, dbapi, insert_rows, unnest, update_rows, where_in
from worker.store.models import (
    WAITING,
    Attempt,
    Phone,
    ProcessedEvent,
    Recall,
)

__all__ = ["Applied", "apply_events"]


# The columns of a phone made on its first event: the rest keep their defaults until it is written.
_NEW_PHONE_COLUMNS = (
    "phone_id", "lead_id", "plan_id", "eligible", "generation", "system_recalls", "updated_at"
)  # fmt: skip


def _insert_new_phones(
    session: Session, names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> set[str]:
    """Insert the phones of ``rows`` (the columns ``names``) that do not exist yet.

    Others are left as they are. Returns the phone ids inserted, where the backend can tell
    (PostgreSQL): phones new in this transaction, with no history to look up.
    """
    if session.get_bind().dialect.name != "postgresql":
        dicts = [dict(zip(names, row, strict=True)) for row in rows]
        for part in chunks(dicts):
            session.execute(sqlite.insert(Phone).on_conflict_do_nothing(), part)
        return set()
    source, values = unnest(Phone, names, rows)
    statement = sql.SQL(
        "INSERT INTO phones ({}) SELECT * FROM {} ORDER BY phone_id"
        " ON CONFLICT DO NOTHING RETURNING phone_id"
    ).format(sql.SQL(", ").join(map(sql.Identifier, names)), source)
    with dbapi(session).cursor() as cursor:
        cursor.execute(statement, values)
        return {phone_id for (phone_id,) in cursor.fetchall()}


_PHONE_COLUMNS = (
    "phone_id",
    "lead_id",
    "plan_id",
    "eligible",
    "eligible_at",
    "eligible_reason",
    "eligible_agent",
    "generation",
    "pending_recall_id",
    "last_result_at",
    "last_event_id",
    "last_decision",
    "system_recalls",
)


def lead_key(lead_id: str) -> int:
    """The advisory-lock key of a lead: a stable signed 64-bit hash of its id."""
    digest = hashlib.blake2b(lead_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_leads(session: Session, lead_ids: Sequence[str]) -> None:
    """Take each lead's lock for this transaction: the events of one lead, one batch at a time.

    On PostgreSQL a transaction-level advisory lock per lead (``lead_key``), taken in key order
    and always before the phones' row locks, so two batches never deadlock; it ends with the
    transaction. A row lock on a table of leads did the same at a sixth of the ingestion rate
    (make bench-ingest). SQLite has one writer at a time already (``BEGIN IMMEDIATE``).
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({lead_key(lead_id) for lead_id in lead_ids})
    with dbapi(session).cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) AS k ORDER BY k", [keys]
        )


def _load_phones(
    session: Session,
    events: Sequence[CallResult],
    rules: Rules,
    now: datetime,
    *,
    optimistic: bool = False,
) -> tuple[dict[str, PhoneState], set[str]]:
    """Lock the phones of ``events`` and load their state in bulk; return it and the new ones.

    New phones are created here (locked, as rows of this transaction), or, ``optimistic``, left
    to be inserted with their final state when the batch is written (see ``apply_events``).
    """
    _lock_leads(session, sorted({event.lead_id for event in events}))
    firsts: dict[str, CallResult] = {}
    for event in events:
        firsts.setdefault(event.phone_id, event)
    phone_ids = sorted(firsts)

    def new(pid: str) -> PhoneState:
        return PhoneState(pid, firsts[pid].lead_id, firsts[pid].plan_id)

    fresh: set[str] = set()
    if not optimistic:
        rows = [(pid, firsts[pid].lead_id, firsts[pid].plan_id, False, 0, 0, now)
                for pid in phone_ids]  # fmt: skip
        fresh = _insert_new_phones(session, _NEW_PHONE_COLUMNS, rows)
    # A phone inserted just now has no history (phones are never deleted): nothing to read.
    states = {pid: new(pid) for pid in fresh}
    phone_ids = [pid for pid in phone_ids if pid not in fresh]
    columns = [getattr(Phone, name) for name in _PHONE_COLUMNS]
    for among in where_in(session, Phone.phone_id, phone_ids):
        query = select(*columns).where(among).order_by(Phone.phone_id)
        for row in session.execute(query.with_for_update()).mappings():
            states[row["phone_id"]] = PhoneState(**row)
    missing = {pid for pid in phone_ids if pid not in states}
    states.update((pid, new(pid)) for pid in missing)
    phone_ids = [pid for pid in phone_ids if pid not in missing]
    lead_caps = any(plan.lead_max_attempts for plan in rules.plans.values())
    if lead_caps:
        # Caps counting every phone of a lead need the lead's other phones too: their state,
        # pending recall and attempts. The leads' locks cover them (every batch takes its
        # leads' locks first); they are written only where a cap moves their recall.
        leads = sorted({event.lead_id for event in events})
        for among in where_in(session, Phone.lead_id, leads):
            query = select(*columns).where(among).order_by(Phone.phone_id)
            for row in session.execute(query).mappings():
                if row["phone_id"] not in states:
                    states[row["phone_id"]] = PhoneState(**row)
                    phone_ids.append(row["phone_id"])

    pending_ids = [s.pending_recall_id for s in states.values() if s.pending_recall_id]
    for among in where_in(session, Recall.recall_id, pending_ids):
        query = select(
            Recall.phone_id, Recall.due_at, Recall.source, Recall.rule, Recall.reason, Recall.agent
        ).where(among, Recall.state.in_(WAITING))
        for phone_id, due_at, source, rule, reason, agent in session.execute(query):
            states[phone_id].pending = PendingRecall(due_at, source, rule, reason, agent)
    if lead_caps:
        # A lead cap re-checks a pending recall in its phone's zone: the deciding event's.
        deciding = {
            s.pending_recall_id: s for s in states.values() if s.pending and s.pending_recall_id
        }
        for among in where_in(session, ProcessedEvent.event_id, sorted(deciding)):
            query = select(ProcessedEvent.event_id, ProcessedEvent.payload).where(among)
            for event_id, payload in session.execute(query):
                zone = payload.get("timezone")
                deciding[event_id].zone = zone if isinstance(zone, str) else None

    lookback = attempt_lookback(rules)
    if lookback:
        since = min(event.occurred_at for event in events) - lookback
        for among in where_in(session, Attempt.phone_id, phone_ids):
            query = select(Attempt.phone_id, Attempt.occurred_at).where(
                among, Attempt.occurred_at >= since
            )
            for phone_id, occurred_at in session.execute(query):
                states[phone_id].attempts.append(epoch_us(occurred_at))

    event_ids = sorted({event.event_id for event in events})
    for among in where_in(session, ProcessedEvent.event_id, event_ids):
        query = select(ProcessedEvent.event_id, ProcessedEvent.occurred_at).where(among)
        known = dict(session.execute(query).all())
        for event in events:
            if event.event_id in known:
                states[event.phone_id].seen[event.event_id] = known[event.event_id]
    return states, missing


def _rewind_late_phones(
    session: Session, events: Sequence[CallResult], timeline: Timeline, now: datetime | None
) -> list[CallResult]:
    """Wind the phones that get a late call back to before it; return the events to re-decide.

    The timeline says which phones are late and what their state becomes (see
    ``Timeline.rewind``); this reads the stored history it needs and un-writes the phone's events
    from the earliest late call on (events, attempts and the recalls they made; the recall
    pending at that moment waits again). The phones are already locked, so this is part of the
    batch's transaction.

    A recall that fired cannot be un-fired (the phone was made eligible and the dialer told): a
    phone with a recall fired at or after the late call's time is not wound back, and the late
    call is taken as before, as ``stale``. Re-decided events use the rules and the clock of now,
    as the late call does.
    """
    starts = timeline.late_starts(events)
    redecided: list[CallResult] = []
    waiting_again: list[str] = []
    for phone_id in sorted(starts):
        start = starts[phone_id]
        fired_since = select(Recall.recall_id).where(
            Recall.phone_id == phone_id, Recall.state == "fired", Recall.due_at >= start
        )
        if session.scalar(fired_since.limit(1)) is not None:
            continue
        stored = ProcessedEvent
        later = [
            StoredEvent(parse_event(row.payload), row.action, row.decision)
            for row in session.execute(
                select(stored.action, stored.decision, stored.payload).where(
                    stored.phone_id == phone_id, stored.occurred_at >= start
                )
            )
        ]
        row = session.execute(
            select(stored.event_id, stored.occurred_at, stored.lead_id, stored.plan_id,
                   stored.decision)
            .where(stored.phone_id == phone_id, stored.occurred_at < start,
                   stored.action.in_(APPLYING_ACTIONS))
            .order_by(stored.occurred_at.desc(), stored.event_id.desc())
            .limit(1)
        ).first()  # fmt: skip
        before = None
        if row is not None:
            before = Before(row.event_id, row.occurred_at, row.lead_id, row.plan_id, row.decision)
            recall_id = row.event_id
            if row.decision.get("reason") == "callback_pending":
                # That result left the callback pending: its recall is the one to restore.
                recall_id = session.scalar(
                    select(stored.event_id)
                    .where(stored.phone_id == phone_id, stored.occurred_at <= row.occurred_at,
                           stored.event_id != row.event_id, stored.action == "recall")
                    .order_by(stored.occurred_at.desc(), stored.event_id.desc())
                    .limit(1)
                )  # fmt: skip
            recall = session.execute(
                select(Recall.state, Recall.due_at, Recall.source, Recall.rule, Recall.reason,
                       Recall.agent, Recall.fired_at)
                .where(Recall.recall_id == recall_id)
            ).first()  # fmt: skip
            if recall is not None:
                pending = PendingRecall(
                    recall.due_at, recall.source, recall.rule, recall.reason, recall.agent
                )
                before = replace(
                    before,
                    recall_id=recall_id,
                    recall_state=recall.state,
                    recall=pending,
                    fired_at=recall.fired_at,
                )
        again = timeline.rewind(phone_id, start, later, before)
        if again is None:
            continue
        if before is not None and before.recall_state == "superseded":
            waiting_again.append(before.recall_id or before.event_id)
        redecided.extend(again)

    undone = [event.event_id for event in redecided]
    for model, key in (
        (Attempt, Attempt.event_id),
        (ProcessedEvent, ProcessedEvent.event_id),
        (Recall, Recall.recall_id),
    ):
        for among in where_in(session, key, undone):
            session.execute(delete(model).where(among))
    for among in where_in(session, Recall.recall_id, waiting_again):
        session.execute(
            update(Recall)
            .where(among)
            .values(state="pending" if now is not None else "held", dispatched_at=None)
        )
    return redecided


_EVENT_COLUMNS = (
    "event_id", "phone_id", "plan_id", "lead_id", "occurred_at", "processed_at", "action",
    "reason", "payload", "decision",
)  # fmt: skip


_ATTEMPT_COLUMNS = ("event_id", "phone_id", "occurred_at")


# The recall columns written; apply_events builds its rows as dicts (a batch may change them
# later) and turns each into a tuple in this order.
_RECALL_COLUMNS = (
    "recall_id", "phone_id", "lead_id", "plan_id", "generation", "due_at", "source", "rule",
    "reason", "agent", "state", "created_at", "dispatched_at", "fired_at",
)  # fmt: skip


# The columns of a phone written: its state, and its lease, which every write ends (a call result
# for the phone, or a recall firing, the simulated clock's firing included: store.claims).
_PHONE_WRITE_COLUMNS = (*_PHONE_COLUMNS, "updated_at", "lease_id", "leased_until", "leased_to")


def _phone_row(state: PhoneState, updated_at: datetime) -> tuple[Any, ...]:
    """``state`` as the columns ``_PHONE_WRITE_COLUMNS`` of its row, with no lease."""
    return (
        state.phone_id, state.lead_id, state.plan_id, state.eligible, state.eligible_at,
        state.eligible_reason, state.eligible_agent, state.generation, state.pending_recall_id,
        state.last_result_at, state.last_event_id, decision_json(state.last_decision),
        state.system_recalls, updated_at, None, None, None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply_events`` did: one decision per event (in the order given), recalls fired."""

    decisions: list[Decision]
    fired: int = 0


class _PhonesAppeared(Exception):
    """A phone taken as new was created meanwhile by another transaction."""


def apply_events(
    session: Session,
    events: Sequence[CallResult],
    rules: Rules,
    now: datetime | None,
    *,
    until: datetime | None = None,
) -> Applied:
    """Decide ``events`` against their phones' history and write everything in this transaction.

    Events of one phone are taken in event-time order (ties in the given order). With ``now``
    None, the clock is simulated (replay): each event is decided as of its own time, and a
    pending recall that fell due before it fires first, at its due time, though never one due
    after ``until`` (the replay's end). Returns one decision per event, in the order given.
    """
    if not events:
        return Applied([])
    if copying(session, list({event.phone_id for event in events})):
        # Many phones on PostgreSQL: phones not found are taken as new and inserted once, with
        # their final state, instead of created first and updated at the end (half the phone
        # writes of a replay). Should another transaction create one meanwhile, the insert
        # finds it before anything else is written: the batch is decided again the safe way.
        try:
            with session.begin_nested():
                return _apply_events(session, events, rules, now, until, optimistic=True)
        except _PhonesAppeared:
            pass
    return _apply_events(session, events, rules, now, until)


def _apply_events(
    session: Session,
    events: Sequence[CallResult],
    rules: Rules,
    now: datetime | None,
    until: datetime | None = None,
    *,
    optimistic: bool = False,
) -> Applied:
    wall = now or max(event.occurred_at for event in events)
    states, new_phones = _load_phones(session, events, rules, wall, optimistic=optimistic)
    timeline = Timeline(rules, states, until=until)
    # Late calls: their phones' later stored events are decided again, in order, with them.
    # Put first, a stored event wins over a redelivered copy of it in this batch.
    redecided = _rewind_late_phones(session, events, timeline, now)
    events = [*redecided, *events]
    decisions: list[Decision | None] = [None] * len(events)
    event_rows: list[tuple[Any, ...]] = []
    recall_rows: dict[str, dict[str, Any]] = {}
    superseded: list[str] = []
    rescheduled: dict[str, datetime] = {}
    fired: dict[str, datetime] = {}
    changed: set[str] = {event.phone_id for event in redecided}

    for place, event, decision, transition, fired_now in timeline.take_all(events, now):
        decisions[place] = decision
        if fired_now is not None:
            fired[fired_now[0]] = fired_now[1]
            changed.add(event.phone_id)
        if decision.action == "duplicate":
            continue
        event_rows.append(
            (
                event.event_id, event.phone_id, event.plan_id, event.lead_id, event.occurred_at,
                wall, decision.action, decision.reason, event.to_json(), decision.to_json(),
            )
        )  # fmt: skip
        # A late call's own phone, or the lead's other phones pushed over a lead cap.
        moved = [(rid, due) for _, rid, due in transition.moved]
        if transition.rescheduled is not None:
            moved.append(transition.rescheduled)
        for recall_id, due_at in moved:
            if recall_id in recall_rows:
                recall_rows[recall_id]["due_at"] = due_at
            else:
                rescheduled[recall_id] = due_at
        if not decision.applies:
            continue
        changed.add(event.phone_id)
        if transition.superseded is not None:
            if transition.superseded in recall_rows:
                recall_rows[transition.superseded]["state"] = "superseded"
            else:
                superseded.append(transition.superseded)
        if transition.scheduled is not None:
            scheduled = transition.scheduled
            recall_rows[scheduled.recall_id] = {
                "recall_id": scheduled.recall_id,
                "phone_id": scheduled.phone_id,
                "lead_id": scheduled.lead_id,
                "plan_id": scheduled.plan_id,
                "generation": scheduled.generation,
                "due_at": scheduled.due_at,
                "source": scheduled.source,
                "rule": scheduled.rule,
                "reason": scheduled.reason,
                "agent": scheduled.agent,
                # A replay holds its recalls back from the live dispatcher until it is done.
                "state": "pending" if now is not None else "held",
                "created_at": wall,
                "dispatched_at": None,
                "fired_at": None,
            }

    if new_phones:
        rows = [_phone_row(states[pid], wall) for pid in sorted(new_phones)]
        if len(_insert_new_phones(session, _PHONE_WRITE_COLUMNS, rows)) < len(rows):
            raise _PhonesAppeared
    insert_rows(session, ProcessedEvent, _EVENT_COLUMNS, event_rows)
    insert_rows(session, Attempt, _ATTEMPT_COLUMNS, [(r[0], r[1], r[4]) for r in event_rows])
    for recall_id, fired_at in fired.items():
        if recall_id in recall_rows:
            recall_rows[recall_id].update(state="fired", fired_at=fired_at)
    recalls = [tuple(row[name] for name in _RECALL_COLUMNS) for row in recall_rows.values()]
    insert_rows(session, Recall, _RECALL_COLUMNS, recalls)
    update_rows(
        session,
        Recall,
        ("recall_id", "state", "fired_at"),
        [(rid, "fired", at) for rid, at in fired.items() if rid not in recall_rows],
    )
    # Any firing already sent for the old time is handed back when it arrives early.
    update_rows(
        session,
        Recall,
        ("recall_id", "due_at", "dispatched_at"),
        [(rid, due, None) for rid, due in rescheduled.items()],
    )
    for among in where_in(session, Recall.recall_id, superseded):
        session.execute(
            update(Recall)
            .where(among, Recall.state.in_(WAITING))
            .values(state="superseded")
            .execution_options(synchronize_session=False)  # no Recall objects are loaded here
        )
    update_rows(
        session,
        Phone,
        _PHONE_WRITE_COLUMNS,
        [_phone_row(states[pid], wall) for pid in sorted(changed - new_phones)],
    )
    taken = decisions[len(redecided) :]
    return Applied([decision for decision in taken if decision is not None], len(fired))
