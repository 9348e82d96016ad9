"""Recalls falling due: the dispatcher's claim, firing (idempotent) and the end of a replay.

A recall is a row with its due time, never a long broker countdown (DESIGN.md section 3). Firing
locks the phones first, as ingestion does, and fires only a recall still current.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from worker.store.bulk import CHUNK, chunks, update_rows, where_in
from worker.store.models import Phone, Recall

__all__ = ["Fired", "claim_due", "fire_due", "fire_recalls"]


def claim_due(
    session: Session,
    now: datetime,
    *,
    horizon: timedelta,
    redispatch_after: timedelta,
    limit: int,
) -> list[tuple[str, datetime]]:
    """Claim pending recalls due before ``now + horizon`` that no dispatcher holds.

    A recall dispatched earlier but still pending well past its due time was lost in the broker
    and is claimed again. Rows other dispatchers are claiming are skipped, not waited for.
    """
    cutoff = now + horizon
    lost_before = now - redispatch_after
    query = (
        select(Recall.recall_id, Recall.due_at)
        .where(
            Recall.state == "pending",
            Recall.due_at <= cutoff,
            or_(
                Recall.dispatched_at.is_(None),
                and_(Recall.due_at < lost_before, Recall.dispatched_at < lost_before),
            ),
        )
        .order_by(Recall.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = [(recall_id, due_at) for recall_id, due_at in session.execute(query)]
    for among in where_in(session, Recall.recall_id, [recall_id for recall_id, _ in claimed]):
        session.execute(update(Recall).where(among).values(dispatched_at=now))
    return claimed


@dataclass(frozen=True, slots=True)
class Fired:
    """A recall that made its phone eligible: the body of the dialer notification."""

    recall_id: str
    phone_id: str
    lead_id: str
    plan_id: str
    due_at: datetime
    fired_at: datetime
    source: str
    rule: str
    #: The agent who owns a personal callback; None: anyone may take it.
    agent: str | None = None
    #: The recall's reason (``callback``, ``sip_recall`` ...): the phone's ``eligible_reason``.
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "phone_eligible",
            "version": 1,
            "phone_id": self.phone_id,
            "lead_id": self.lead_id,
            "plan_id": self.plan_id,
            "recall_id": self.recall_id,
            "due_at": self.due_at.isoformat(),
            "fired_at": self.fired_at.isoformat(),
            "source": self.source,
            "rule": self.rule,
            "agent": self.agent,
        }


def fire_recalls(
    session: Session,
    recall_ids: Sequence[str],
    now: datetime,
    *,
    early_tolerance: timedelta,
    at_due_time: bool = False,
    state: str = "pending",
) -> list[Fired]:
    """Mark the phones of the still-current, due recalls among ``recall_ids`` eligible.

    Superseded or already fired recalls are skipped, so firing twice is harmless. A recall
    delivered before its time (clock skew) is handed back to the dispatcher. With
    ``at_due_time`` (replay's simulated clock) a recall fires at its due time, not at ``now``.
    """
    wanted = sorted(set(recall_ids))
    phone_ids: set[str] = set()
    for among in where_in(session, Recall.recall_id, wanted):
        phone_ids.update(
            session.scalars(select(Recall.phone_id).where(among, Recall.state == state))
        )
    if not phone_ids:
        return []
    # Lock the phones first, as ingestion does; the phone's pending recall is the real guard.
    current: dict[str, str | None] = {}
    for among in where_in(session, Phone.phone_id, sorted(phone_ids)):
        lock = (
            select(Phone.phone_id, Phone.pending_recall_id)
            .where(among)
            .order_by(Phone.phone_id)
            .with_for_update()
        )
        current.update(session.execute(lock).all())
    # Read the recalls only now: ingestion may have moved (or rewritten) one while we waited.
    recalls: dict[str, Any] = {}
    columns = (Recall.recall_id, Recall.phone_id, Recall.lead_id, Recall.plan_id, Recall.due_at,
               Recall.source, Recall.rule, Recall.agent, Recall.reason)  # fmt: skip
    for among in where_in(session, Recall.recall_id, wanted):
        fresh = select(*columns).where(among, Recall.state == state)
        recalls.update((recall.recall_id, recall) for recall in session.execute(fresh))

    fired: list[Fired] = []
    early: list[str] = []
    for recall in recalls.values():
        if current.get(recall.phone_id) != recall.recall_id:
            continue  # superseded or fired while we waited for the lock
        if recall.due_at > now + early_tolerance:
            early.append(recall.recall_id)
            continue
        at = recall.due_at if at_due_time else now
        fired.append(
            Fired(
                recall.recall_id,
                recall.phone_id,
                recall.lead_id,
                recall.plan_id,
                recall.due_at,
                at,
                recall.source,
                recall.rule,
                recall.agent,
                recall.reason,
            )
        )
    update_rows(
        session,
        Recall,
        ("recall_id", "state", "fired_at"),
        [(f.recall_id, "fired", f.fired_at) for f in fired],
    )
    # Why the phone is eligible (claims hand out callbacks first); a lease left from an earlier
    # eligibility ends: the phone is eligible afresh.
    update_rows(
        session,
        Phone,
        ("phone_id", "eligible", "eligible_at", "eligible_reason", "eligible_agent",
         "pending_recall_id", "updated_at", "lease_id", "leased_until", "leased_to"),
        [(f.phone_id, True, f.fired_at, f.reason, f.agent, None, now, None, None, None)
         for f in fired],
    )  # fmt: skip
    for among in where_in(session, Recall.recall_id, early):
        session.execute(update(Recall).where(among).values(dispatched_at=None))
    return fired


def fire_due(session: Session, until: datetime, *, limit: int = CHUNK) -> int:
    """End of a replay: fire its held recalls due by ``until`` at their due times, release the rest.

    Only the replay's own (held) recalls are touched: live pending recalls stay the live
    dispatcher's, however overdue. The due ones are read once and fired ``limit`` at a time:
    querying again after each part would walk the index entries of every recall fired so far
    (dead until a vacuum), a cost growing with the square of the recalls.
    """
    query = (
        select(Recall.recall_id)
        .where(Recall.state == "held", Recall.due_at <= until)
        .order_by(Recall.due_at, Recall.recall_id)
    )
    total = 0
    for part in chunks(session.scalars(query).all(), limit):
        total += len(
            fire_recalls(
                session, part, until, early_tolerance=timedelta(0), at_due_time=True, state="held"
            )
        )
    # Recalls due after the end of the replay are live from now on.
    session.execute(update(Recall).where(Recall.state == "held").values(state="pending"))
    return total
