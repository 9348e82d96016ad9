"""Ingestion: validate raw call results, decide the good ones, dead-letter the bad ones.

This is the domain action behind both ingestion tasks and ``recall dead-letters replay``: the
caller opens the transaction, this does the work in bulk inside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.domain.engine import Decision
from worker.domain.events import (
    CallResult,
)
from worker.domain.intake import Rejected, _event_id_of, accept
from worker.domain.rules import Rules
from worker.store.dead_letters import Letter, record_dead_letters
from worker.store.decisions import apply_events
from worker.store.models import DeadLetter
from worker.store.rules_versions import record_rules_version, source_of

__all__ = ["IngestReport", "ingest", "replay_dead_letters", "replay_dead_letters_in_force"]


@dataclass
class IngestReport:
    """What one ingestion did: decisions for the good events, the count of dead letters."""

    decisions: list[Decision] = field(default_factory=list)
    dead_letters: int = 0
    #: The dead letters kept: (event_id or None, reason, detail) each.
    rejected: list[tuple[str | None, str, str]] = field(default_factory=list)
    events: list[CallResult] = field(default_factory=list)  # the events taken
    #: For each payload, in the order given: its decision's action, or "reject".
    actions: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter(decision.action for decision in self.decisions)
        if self.dead_letters:
            counts["reject"] += self.dead_letters
        return dict(counts)


def ingest(
    session: Session,
    payloads: Sequence[object],
    rules: Rules,
    now: datetime,
    *,
    task: str,
    skew_s: int,
) -> IngestReport:
    """Validate, decide and store ``payloads`` (decoded events or JSON texts) in one go.

    ``now`` is the deciding clock; events more than ``skew_s`` seconds ahead of it are refused.
    """
    good: list[CallResult] = []
    letters: list[Letter] = []

    def reject(raw: object, reason: str, detail: str, event_id: str | None) -> None:
        letters.append(Letter.of(task, reason, detail, raw, now, event_id))

    taken: list[bool] = []
    for raw in payloads:
        try:
            good.append(accept(raw, rules, now, skew_s))
        except Rejected as error:
            reject(raw, error.reason, error.detail, _event_id_of(raw))
            taken.append(False)
        else:
            taken.append(True)

    report = IngestReport(apply_events(session, good, rules, now).decisions)
    report.dead_letters = record_dead_letters(session, letters)
    report.rejected = [(item.event_id, item.reason, item.detail) for item in letters]
    report.events = good
    decided = iter(report.decisions)  # one per good event, in order
    report.actions = [next(decided).action if ok else "reject" for ok in taken]
    return report


def replay_dead_letters(
    session: Session,
    rules: Rules,
    now: datetime,
    ids: Sequence[int] | None = None,
    *,
    skew_s: int,
) -> tuple[IngestReport, int]:
    """Take the dead letters that pass now (e.g. after a rules fix); the rest stay, updated.

    Returns the report for the letters taken and the number still refused.
    """
    query = select(DeadLetter).where(DeadLetter.status == "new").order_by(DeadLetter.id)
    if ids:
        query = query.where(DeadLetter.id.in_(list(ids)))
    taken: list[CallResult] = []
    refused = 0
    for letter in session.scalars(query.with_for_update()):
        try:
            # The stored text is the payload as sent (or its JSON form): it parses as it did.
            taken.append(accept(letter.payload, rules, now, skew_s))
        except Rejected as error:
            letter.reason, letter.detail = error.reason, error.detail
            refused += 1
            continue
        letter.status, letter.replayed_at = "replayed", now
    return IngestReport(apply_events(session, taken, rules, now).decisions), refused


def replay_dead_letters_in_force(
    session: Session, rules: Rules, now: datetime, ids: Sequence[int] | None, *, skew_s: int
) -> dict[str, Any]:
    """``replay_dead_letters`` as ``recall dead-letters replay`` and the API run it: ``rules``
    recorded in the rules history first, as in force since ``now`` (before anything is decided
    with them, and before any lead lock). Returns the JSON summary both print:
    ``{"taken", "still_refused", "actions"}``."""
    record_rules_version(session, rules, source_of(rules, "dead-letters"), now)
    report, refused = replay_dead_letters(session, rules, now, ids or None, skew_s=skew_s)
    return {"taken": len(report.decisions), "still_refused": refused, "actions": report.counts()}
