"""Read-side queries for the command line: phones, dead letters, counts."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.store.models import DeadLetter, Phone, ProcessedEvent, Recall, ReplayRun

__all__ = [
    "HeldRecalls",
    "PhoneFilter",
    "RecallCounts",
    "count_dead_letters",
    "count_phones",
    "dead_letters",
    "held_recalls",
    "phone",
    "phones",
    "phones_page",
    "recall_counts",
    "summary",
]

PhoneFilter = Literal["all", "eligible", "waiting"]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _phone_json(row: Phone, recall: Recall | None) -> dict[str, Any]:
    return {
        "phone_id": row.phone_id,
        "lead_id": row.lead_id,
        "plan_id": row.plan_id,
        "eligible": row.eligible,
        "eligible_at": _iso(row.eligible_at),
        "pending_recall": (
            {
                "due_at": _iso(recall.due_at),
                "source": recall.source,
                "rule": recall.rule,
                "reason": recall.reason,
                "agent": recall.agent,
            }
            if recall is not None
            else None
        ),
        "last_result_at": _iso(row.last_result_at),
        "last_decision": row.last_decision,
    }


def _with_recalls(session: Session, rows: Sequence[Phone]) -> list[dict[str, Any]]:
    ids = [row.pending_recall_id for row in rows if row.pending_recall_id]
    recalls = {
        recall.recall_id: recall
        for recall in session.scalars(select(Recall).where(Recall.recall_id.in_(ids)))
    }
    return [_phone_json(row, recalls.get(row.pending_recall_id or "")) for row in rows]


def phone(session: Session, phone_id: str) -> dict[str, Any] | None:
    """The contract's JSON form of one phone, or None if it was never seen."""
    if "\x00" in phone_id:  # no id holds one (PostgreSQL text cannot), and it cannot be sent
        return None
    row = session.get(Phone, phone_id)
    return None if row is None else _with_recalls(session, [row])[0]


def _phones_where(which: PhoneFilter) -> list[Any]:
    if which == "eligible":
        return [Phone.eligible.is_(True)]
    if which == "waiting":
        return [Phone.pending_recall_id.is_not(None)]
    return []


def phones(session: Session, which: PhoneFilter, limit: int) -> list[dict[str, Any]]:
    """Phones in id order: all, the dial-eligible ones, or those waiting for a recall."""
    query = select(Phone).where(*_phones_where(which)).order_by(Phone.phone_id).limit(limit)
    return _with_recalls(session, session.scalars(query).all())


def _cursor_of(phone_id: str) -> str:
    return base64.urlsafe_b64encode(phone_id.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    try:
        padded = (cursor + "=" * (-len(cursor) % 4)).encode()
        after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        if "\x00" in after:
            raise ValueError(after)
        return after
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"cursor: not a cursor this service gave: {cursor[:40]!r}") from None


def phones_page(
    session: Session,
    *,
    plan_id: str | None,
    eligible: bool | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of phones in id order, and the cursor of the next page (None after the last).

    Keyset paging: ``cursor`` (opaque: the last phone id of the page before, URL-safe base64)
    resumes after that phone, so a page costs the same wherever it is, and phones added meanwhile
    are neither skipped nor repeated. A cursor that cannot be read raises ValueError.
    """
    if plan_id is not None and "\x00" in plan_id:  # no plan id holds one
        return [], None
    where = []
    if plan_id is not None:
        where.append(Phone.plan_id == plan_id)
    if eligible is not None:
        where.append(Phone.eligible.is_(eligible))
    if cursor is not None:
        where.append(Phone.phone_id > _after(cursor))
    query = select(Phone).where(*where).order_by(Phone.phone_id).limit(limit + 1)
    rows = session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return _with_recalls(session, rows), _cursor_of(rows[-1].phone_id) if more else None


def count_phones(session: Session, which: PhoneFilter) -> int:
    """How many phones ``phones`` would list without a limit."""
    query = select(func.count()).select_from(Phone).where(*_phones_where(which))
    return session.scalar(query) or 0


def _letters_where(include_replayed: bool) -> list[Any]:
    return [] if include_replayed else [DeadLetter.status == "new"]


def count_dead_letters(session: Session, *, include_replayed: bool) -> int:
    """How many letters ``dead_letters`` would list without a limit."""
    query = select(func.count()).select_from(DeadLetter).where(*_letters_where(include_replayed))
    return session.scalar(query) or 0


def dead_letters(session: Session, *, include_replayed: bool, limit: int) -> list[dict[str, Any]]:
    query = (
        select(DeadLetter).where(*_letters_where(include_replayed)).order_by(DeadLetter.id)
    ).limit(limit)
    return [
        {
            "id": letter.id,
            "received_at": _iso(letter.received_at),
            "task": letter.task,
            "event_id": letter.event_id,
            "reason": letter.reason,
            "detail": letter.detail,
            "status": letter.status,
            "payload": letter.payload,
        }
        for letter in session.scalars(query)
    ]


def summary(session: Session) -> dict[str, Any]:
    """Counts for a one-screen overview."""

    def grouped(column: Any) -> dict[str, int]:
        rows = session.execute(select(column, func.count()).group_by(column))
        return {str(key): count for key, count in rows}

    return {
        "events": grouped(ProcessedEvent.action),
        "recalls": grouped(Recall.state),
        "phones": session.scalar(select(func.count()).select_from(Phone)) or 0,
        "eligible": session.scalar(
            select(func.count()).select_from(Phone).where(Phone.eligible.is_(True))
        )
        or 0,
        "dead_letters": grouped(DeadLetter.status),
    }


#: A pending recall this far past its due time is overdue: the dispatcher should have fired it.
OVERDUE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class RecallCounts:
    """Pending recalls at a glance (one indexed query)."""

    pending: int
    due_next_hour: int
    overdue: int
    oldest_overdue_due_at: datetime | None


def recall_counts(session: Session, now: datetime) -> RecallCounts:
    late = Recall.due_at < now - OVERDUE_AFTER
    row = session.execute(
        select(
            func.count(),
            func.count().filter(Recall.due_at <= now + timedelta(hours=1)),
            func.count().filter(late),
            func.min(Recall.due_at).filter(late),
        ).where(Recall.state == "pending")
    ).one()
    return RecallCounts(row[0] or 0, row[1] or 0, row[2] or 0, row[3])


@dataclass(frozen=True, slots=True)
class HeldRecalls:
    """Recalls an applied replay holds back from the dispatcher, and the replays running now."""

    held: int
    oldest_due_at: datetime | None
    replays_running: int
    #: The latest heartbeat of any replay, running or not (None: no replay is recorded).
    last_heartbeat_at: datetime | None


def held_recalls(session: Session, now: datetime, running_within: timedelta) -> HeldRecalls:
    """Held recalls, and the replays whose heartbeat is more recent than ``running_within``."""
    held, oldest = session.execute(
        select(func.count(), func.min(Recall.due_at)).where(Recall.state == "held")
    ).one()
    running, last = session.execute(
        select(
            func.count().filter(ReplayRun.heartbeat_at >= now - running_within),
            func.max(ReplayRun.heartbeat_at),
        )
    ).one()
    return HeldRecalls(held or 0, oldest, running or 0, last)


@dataclass(frozen=True, slots=True)
class Activity:
    """What the demo shows: decisions, firings and dead letters so far, and whether a recall is
    due soon (worth waiting for)."""

    decisions: list[tuple[str, str, dict[str, Any]]]  # event id, phone id, decision
    fired: list[tuple[str, str, datetime, datetime | None]]  # recall id, phone id, due, fired
    letters: list[tuple[int, str, str]]  # id, reason, detail
    due_soon: bool


def activity(session: Session, soon: datetime) -> Activity:
    """Everything decided, fired and refused so far, oldest first (small databases: the demo)."""
    decisions = session.execute(
        select(ProcessedEvent.event_id, ProcessedEvent.phone_id, ProcessedEvent.decision)
        .order_by(ProcessedEvent.processed_at)
    ).all()  # fmt: skip
    fired = session.execute(
        select(Recall.recall_id, Recall.phone_id, Recall.due_at, Recall.fired_at)
        .where(Recall.state == "fired").order_by(Recall.fired_at)
    ).all()  # fmt: skip
    letters = session.execute(select(DeadLetter.id, DeadLetter.reason, DeadLetter.detail)).all()
    due_soon = session.scalar(
        select(Recall.recall_id).where(Recall.state == "pending", Recall.due_at <= soon).limit(1)
    )
    return Activity(
        [(row[0], row[1], row[2]) for row in decisions],
        [(row[0], row[1], row[2], row[3]) for row in fired],
        [(row[0], row[1], row[2]) for row in letters],
        due_soon is not None,
    )


def count_pending_recalls(session: Session) -> int:
    """Recalls waiting for the live dispatcher."""
    return (
        session.scalar(select(func.count()).select_from(Recall).where(Recall.state == "pending"))
        or 0
    )


def dead_letter_states(session: Session, ids: Sequence[int]) -> dict[int, str]:
    """The status (``new``, ``replayed``) of each of the dead letters ``ids`` that exists."""
    query = select(DeadLetter.id, DeadLetter.status).where(DeadLetter.id.in_(ids))
    return {row.id: row.status for row in session.execute(query)}


def dead_letters_problem(session: Session, ids: Sequence[int]) -> str | None:
    """Why the dead letters ``ids`` cannot be replayed (one that does not exist, or was replayed
    already), in one line; None when they all can be (or ``ids`` is empty: all that are new)."""
    if not ids:
        return None
    found = dead_letter_states(session, ids)
    missing = sorted(set(ids) - set(found))
    replayed = sorted(i for i in set(ids) & set(found) if found[i] != "new")
    problems = []
    if missing:
        problems.append(f"no dead letter with id {', '.join(map(str, missing))}")
    if replayed:
        problems.append(f"already replayed: {', '.join(map(str, replayed))}")
    if not problems:
        return None
    return "; ".join(problems) + " (see `recall dead-letters list --all`)"
