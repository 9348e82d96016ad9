"""The rules preview: what proposed rules would have done to the call results the database holds.

The what-if of ``recall replay --compare`` (DESIGN.md section 4) over the events the worker
stored (table ``events``, each with its payload as received) in the last N days, instead of over
files: the same validation, the same dry simulation in event-time order, the same summary and
differences. The API's ``POST /v1/rules/preview`` and ``recall rules preview`` call it before an
edit is saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.domain.events import CallResult
from worker.domain.intake import Rejected, accept
from worker.domain.rules import Rules
from worker.domain.zones import epoch_us
from worker.replay.simulation import simulate, what_if_json
from worker.replay.sorting import Position
from worker.store.models import ProcessedEvent

__all__ = ["MAX_DAYS", "preview_rules"]

#: The longest window a preview looks back over (a year, a leap day included).
MAX_DAYS = 366
# Rows fetched from the database at a time: the preview streams, its memory grows with phones.
FETCH_ROWS = 2_000


def preview_rules(
    session: Session, proposed: Rules, in_force: Rules, *, days: int, now: datetime
) -> dict[str, Any]:
    """Replay dry, under ``in_force`` and under ``proposed``, the call results that occurred in
    the ``days`` days up to ``now``, and say how the decisions differ.

    Returns the JSON ``recall replay --compare --json --now NOW`` prints for those events (in
    event-time order, ties by event id) with ``in_force`` as ``--rules`` and ``proposed`` as
    ``--compare``: ``rules``, ``rules_version``, ``summary`` and ``compare`` (``summary``,
    ``differing_decisions``, ``sample``), with ``mode`` ``preview``, ``days``, ``since`` and
    ``until`` beside them. A stored event the rules in force now refuse (its plan gone) counts as
    a dead letter, as the replay counts it. The rows are streamed, never all loaded.
    """
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1-{MAX_DAYS}, got {days}")
    since = now - timedelta(days=days)
    refused = 0

    def events() -> Iterator[tuple[Position, CallResult]]:
        nonlocal refused
        query = (
            select(ProcessedEvent.payload)
            .where(ProcessedEvent.occurred_at >= since, ProcessedEvent.occurred_at <= now)
            .order_by(ProcessedEvent.occurred_at, ProcessedEvent.event_id)
            .execution_options(yield_per=FETCH_ROWS)
        )
        for number, payload in enumerate(session.scalars(query), start=1):
            try:
                # None is ahead of now (the query says so): no clock skew to allow for.
                event = accept(payload, in_force, now, 0)
            except Rejected:
                refused += 1
                continue
            yield (epoch_us(event.occurred_at), 0, number), event

    summary, pending, comparison = simulate(events(), in_force, proposed, now)
    assert comparison is not None, "two rule sets compared"
    for each in (summary, comparison.simulation.summary):
        each.dead_letters = refused
    return {
        "mode": "preview",
        "days": days,
        "since": since.isoformat(),
        "until": now.isoformat(),
        **what_if_json(summary, pending, comparison, in_force),
    }
