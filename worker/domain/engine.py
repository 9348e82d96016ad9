"""The decision: what one call result means for its phone's next dial (DESIGN.md section 2).

``decide`` is a pure function of (event, rules, the phone's history, now): it reads no clock, no
database and no broker, so the worker, the replay command and the tests all run the same code.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC as UTC_ZONE
from datetime import date, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, Literal, cast

import msgspec
import orjson
import pendulum

from worker.domain.events import CallResult
from worker.domain.rules import AttemptCap, CallingHours, Duration, Outcome, Plan, Rules
from worker.domain.zones import ZoneTable, epoch_us, zone_table

__all__ = [
    "APPLYING_ACTIONS",
    "Decision",
    "PendingRecall",
    "PhoneHistory",
    "adjust_due",
    "decide",
    "local_text",
    "next_opening",
    "phone_zone",
]

Action = Literal["recall", "suppress", "duplicate", "stale", "reject"]
#: The actions that change a phone (``Decision.applies``); the others leave its schedule alone.
APPLYING_ACTIONS: tuple[Action, ...] = ("recall", "suppress")
Source = Literal["user_outcome", "system_outcome", "sip_code"]


class PendingRecall(msgspec.Struct, frozen=True, gc=False):
    """The recall a phone is waiting for: when, which rule and reason, and a callback's agent."""

    due_at: datetime
    source: str
    rule: str
    reason: str
    #: The agent who owns a personal callback; None: anyone may take it.
    agent: str | None = None


#: Times of calls: epoch microseconds (what the engine counts), or aware datetimes.
Times = tuple[int, ...] | tuple[datetime, ...]


class PhoneHistory(msgspec.Struct, frozen=True, gc=False):
    """What the engine needs to know about a phone before this event.

    ``attempts`` are the times of earlier call results (any order), as epoch microseconds
    (``worker.domain.zones.epoch_us``; aware datetimes are taken too);
    ``system_recalls`` counts the system recalls scheduled for the phone so far;
    ``seen_event_ids`` answers whether this event was already processed (the worker passes the
    id it found, replay a per-phone set). ``lead_attempts`` are the times of the call results on
    the lead's other phones (what ``lead_max_attempts`` counts besides the phone's own), in the
    same form; only needed when the plan has such caps.
    """

    attempts: Times = ()
    last_applied_at: datetime | None = None
    system_recalls: int = 0
    pending: PendingRecall | None = None
    seen_event_ids: Container[str] = frozenset()
    lead_attempts: Times = ()


def _stamps(times: Times) -> tuple[int, ...]:
    """``times`` as epoch microseconds (a caller holding datetimes may pass them)."""
    if times and isinstance(times[0], datetime):
        return tuple(map(epoch_us, times))
    return cast(tuple[int, ...], times)


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The outcome for one event, with everything needed to explain it."""

    event_id: str
    phone_id: str
    action: Action
    due_at: datetime | None
    source: Source | None
    rule: str | None
    reason: str
    adjustments: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    explanation: str = ""
    #: The pending recall this decision replaces (never fires); not part of the JSON form.
    supersedes: PendingRecall | None = None
    #: For a stale call that puts the phone over an attempt cap: the pending recall's new,
    #: later due time (not part of the JSON form).
    reschedules: datetime | None = None
    #: The version of the rules that decided (``Rules.version``, DESIGN.md section 9).
    rules_version: str = ""
    #: The agent who owns the callback this decision books (the event's ``callback_agent``);
    #: kept with the recall, not part of the decision's JSON form.
    agent: str | None = None
    #: ``due_at`` as epoch microseconds, where the engine worked it out (not part of the JSON
    #: form): a replay sorts, times and writes the recall from it without asking the zone again.
    due_us: int | None = None

    def due_timestamp(self) -> float:
        """``due_at.timestamp()``, exactly (the same division of the same microseconds)."""
        assert self.due_at is not None
        return self.due_us / 1_000_000 if self.due_us is not None else self.due_at.timestamp()

    @property
    def is_system_recall(self) -> bool:
        """A scheduled recall that counts against the plan's ``max_recalls``."""
        return self.action == "recall" and self.source != "user_outcome"

    @property
    def keeps_pending(self) -> bool:
        """A result that leaves the phone's pending callback as it is (``callback_pending``)."""
        return self.reason == "callback_pending"

    @property
    def applies(self) -> bool:
        """Whether the decision changes the phone (recall or suppress); the others do not."""
        return self.action in APPLYING_ACTIONS

    def _due_iso(self) -> str | None:
        # From the engine's microseconds when it gave them: no question to the zone.
        if self.due_at is None:
            return None
        if self.due_us is None:
            return _utc_iso(self.due_at)
        return utc_iso_us(self.due_us)

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON shape (DESIGN.md section 7)."""
        return {
            "event_id": self.event_id,
            "phone_id": self.phone_id,
            "action": self.action,
            "due_at": self._due_iso(),
            "source": self.source,
            "rule": self.rule,
            "reason": self.reason,
            "adjustments": list(self.adjustments),
            "warnings": list(self.warnings),
            "explanation": self.explanation,
            "rules_version": self.rules_version,
        }

    def json_line(self) -> bytes:
        """``to_json`` as one line of JSON Lines, its newline included (what replay writes)."""
        # The same object, with the tuples as they are: orjson writes a tuple as a list.
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "phone_id": self.phone_id,
                "action": self.action,
                "due_at": self._due_iso(),
                "source": self.source,
                "rule": self.rule,
                "reason": self.reason,
                "adjustments": self.adjustments,
                "warnings": self.warnings,
                "explanation": self.explanation,
                "rules_version": self.rules_version,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )


UTC = pendulum.UTC
_EPOCH_DATE = date(1970, 1, 1)


def utc_iso_us(at: int) -> str:
    """The instant ``at`` (epoch microseconds) as ``isoformat`` writes it in UTC.

    A replay writes one per recall: the date and the time of day come from memos (recalls fall
    on few dates, and often at the same times), a third of the cost of making the datetime.
    """
    seconds, micro = divmod(at, 1_000_000)
    days, second = divmod(seconds, 86_400)
    if micro:
        return f"{_iso_date(days)}T{_iso_time(second)}.{micro:06d}+00:00"
    return f"{_iso_date(days)}T{_iso_time(second)}+00:00"


@lru_cache(maxsize=1 << 16)
def _iso_date(days: int) -> str:
    return (_EPOCH_DATE + timedelta(days)).isoformat()


@cache  # at most 86,400 times of day
def _iso_time(second: int) -> str:
    return f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"


def phone_zone(rules: Rules, event: CallResult) -> str:
    """The phone's zone name: the event's, else its plan's, else the rules' default."""
    plan = rules.plans.get(event.plan_id)
    return event.timezone or (plan.timezone if plan else None) or rules.default_timezone


def timezone(name: str) -> pendulum.Timezone:
    """The zone object for ``name``, loaded once (pendulum reads the zone file on every call).

    The same object as the zone table's (``worker.domain.zones``), so datetimes made at the
    edges and the ones the engine is given compare in one zone.
    """
    return zone_table(name).tz


def _utc_iso(moment: datetime) -> str:
    # Formatting only (no arithmetic): the standard library's C code is ten times faster here.
    return moment.astimezone(UTC_ZONE).isoformat()


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the precedence rules (steps 3-6) said, before adjustments."""

    source: Source | None
    rule: str
    reason: str
    text: str
    after: Duration | None = None  # None: suppress
    #: A callback outcome: due at the event's callback_at, else after ``after``.
    callback: bool = False


def _rule_verdict(event: CallResult, rules: Rules, plan: Plan) -> tuple[_Verdict, tuple[str, ...]]:
    """Steps 3-6 for ``event``, worked out once per (plan, known outcome, SIP code)."""
    outcome = rules.outcomes.get(event.outcome_code) if event.outcome_code else None
    warnings = (
        (f"unknown_outcome:{event.outcome_code}",) if event.outcome_code and not outcome else ()
    )
    # An unknown outcome code is no outcome for the rules: keying by the known code only keeps
    # the memo bounded whatever senders put in the field.
    key = (plan.id, outcome.code if outcome is not None else None, event.sip_code)
    verdict: _Verdict | None = rules.verdicts.get(key)
    if verdict is None:
        verdict = rules.verdicts[key] = _precedence(outcome, event.sip_code, rules, plan)
    return verdict, warnings


def _precedence(outcome: Outcome | None, code: int, rules: Rules, plan: Plan) -> _Verdict:
    # 3. A user outcome (agent disposition) decides, whatever the plan's Can Recall says.
    if outcome is not None and outcome.kind == "user" and outcome.recall != "inherit":
        name = f"user outcome {outcome.code} ({outcome.description})"
        rule = f"outcome:{outcome.code}"
        if outcome.recall == "never":
            return _Verdict("user_outcome", rule, "user_final", f"{name} is final")
        if outcome.recall == "callback":
            text = f"{name} booked a callback"
            return _Verdict(
                "user_outcome", rule, "user_recall", text, outcome.recall_after, callback=True
            )
        return _Verdict(
            "user_outcome",
            rule,
            "user_recall",
            f"{name} recalls after {outcome.recall_after}",
            outcome.recall_after,
        )

    # 4. Can Recall off: no system recall of any kind on this plan.
    if not plan.can_recall:
        return _Verdict(
            None, plan.rule, "plan_can_recall_off", f"plan {plan.id} has Can Recall off"
        )

    # 5. A system outcome: the plan's own timing, else the outcome table.
    if outcome is not None and outcome.kind == "system":
        name = f"system outcome {outcome.code} ({outcome.description})"
        planned = plan.system_recalls.get(outcome.code)
        if planned is not None:
            text = f"plan {plan.id} recalls {name} after {planned}"
            return _Verdict("system_outcome", plan.rule, "system_outcome_recall", text, planned)
        rule = f"outcome:{outcome.code}"
        if outcome.recall == "never":
            return _Verdict("system_outcome", rule, "system_outcome_final", f"{name} is final")
        if outcome.recall == "after":
            text = f"{name} recalls after {outcome.recall_after}"
            return _Verdict(
                "system_outcome", rule, "system_outcome_recall", text, outcome.recall_after
            )

    # 6. The SIP code: its active row, else its class fallback.
    if code < 400:
        return _Verdict("sip_code", f"sip:{code}", "no_failure", f"SIP {code} is not a failure")
    row = rules.sip_rule_for(code)
    if row is None:
        text = f"SIP {code} has no active row and no class fallback"
        return _Verdict("sip_code", f"sip:{code}", "unknown_sip_code", text)
    name = f"SIP {code} {row.description}" if row.code == code else f"SIP {code} (by {row.rule})"
    if not row.recall:
        return _Verdict("sip_code", row.rule, "sip_no_recall", f"{name} does not recall")
    text = f"{name} recalls after {row.recall_after}"
    return _Verdict("sip_code", row.rule, "sip_recall", text, row.recall_after)


def next_opening(moment: datetime, hours: CallingHours) -> datetime:
    """The first instant at or after ``moment`` inside the calling hours, in moment's zone.

    Calling hours are read on the phone's local clock: an instant is inside them when the local
    wall-clock time then is inside one of the ranges of its local date (start included, end
    excluded). Each range's local start and end are mapped to instants, and a DST change decides
    the rest (README, "The decision"):

    - a range wholly in a spring-forward gap is never read on the clock: closed that day;
    - a range that starts in a gap opens at the end of the gap (the first instant that exists
      after its start); one that ends in a gap closes at the start of the gap;
    - a fall-back overlap reads its hour twice: a range opens at the first occurrence of its
      start (the earlier offset, fold=0), and is open during both occurrences for the part of
      the repeated hour inside it; one ending in the overlap closes at the first occurrence of
      its end and opens again at the second occurrence of the repeated hour, until its end.

    The work is done on epoch microseconds (``ZoneTable.next_opening``); this is its edge.
    """
    assert isinstance(moment.tzinfo, pendulum.Timezone), "calling hours need a named zone"
    table = zone_table(moment.tzinfo.key)
    at = epoch_us(moment)
    opening = table.next_opening(at, hours)
    return moment if opening == at else table.to_datetime(opening)


#: A local time in explanations: ``Wed 2026-01-14 10:00 GMT`` (``strftime``'s ``%a %Y-%m-%d
#: %H:%M %Z`` in the C locale, which _format writes in half the time).
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _format(moment: datetime) -> str:
    return (
        f"{_WEEKDAYS[moment.weekday()]} {moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f" {moment.hour:02d}:{moment.minute:02d} {moment.tzname() or ''}"
    )


def local_text(moment: datetime) -> str:
    """``moment`` on its zone's wall clock, for explanations (``Wed 2026-01-14 10:00 GMT``)."""
    # Keyed by zone and fold too: equal instants in two zones read differently, and datetimes of
    # one zone compare by wall clock alone, so a repeated hour's two halves would be one key.
    return _local_text(moment, moment.tzinfo, moment.fold)


# Calling-hours openings repeat for every phone of a zone: format each once.
@lru_cache(maxsize=4096)
def _local_text(moment: datetime, _zone: object, _fold: int) -> str:
    return _format(moment)


@lru_cache(maxsize=4096)
def _text_at(table: ZoneTable, at: int) -> str:
    """``local_text`` of the instant ``at`` (epoch microseconds) in ``table``'s zone."""
    return _format(table.to_datetime(at))


# The limits below work on epoch microseconds (``worker.domain.zones``): comparing, sorting and
# adding calendar days to integers costs a tenth of doing it on datetimes in a zone, and instants
# compare as instants (datetimes of one zone compare by wall clock, which a repeated DST hour
# makes ambiguous).


def _cap_allows(cap: AttemptCap, due: int, stamps: Sequence[int], table: ZoneTable) -> int:
    """The earliest instant at or after ``due`` at which the attempts ``stamps`` leave room
    under ``cap``."""
    count = cap.count
    if len(stamps) < count:  # fewer attempts than the cap allows in any window or day
        return due
    within = cap.within
    if within is None:  # per local calendar day
        # Moving to the next midnight may meet a day that is full too (calls booked ahead).
        for _ in range(len(stamps) + 1):
            start, end = table.day_bounds(due)
            if len([stamp for stamp in stamps if start <= stamp < end]) < count:
                break
            due = end
        return due
    # Only attempts whose window can still be open at `due` count; skipping the rest before any
    # zone arithmetic keeps a long history cheap.
    horizon = due - within.longest_us
    recent = [stamp for stamp in stamps if stamp > horizon]
    if len(recent) < count:
        return due
    # An attempt holds a place in the window until its end; count-1 may stay, so wait for the
    # count-th latest end. Ends, not attempts, are sorted: adding calendar days need not keep
    # the order of times inside a repeated DST hour.
    add = table.add
    ends = sorted([add(stamp, within) for stamp in recent], reverse=True)
    return max(due, ends[count - 1])


def _open_at(due: int, plan: Plan, table: ZoneTable) -> tuple[int, date | None]:
    """The first instant at or after ``due`` in the calling hours and not on a closed date.

    Also returns the last closed date skipped, if any (for the explanation).
    """
    skipped = None
    for _ in range(len(plan.closed_dates) + 1):
        if plan.calling_hours is not None:
            due = table.next_opening(due, plan.calling_hours)
        if not plan.closed_dates:
            break
        ordinal = table.ordinal(due)
        day = date.fromordinal(ordinal)
        if day not in plan.closed_dates:
            break
        skipped = day
        due = table.midnight(ordinal + 1)
    return due, skipped


def _moved(adjustments: list[str], name: str) -> None:
    if name not in adjustments:
        adjustments.append(name)


def adjust_due(
    due: int,
    plan: Plan,
    attempts: Sequence[int],
    table: ZoneTable,
    adjustments: list[str],
    notes: list[str],
    *,
    lead_attempts: Sequence[int] = (),
    not_on: int | None = None,
) -> int:
    """Move ``due`` to the earliest instant at or after it that every limit of ``plan`` allows.

    The limits (DESIGN.md section 2, step 7): ``max_attempts`` over the phone's ``attempts``,
    ``lead_max_attempts`` over those and the lead's other phones' ``lead_attempts`` (``attempts``
    includes the call being decided, where there is one), never on the local date ``not_on``
    (an ordinal: the call's, when its outcome says ``not_same_day``), and the calling hours
    without the closed dates. Moving for one limit may break another, so they are applied in
    turn until none moves it. Each adjustment is named in ``adjustments`` once, in the order
    first applied; ``notes`` say what moved it and to when. Instants are epoch microseconds; the
    local calendar is ``table``'s zone.
    """
    if not plan.settles_slowly:
        # Rolling caps, not_same_day and calling hours alone (the replay's hot path) settle in
        # one pass, taken in the loop's order below: each allows every instant after one it
        # allows (a later instant keeps every rolling window it met, and stays past the call's
        # date), so a second pass would move nothing.
        for cap in plan.max_attempts:
            allowed = _cap_allows(cap, due, attempts, table)
            if allowed > due:
                due = allowed
                _moved(adjustments, "max_attempts")
                notes.append(f"moved to {_text_at(table, due)} by the cap of {cap}")
        if not_on is not None:
            after = table.midnight(not_on + 1)
            if due < after:
                due = after
                adjustments.append("not_same_day")
                notes.append(f"moved to {_text_at(table, due)}: not on the day of the call")
        if plan.calling_hours is not None:
            opening = table.next_opening(due, plan.calling_hours)
            if opening != due:
                due = opening
                adjustments.append("calling_hours")
                notes.append(f"moved to the next calling hours, {_text_at(table, due)}")
        return due
    lead: Sequence[int] = ()
    if plan.lead_max_attempts:
        lead = (*attempts, *lead_attempts)
    caps = (
        ("max_attempts", "the cap", plan.max_attempts, attempts),
        ("lead_max_attempts", "the lead's cap", plan.lead_max_attempts, lead),
    )
    # Each pass can only move `due` later, until one moves it no more; the bound keeps a
    # contradictory plan from looping. Only the first pass asks every limit. After it, a rolling
    # cap allows every later instant (as above) and `due` stays past the call's date; the last
    # step left it open, where the calling hours and closed dates would leave it as it is. So a
    # later pass asks the per-day caps alone (a later day may be full), and the calling hours
    # again only once one of those has moved it.
    for first in (True, *(False,) * 63):
        start = due
        for name, whose, limits, counted in caps:
            for cap in limits:
                if not first and cap.within is not None:
                    continue
                allowed = _cap_allows(cap, due, counted, table)
                if allowed > due:
                    due = allowed
                    _moved(adjustments, name)
                    notes.append(f"moved to {_text_at(table, due)} by {whose} of {cap}")
        if not first and due == start:
            break
        if not_on is not None:
            after = table.midnight(not_on + 1)
            if due < after:
                due = after
                _moved(adjustments, "not_same_day")
                notes.append(f"moved to {_text_at(table, due)}: not on the day of the call")
        opening, closed = _open_at(due, plan, table)
        if opening != due:
            due = opening
            _moved(adjustments, "calling_hours")
            if closed is not None:
                notes.append(
                    f"moved to {_text_at(table, due)}, past the closed date {closed.isoformat()}"
                )
            else:
                notes.append(f"moved to the next calling hours, {_text_at(table, due)}")
        if due == start:
            break
    return due


def _occurred_us(event: CallResult, given: int | None) -> int:
    return epoch_us(event.occurred_at) if given is None else given


def decide(
    event: CallResult,
    rules: Rules,
    history: PhoneHistory,
    now: datetime,
    *,
    occurred_us: int | None = None,
) -> Decision:
    """Decide what ``event`` means for its phone, given the rules, its history and ``now``.

    ``occurred_us`` is ``epoch_us(event.occurred_at)``, for a caller that has worked it out
    already (the timeline does, once per event).
    """
    version = rules.version

    def plain(action: Action, reason: str, text: str) -> Decision:
        return Decision(
            event.event_id, event.phone_id, action, None, None, None, reason, (), (), text,
            rules_version=version,
        )  # fmt: skip

    # 1. Already processed: nothing changes.
    if event.event_id in history.seen_event_ids:
        return plain("duplicate", "duplicate", f"event {event.event_id} was already processed")
    plan = rules.plans.get(event.plan_id)
    if plan is None:
        return plain("reject", "unknown_plan", f"plan {event.plan_id!r} is not in the rules")
    # 2. Older than what the phone already reflects: an attempt, but no schedule change.
    if history.last_applied_at is not None and event.occurred_at < history.last_applied_at:
        last = _utc_iso(history.last_applied_at)
        text = f"older than the last applied result ({last})"
        pending = history.pending
        if pending is None or not (plan.max_attempts or plan.lead_max_attempts):
            return plain("stale", "stale", text)
        # It changes no decision, but it was a call: the pending recall must still respect the
        # caps with it counted, as it would have had the calls arrived in order. (Its own
        # not_same_day was applied when it was decided; this call decides no recall.)
        table = zone_table(phone_zone(rules, event))
        due = epoch_us(pending.due_at)
        notes: list[str] = []
        moved = adjust_due(
            due, plan, (*_stamps(history.attempts), _occurred_us(event, occurred_us)), table, [],
            notes, lead_attempts=_stamps(history.lead_attempts),
        )  # fmt: skip
        if moved == due:
            return plain("stale", "stale", text)
        return Decision(
            event.event_id, event.phone_id, "stale", None, None, None, "stale", (), (),
            f"{text}; the pending recall is {'; '.join(notes)}", None,
            table.to_datetime(moved), version,
        )  # fmt: skip

    verdict, warnings = _rule_verdict(event, rules, plan)
    if event.callback_at is not None and not verdict.callback:
        warnings = (*warnings, "callback_at_ignored")
    supersedes = history.pending
    if (
        supersedes is not None
        and supersedes.reason == "callback"
        and verdict.source != "user_outcome"
        and event.occurred_at < supersedes.due_at
    ):
        # A pending callback is a promise to the customer: a system rule does not move it.
        booked = local_text(supersedes.due_at.astimezone(timezone(phone_zone(rules, event))))
        text = (
            f"{verdict.text}, but the callback for {booked} ({supersedes.rule}) is pending:"
            " no recall; the callback keeps its time"
        )
        return Decision(
            event.event_id, event.phone_id, "suppress", None, verdict.source, supersedes.rule,
            "callback_pending", (), warnings, text, rules_version=version,
        )  # fmt: skip
    replaced = (
        f"; replaces the pending recall due {_utc_iso(supersedes.due_at)}" if supersedes else ""
    )

    def suppress(source: Source | None, rule: str, reason: str, text: str) -> Decision:
        return Decision(
            event.event_id, event.phone_id, "suppress", None, source, rule, reason,
            (), warnings, f"{text}: no recall{replaced}", supersedes, rules_version=version,
        )  # fmt: skip

    if verdict.after is None:
        return suppress(verdict.source, verdict.rule, verdict.reason, verdict.text)

    # 7. Adjustments, in the contract's order.
    # From here on instants are epoch microseconds, the local calendar the phone zone's table.
    table = zone_table(phone_zone(rules, event))
    occurred = _occurred_us(event, occurred_us)
    reason, text, agent = verdict.reason, verdict.text, None
    if verdict.callback:
        agent = event.callback_agent
        personal = f" (agent {agent})" if agent is not None else ""
        if event.callback_at is not None:
            due = epoch_us(event.callback_at)
            reason, text = "callback", f"{text}{personal} for {_text_at(table, due)}"
        else:
            due = table.add(occurred, verdict.after)
            warnings = (*warnings, "callback_at_missing")
            text = f"{text}{personal} with no callback_at, so recalls after {verdict.after}"
    else:
        due = table.add(occurred, verdict.after)
    adjustments: list[str] = []
    notes = [text]

    if event.retry_after_s is not None:
        floor = occurred + event.retry_after_s * 1_000_000  # elapsed time
        if floor > due:
            due = floor
            adjustments.append("retry_after")
            notes.append(f"held back by Retry-After {event.retry_after_s}s")

    limit = plan.max_recalls
    if verdict.source != "user_outcome" and limit is not None and history.system_recalls >= limit:
        text = (
            f"{verdict.text}, but plan {plan.id} allows {limit} system recalls"
            f" and the phone has had {history.system_recalls}"
        )
        return suppress(verdict.source, plan.rule, "max_recalls", text)

    now_at = occurred if now is event.occurred_at else epoch_us(now)
    if due < now_at:
        due = now_at
        notes.append("already due when decided, so due now")

    outcome = rules.outcomes.get(event.outcome_code) if event.outcome_code else None
    due = adjust_due(
        due, plan, (*_stamps(history.attempts), occurred), table, adjustments, notes,
        lead_attempts=_stamps(history.lead_attempts),
        not_on=table.ordinal(occurred) if outcome is not None and outcome.not_same_day else None,
    )  # fmt: skip

    return Decision(
        event.event_id,
        event.phone_id,
        "recall",
        table.to_datetime(due),
        verdict.source,
        verdict.rule,
        reason,
        tuple(adjustments),
        warnings,
        "; ".join(notes) + replaced,
        supersedes,
        rules_version=version,
        agent=agent,
        due_us=due,
    )
