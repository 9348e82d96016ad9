"""Claims, the dialer's pull (DESIGN.md section 8): eligible phones handed out under a lease.

A claim takes up to ``limit`` dial-eligible phones of a plan that no live lease holds, callbacks
(personal and anyone) first, then the longest eligible, and leases each to the claimant until
``now + lease_s``. The lease ends when it runs out, when the dialer gives the phone back
(``release_claim``), or when the phone changes: a call result for it is applied or a recall
fires (``store.decisions`` and ``store.recalls`` clear the lease with every phone they write).

One statement on both backends. On PostgreSQL its row locks are taken ``FOR UPDATE SKIP
LOCKED``: claimers running at once each take other phones, never waiting for one another, and a
phone another claimer leased just before is seen with its lease and passed over. SQLite has one
writer at a time: the session's ``BEGIN IMMEDIATE`` (``store.database``) holds the write lock
from the start of the transaction, so the claim reads and writes under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, func, select, union_all, update
from sqlalchemy.orm import Session

from worker.store.models import CLAIM_RANK, Phone
from worker.store.queries import _phone_json

__all__ = ["MAX_CLAIM", "MAX_LEASE_S", "Claimed", "claim_phones", "release_claim"]

#: The most phones one claim hands out: a dialer's hopper refill, not a dump of the table.
MAX_CLAIM = 1000
#: The longest lease: a day. A dialer holding a phone longer has lost track of it.
MAX_LEASE_S = 86_400


@dataclass(frozen=True, slots=True)
class Claimed:
    """A phone handed out by a claim, with its lease."""

    #: The phone as ``recall phones show --json`` prints it (DESIGN.md section 7).
    phone: dict[str, Any]
    lease_id: str
    leased_until: datetime
    #: Why it is eligible: the fired recall's reason (``callback``, ``sip_recall`` ...).
    reason: str | None
    #: A personal callback's agent; None: anyone may take it.
    agent: str | None

    @property
    def phone_id(self) -> str:
        return str(self.phone["phone_id"])

    def to_json(self) -> dict[str, Any]:
        return {
            **self.phone,
            "lease_id": self.lease_id,
            "leased_until": self.leased_until.isoformat(),
            "reason": self.reason,
            "agent": self.agent,
        }


def _check(limit: int, lease_s: int) -> None:
    if not 1 <= limit <= MAX_CLAIM:
        raise ValueError(f"limit must be from 1 to {MAX_CLAIM}, not {limit}")
    if not 1 <= lease_s <= MAX_LEASE_S:
        raise ValueError(f"lease_s must be from 1 to {MAX_LEASE_S} seconds, not {lease_s}")


def _new_lease_id(dialect: str) -> ColumnElement[str]:
    """A fresh random lease id per row (32 hex digits), made by the database in the update."""
    if dialect == "postgresql":
        return func.replace(func.gen_random_uuid().cast(Text), "-", "")
    return func.lower(func.hex(func.randomblob(16)))


def claim_phones(
    session: Session, plan_id: str, *, limit: int, lease_s: int, now: datetime, claimant: str
) -> list[Claimed]:
    """Lease up to ``limit`` eligible phones of ``plan_id`` no live lease holds to ``claimant``.

    Callbacks first, then the oldest ``eligible_at``, then ``phone_id``; returned in that order.
    Raises ValueError (one line) for a ``limit`` outside 1..1000 or ``lease_s`` outside
    1..86400. The caller owns the transaction: the leases hold once it commits.
    """
    _check(limit, lease_s)
    rank = CLAIM_RANK.label("rank")
    order = (rank, Phone.eligible_at, Phone.phone_id)
    candidates = select(Phone.phone_id, rank, Phone.eligible_at).where(
        Phone.plan_id == plan_id, Phone.eligible
    )
    # Two sources, each read in order from its own partial index (models.Phone): phones under
    # no lease, and phones whose lease has run out (few, at any moment). One source with an OR
    # would walk past every leased phone at the head of the order on each claim.
    free = candidates.where(Phone.lease_id.is_(None))
    expired = candidates.where(Phone.lease_id.is_not(None), Phone.leased_until <= now)
    parts = [
        part.order_by(*order).limit(limit).with_for_update(skip_locked=True).cte(name)
        for part, name in ((free, "free"), (expired, "expired"))
    ]
    both = union_all(*(select(part) for part in parts)).subquery("both_")
    chosen = (
        select(both.c.phone_id)
        .order_by(both.c.rank, both.c.eligible_at, both.c.phone_id)
        .limit(limit)
        .cte("chosen")
    )
    leased_until = now + timedelta(seconds=lease_s)
    statement = (
        update(Phone)
        .where(Phone.phone_id == chosen.c.phone_id)
        .values(
            lease_id=_new_lease_id(session.get_bind().dialect.name),
            leased_until=leased_until,
            leased_to=claimant,
        )
        .returning(Phone)
        .execution_options(synchronize_session=False)
    )
    rows = list(session.scalars(statement))
    rows.sort(key=lambda row: (row.eligible_reason != "callback", row.eligible_at, row.phone_id))
    # An eligible phone has no pending recall (a firing takes it; a decision ends eligibility).
    return [
        Claimed(_phone_json(row, None), row.lease_id or "", leased_until, row.eligible_reason,
                row.eligible_agent)
        for row in rows
    ]  # fmt: skip


def release_claim(session: Session, lease_id: str, now: datetime) -> bool:
    """Give back the phone under the live lease ``lease_id``; False if there is no such lease."""
    statement = (
        update(Phone)
        .where(Phone.lease_id == lease_id, Phone.leased_until > now)
        .values(lease_id=None, leased_until=None, leased_to=None)
        .returning(Phone.phone_id)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).first() is not None
