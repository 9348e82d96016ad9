"""A phone's state and how a decision or a firing changes it, with no database in sight.

The worker (``worker.store``) loads these from rows and writes back what changed; replay keeps them
in memory. Both move phones through the same transitions, so a replayed history ends exactly where
the live worker would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from msgspec.structs import replace

from worker.domain.engine import Decision, PendingRecall, PhoneHistory
from worker.domain.events import CallResult
from worker.domain.rules import Duration, Rules
from worker.domain.zones import epoch_us

__all__ = ["NewRecall", "PhoneState", "Transition", "attempt_lookback", "decision_json"]


def attempt_lookback(rules: Rules) -> timedelta:
    """How far back attempt caps can look: the longest window of any plan, plus a DST day.

    A per-day cap looks back to the local midnight of its day: a day, plus the DST day.
    """
    longest = timedelta(0)
    for plan in rules.plans.values():
        for cap in (*plan.max_attempts, *plan.lead_max_attempts):
            window = cap.within or Duration(days=1)
            span = timedelta(days=window.days + 1, hours=window.hours, minutes=window.minutes)
            longest = max(longest, span)
    return longest


class NewRecall(msgspec.Struct, frozen=True, gc=False):
    """A recall a decision scheduled (its id is the deciding event's id)."""

    recall_id: str
    phone_id: str
    lead_id: str
    plan_id: str
    generation: int
    due_at: datetime
    source: str
    rule: str
    reason: str
    #: A personal callback's agent; None: anyone may take it.
    agent: str | None = None


class Transition(msgspec.Struct, frozen=True, gc=False):
    """What taking one event changed: the recall it replaced and the one it scheduled."""

    superseded: str | None = None
    scheduled: NewRecall | None = None
    #: (recall id, new due time) when a late call moved the pending recall later.
    rescheduled: tuple[str, datetime] | None = None
    #: The pending recalls of the lead's other phones that this call pushed over a lead cap,
    #: moved later: (phone id, recall id, new due time).
    moved: tuple[tuple[str, str, datetime], ...] = ()


@dataclass(slots=True)
class PhoneState:
    """Everything about one lead phone that the decisions depend on or report."""

    phone_id: str
    lead_id: str
    plan_id: str
    eligible: bool = False
    eligible_at: datetime | None = None
    #: Why it is eligible: the fired recall's reason and a personal callback's agent (claims
    #: hand out callbacks first, and say whose they are).
    eligible_reason: str | None = None
    eligible_agent: str | None = None
    generation: int = 0
    pending_recall_id: str | None = None
    pending: PendingRecall | None = None
    last_result_at: datetime | None = None
    last_event_id: str | None = None
    #: The JSON form (as loaded from the database) or the Decision itself (kept as the object
    #: in memory: a replay holds one per phone, and the dict is five times larger).
    last_decision: dict[str, Any] | Decision | None = None
    system_recalls: int = 0
    #: The times of its call results, as epoch microseconds (what the caps count).
    attempts: list[int] = field(default_factory=list)
    #: Event ids taken for this phone, with their times (a dict, so old ones can be forgotten).
    seen: dict[str, datetime] = field(default_factory=dict)
    #: The zone its pending recall was decided in (the event's, else the plan's): where a lead
    #: cap re-checks it. Not stored: the store reads it from the deciding event when needed.
    zone: str | None = None

    def history(self, lead_attempts: tuple[int, ...] = ()) -> PhoneHistory:
        return PhoneHistory(
            attempts=tuple(self.attempts),
            last_applied_at=self.last_result_at,
            system_recalls=self.system_recalls,
            pending=self.pending,
            seen_event_ids=self.seen,
            lead_attempts=lead_attempts,
        )

    def take(self, event: CallResult, decision: Decision, at: int | None = None) -> Transition:
        """Apply ``decision`` (made for ``event`` from ``history()``) to the phone.

        ``at`` is ``epoch_us(event.occurred_at)``, where the caller has it already.
        """
        if decision.action in ("duplicate", "reject"):
            return Transition()
        self.seen[event.event_id] = event.occurred_at
        self.attempts.append(epoch_us(event.occurred_at) if at is None else at)
        if not decision.applies:  # stale: an attempt, and maybe a pending recall moved later
            if decision.reschedules is None or self.pending is None:
                return Transition()
            assert self.pending_recall_id is not None
            self.pending = replace(self.pending, due_at=decision.reschedules)
            return Transition(rescheduled=(self.pending_recall_id, decision.reschedules))
        # callback_pending: the result counts, but the pending callback stays, at its time.
        keep = decision.keeps_pending
        superseded = None if keep else self.pending_recall_id
        self.generation += 1
        self.lead_id, self.plan_id = event.lead_id, event.plan_id
        self.eligible, self.eligible_at = False, None
        self.eligible_reason = self.eligible_agent = None
        if not keep:
            self.pending_recall_id, self.pending = None, None
        self.last_result_at = event.occurred_at
        self.last_event_id = event.event_id
        self.last_decision = decision
        scheduled = None
        if decision.action == "recall" and decision.due_at is not None:
            source = decision.source or ""
            scheduled = NewRecall(
                recall_id=event.event_id,
                phone_id=event.phone_id,
                lead_id=event.lead_id,
                plan_id=event.plan_id,
                generation=self.generation,
                due_at=decision.due_at,
                source=source,
                rule=decision.rule or "",
                reason=decision.reason,
                agent=decision.agent,
            )
            self.pending_recall_id = event.event_id
            self.pending = PendingRecall(
                decision.due_at, source, decision.rule or "", decision.reason, decision.agent
            )
            if decision.is_system_recall:
                self.system_recalls += 1
        return Transition(superseded=superseded, scheduled=scheduled)

    def fire(self, at: datetime) -> str | None:
        """Make the phone eligible at ``at`` through its pending recall; return that recall's id."""
        recall_id = self.pending_recall_id
        if recall_id is None:
            return None
        self.eligible, self.eligible_at = True, at
        if self.pending is not None:
            self.eligible_reason, self.eligible_agent = self.pending.reason, self.pending.agent
        self.pending_recall_id, self.pending = None, None
        return recall_id

    def forget_before(self, moment: datetime, since: int | None = None) -> None:
        """Drop attempts and event ids from before ``moment`` (keeps a long replay's memory flat).

        Only safe for input in event-time order, where a redelivered event stands next to its
        first copy: ``moment`` must be at least the longest attempt window in the past. ``since``
        is ``epoch_us(moment)``, where the caller has it (a timeline asks every phone).
        """
        if since is None:
            since = epoch_us(moment)
        if self.attempts and min(self.attempts) < since:
            self.attempts = [attempt for attempt in self.attempts if attempt >= since]
        if len(self.seen) > 8:
            self.seen = {key: when for key, when in self.seen.items() if when >= moment}


def decision_json(value: dict[str, Any] | Decision | None) -> dict[str, Any] | None:
    """``PhoneState.last_decision`` in its stored (JSON) form."""
    return value.to_json() if isinstance(value, Decision) else value
