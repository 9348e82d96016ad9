"""One timeline of call results: what happens to a lead's phones as their events arrive.

Pure: no database, no Celery, no clock of its own. The worker's store loads the phones of a batch
(with what it knows of their past), hands them to a ``Timeline`` and writes back the steps it
returns; replay drives the very same ``Timeline`` in memory on a simulated clock. Deduplication,
late calls (rewinding a phone and deciding its later calls again), supersede and recalls falling
due are therefore written once, here, and a replayed history ends exactly where the live worker
would have.

Leads never affect each other and a ``Timeline`` may hold the phones of many leads at once (a
replay holds them all); what it must hold whole is a lead: every phone of a lead whose events it
takes, so that rules counting a lead's calls see all of them (``lead_max_attempts``: a call
counts against the lead's caps when its own recall is decided, and the pending recalls of the
lead's other phones that it pushes over a cap move later).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, MutableMapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from worker.domain.engine import (
    APPLYING_ACTIONS,
    Decision,
    PendingRecall,
    adjust_due,
    decide,
    local_text,
    phone_zone,
)
from worker.domain.events import CallResult
from worker.domain.phone import PhoneState, Transition
from worker.domain.rules import Rules
from worker.domain.zones import epoch_us, zone_table

__all__ = ["Before", "Step", "StoredEvent", "Timeline"]


class Step(NamedTuple):
    """What taking one event did (a tuple: replay makes one per event, and tuples are cheap)."""

    #: Where the event stood in the list given to ``take_all`` (0 for ``take``).
    place: int
    event: CallResult
    decision: Decision
    transition: Transition
    #: The recall that fell due before the event and fired first, with its time (simulated clock).
    fired: tuple[str, datetime] | None


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event already taken for a phone, as the store keeps it: the event and what it did."""

    event: CallResult
    action: str
    decision: dict[str, Any]


class Before(msgspec.Struct, frozen=True, gc=False):
    """The last result applied to a phone before a late call, and the state of its recall.

    ``recall_state`` is None when no recall was pending after that result (it suppressed).
    ``recall_id`` is the recall pending after it: its own, or, when it left a pending callback
    alone (``callback_pending``), that callback's; None means ``event_id``.
    """

    event_id: str
    occurred_at: datetime
    lead_id: str
    plan_id: str
    decision: dict[str, Any]
    recall_state: str | None = None
    recall: PendingRecall | None = None
    fired_at: datetime | None = None
    recall_id: str | None = None


class Timeline:
    """Phones and the event ids taken, moved on event by event through the rules.

    ``now`` None is the simulated clock (replay, and an applied replay in the store): each event is
    decided as of its own time, and a pending recall that fell due before it fires first, at its
    due time, unless that is after ``until``. Otherwise events are decided as of ``now`` (the live
    worker's wall clock).
    """

    def __init__(
        self,
        rules: Rules,
        phones: MutableMapping[str, PhoneState] | None = None,
        *,
        until: datetime | None = None,
    ) -> None:
        self.rules = rules
        #: The end of a simulated clock (a replay's --now): no recall fires after it.
        self.until = until
        self.phones: MutableMapping[str, PhoneState] = {} if phones is None else phones
        #: The event id is the idempotency key across all phones: the time of the copy taken.
        #: The very datetime object of that copy, so that ``take`` tells it from its duplicates.
        self.known_ids: dict[str, datetime] = {}
        #: Only plans with lead caps look at a lead's other phones: without any, nothing below
        #: is kept or looked up (the replay's hot path).
        self.lead_caps = any(plan.lead_max_attempts for plan in rules.plans.values())
        #: lead id -> the ids of the phones that have belonged to it, sorted (a phone's lead may
        #: change: members are checked against the phone's lead when read).
        self.leads: dict[str, list[str]] = {}
        if self.lead_caps:
            for state in self.phones.values():
                self._join(state.lead_id, state.phone_id)

    def _join(self, lead_id: str, phone_id: str) -> None:
        """Count ``phone_id`` among the phones of ``lead_id`` (kept sorted: read far more often)."""
        members = self.leads.get(lead_id)
        if members is None:
            self.leads[lead_id] = [phone_id]
        elif phone_id not in members:
            insort(members, phone_id)

    def phone(self, event: CallResult) -> PhoneState:
        """The state of ``event``'s phone, new if the timeline has not seen the phone yet."""
        state = self.phones.get(event.phone_id)
        if state is None:
            state = self.phones[event.phone_id] = PhoneState(
                event.phone_id, event.lead_id, event.plan_id
            )
            if self.lead_caps:
                self._join(event.lead_id, event.phone_id)
        return state

    def _others(self, lead_id: str, phone_id: str) -> list[PhoneState]:
        """The lead's phones other than ``phone_id``."""
        members = self.leads.get(lead_id)
        if not members or (len(members) == 1 and phone_id in members):  # the phone alone
            return []
        phones = self.phones
        return [
            phones[other]
            for other in members
            if other != phone_id and phones[other].lead_id == lead_id
        ]

    def take(self, event: CallResult, now: datetime | None, *, at: int | None = None) -> Step:
        """Decide ``event`` against its phone's history and move the phone on.

        Events come one at a time in event-time order (replay): the first copy of an event id
        is taken, the later ones are duplicates. ``at`` is ``epoch_us(event.occurred_at)``,
        where the caller has it already.
        """
        first = self.known_ids.setdefault(event.event_id, event.occurred_at)
        copy_of = None if first is event.occurred_at else first
        return self._take(event, now, 0, copy_of, epoch_us(event.occurred_at) if at is None else at)

    def take_all(self, events: Sequence[CallResult], now: datetime | None) -> list[Step]:
        """Take a batch in event-time order (ties in the order given).

        Of copies of one event id in the batch, the earliest in event time (then in the order
        given) is taken and the others are duplicates. Returns the steps in the order taken.
        """
        first_copy: dict[str, int] = {}
        for index in sorted(range(len(events)), key=lambda i: events[i].occurred_at):
            first_copy.setdefault(events[index].event_id, index)
        # In event-time order across phones, as a replay takes them: a lead's caps count the
        # calls of its other phones made before each one.
        order = sorted(range(len(events)), key=lambda i: events[i].occurred_at)
        steps: list[Step] = []
        for index in order:
            event = events[index]
            first = first_copy[event.event_id]
            copy_of = self.known_ids.get(event.event_id)
            if copy_of is None and first != index:
                copy_of = events[first].occurred_at
            steps.append(self._take(event, now, index, copy_of, epoch_us(event.occurred_at)))
        for event_id, first in first_copy.items():
            self.known_ids.setdefault(event_id, events[first].occurred_at)
        return steps

    def _take(
        self, event: CallResult, now: datetime | None, index: int, copy_of: datetime | None, at: int
    ) -> Step:
        # copy_of: the time of the copy of this event id already taken, if any; at: the event's
        # time in epoch microseconds.
        state = self.phones.get(event.phone_id) or self.phone(event)
        fired = None
        pending = state.pending
        if (
            now is None
            and pending is not None
            and pending.due_at <= event.occurred_at
            and (self.until is None or pending.due_at <= self.until)
        ):
            recall_id = state.fire(pending.due_at)
            if recall_id is not None:
                fired = (recall_id, pending.due_at)
        if copy_of is not None:
            state.seen.setdefault(event.event_id, copy_of)
        lead: tuple[int, ...] = ()
        others = None
        if self.lead_caps:
            plan = self.rules.plans.get(event.plan_id)
            if plan is not None and plan.lead_max_attempts:
                others = self._others(event.lead_id, event.phone_id)
                if others:
                    lead = tuple(chain.from_iterable([other.attempts for other in others]))
        history = state.history(lead)
        decision = decide(event, self.rules, history, now or event.occurred_at, occurred_us=at)
        transition = state.take(event, decision, at)
        if self.lead_caps and decision.action not in ("duplicate", "reject"):
            if transition.scheduled is not None:
                state.zone = phone_zone(self.rules, event)
            self._join(state.lead_id, state.phone_id)
            if others is None:
                others = self._others(event.lead_id, event.phone_id)
            moved = self._move_siblings(event, others)
            if moved:
                text = "; ".join(
                    f"the lead's caps moved the pending recall of phone {phone_id} to "
                    f"{local_text(due)}"
                    for phone_id, _, due in moved
                )
                noted = replace(decision, explanation=f"{decision.explanation}; {text}")
                if state.last_decision is decision:
                    state.last_decision = noted
                decision = noted
                transition = replace(transition, moved=moved)
        return Step(index, event, decision, transition, fired)

    def _move_siblings(
        self, event: CallResult, others: list[PhoneState]
    ) -> tuple[tuple[str, str, datetime], ...]:
        """Move later the pending recalls of the lead's other phones (``others``) that ``event``
        pushed over their plan's lead caps (each phone's own plan and zone); return (phone,
        recall, due).

        A recall already due when the call happened is left alone: it has fired (a simulated
        clock fires it first) or is firing.
        """
        moved = []
        lead = [*others, self.phones[event.phone_id]]
        for other in others:
            pending, recall_id = other.pending, other.pending_recall_id
            plan = self.rules.plans.get(other.plan_id)
            if pending is None or recall_id is None or plan is None or not plan.lead_max_attempts:
                continue
            if pending.due_at <= event.occurred_at:
                continue
            table = zone_table(other.zone or plan.timezone)
            counted = tuple(
                chain.from_iterable([phone.attempts for phone in lead if phone is not other])
            )
            due = epoch_us(pending.due_at)
            later = adjust_due(due, plan, other.attempts, table, [], [], lead_attempts=counted)
            if later != due:
                moved_to = table.to_datetime(later)
                other.pending = replace(pending, due_at=moved_to)
                moved.append((other.phone_id, recall_id, moved_to))
        return tuple(moved)

    def forget_before(self, moment: datetime) -> None:
        """Drop attempts and event ids older than ``moment`` (keeps a long replay's memory flat).

        Only for input in event-time order: ``moment`` must lie at least the longest attempt
        window in the past (see ``state.attempt_lookback``).
        """
        since = epoch_us(moment)
        for state in self.phones.values():
            state.forget_before(moment, since)
        self.known_ids = {key: when for key, when in self.known_ids.items() if when >= moment}

    # Late calls -------------------------------------------------------------------------------

    def late_starts(self, events: Iterable[CallResult]) -> dict[str, datetime]:
        """The phones that ``events`` reach late, each with the time of its earliest late call.

        A call older than the last result applied to its phone would have been decided before
        that result had the calls arrived in order; a copy of an event already taken is not late,
        and neither is a call for a plan no longer in the rules (it is rejected as it stands).
        """
        starts: dict[str, datetime] = {}
        for event in events:
            state = self.phones[event.phone_id]
            last = state.last_result_at
            if (
                last is not None
                and event.occurred_at < last
                and event.event_id not in state.seen
                and event.plan_id in self.rules.plans
            ):
                start = starts.get(event.phone_id, event.occurred_at)
                starts[event.phone_id] = min(start, event.occurred_at)
        return starts

    def rewind(
        self, phone_id: str, start: datetime, later: Sequence[StoredEvent], before: Before | None
    ) -> list[CallResult] | None:
        """Put the phone back as it was just before ``start``; return its events to decide again.

        ``later`` are the events taken for the phone at or after ``start``, ``before`` the last
        result applied before it. The caller un-writes ``later`` (their events, attempts and the
        recalls they made) and, when ``before``'s recall was superseded, makes it wait again.
        Returns None, changing nothing, when the phone cannot be rewound: one of ``later`` names
        a plan no longer in the rules. (A phone with a recall fired since ``start`` cannot be
        rewound either: a firing cannot be taken back; the caller, who knows, does not ask.)
        """
        if any(stored.event.plan_id not in self.rules.plans for stored in later):
            return None
        state = self.phones[phone_id]
        applied = [stored for stored in later if stored.action in APPLYING_ACTIONS]
        state.generation -= len(applied)
        state.system_recalls -= sum(
            stored.action == "recall" and stored.decision.get("source") != "user_outcome"
            for stored in applied
        )
        since = epoch_us(start)
        state.attempts = [attempt for attempt in state.attempts if attempt < since]
        for stored in later:
            state.seen.pop(stored.event.event_id, None)
            self.known_ids.pop(stored.event.event_id, None)
        state.eligible, state.eligible_at = False, None
        state.eligible_reason = state.eligible_agent = None
        state.pending_recall_id, state.pending = None, None
        state.last_result_at = state.last_event_id = state.last_decision = None
        if before is not None:
            state.last_result_at, state.last_event_id = before.occurred_at, before.event_id
            state.lead_id, state.plan_id = before.lead_id, before.plan_id
            if self.lead_caps:
                self._join(state.lead_id, phone_id)
            state.last_decision = before.decision
            if before.recall_state == "fired":  # before the late call
                state.eligible, state.eligible_at = True, before.fired_at
                if before.recall is not None:
                    state.eligible_reason = before.recall.reason
                    state.eligible_agent = before.recall.agent
            elif before.recall_state is not None:
                state.pending_recall_id = before.recall_id or before.event_id
                state.pending = before.recall
        events = [stored.event for stored in later]
        return sorted(events, key=lambda event: (event.occurred_at, event.event_id))
