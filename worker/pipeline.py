"""Ingestion: validate raw call results, decide the good ones, dead-letter the bad ones.

This is the domain action behind both ingestion tasks and ``recall dead-letters replay``: the
caller opens the transaction, this does the work in bulk inside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import get_settings
from worker.engine import Decision
from worker.events import MAX_EVENT_BYTES, CallResult, InvalidEvent, parse_event, parse_event_json
from worker.models import DeadLetter
from worker.rules import Rules
from worker.store import Letter, apply_events, record_dead_letters

__all__ = [
    "AheadOfClock",
    "IngestReport",
    "Rejected",
    "accept",
    "check_clock",
    "event_id_of",
    "ingest",
    "raw_text",
    "replay_dead_letters",
]


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


def raw_text(raw: object) -> str:
    """The payload as text for the dead-letter store, whatever it was."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, str):
        return raw
    try:
        return orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return repr(raw)


def event_id_of(raw: object) -> str | None:
    """The ``event_id`` a raw input carries, when it has a text one: to file its dead letter by."""
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _event_id_of(raw: object) -> str | None:
    value = event_id_of(raw)
    return value[:255] if value is not None else None


def _unencodable_field(raw: object) -> str:
    """The first field of ``raw`` that cannot be written as JSON (UTF-8), for the reason line."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            try:
                orjson.dumps({key: value})
            except TypeError:
                return key if isinstance(key, str) and key.isprintable() else "event"
    return "event"


class Rejected(ValueError):
    """An input that cannot be taken: ``reason`` is the contract's, ``detail`` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AheadOfClock(Rejected):
    """An event dated further ahead of the deciding clock than ``RECALL_CLOCK_SKEW_S`` allows."""


def _ahead(seconds: float) -> str:
    if seconds >= 86_400:
        days = int(seconds // 86_400)
        return f"{days:,} day{'s' if days > 1 else ''}"
    if seconds >= 3600:
        return f"{seconds // 360 / 10:.1f} hours"  # rounded down, as days are
    return f"{seconds:,.0f} s"


def check_clock(event: CallResult, now: datetime, skew_s: int | None = None) -> None:
    """Refuse ``event`` if it occurred more than ``skew_s`` seconds after ``now``.

    A dialer's clock can be wrong. Trusted, a call dated years ahead makes every real call for
    its phone look late (decided before it) and holds the phone until that date. Refused, it waits
    in the dead letters, and a replay of them takes it once the clock has passed it. ``now`` is
    the deciding clock: the worker's wall clock, or ``--now`` of ``recall decide`` and replay.
    ``skew_s`` defaults to ``RECALL_CLOCK_SKEW_S``.
    """
    limit = get_settings().clock_skew_s if skew_s is None else skew_s
    ahead = (event.occurred_at - now).total_seconds()
    if ahead > limit:
        raise AheadOfClock(
            "invalid_event",
            f"occurred_at: {event.occurred_at.isoformat()} is {_ahead(ahead)} ahead of the clock"
            f" ({now.astimezone(UTC).isoformat(timespec='seconds')}); the limit is"
            f" RECALL_CLOCK_SKEW_S={limit} s",
        )


def accept(raw: object, rules: Rules, now: datetime, skew_s: int | None = None) -> CallResult:
    """Validate one raw input (a decoded event or its JSON text) against the schema and rules.

    ``now`` is the deciding clock, for ``check_clock``.
    """
    try:
        # Senders in other languages may put the event on the wire as JSON text.
        if isinstance(raw, str | bytes):
            event = parse_event_json(raw)
        else:
            try:
                size = len(orjson.dumps(raw))
            except TypeError:
                # A lone surrogate or an integer past 64 bits, which no JSON column can store. In
                # a field of the schema, its check says precisely what is wrong (an out-of-range
                # sip_code must not read as bad Unicode); else it is in an extra field.
                parse_event(raw)
                detail = "cannot be stored as JSON (a lone surrogate or an integer past 64 bits)"
                raise InvalidEvent(_unencodable_field(raw), detail) from None
            if size > MAX_EVENT_BYTES:
                raise InvalidEvent("event", f"payload is over the {MAX_EVENT_BYTES}-byte limit")
            event = parse_event(raw)
    except InvalidEvent as error:
        raise Rejected("invalid_event", str(error)) from None
    if event.plan_id not in rules.plans:
        raise Rejected("unknown_plan", f"plan_id: plan {event.plan_id!r} is not in the rules")
    check_clock(event, now, skew_s)
    return event


def ingest(
    session: Session, payloads: Sequence[object], rules: Rules, now: datetime, *, task: str
) -> IngestReport:
    """Validate, decide and store ``payloads`` (decoded events or JSON texts) in one go."""
    good: list[CallResult] = []
    letters: list[Letter] = []

    def reject(raw: object, reason: str, detail: str, event_id: str | None) -> None:
        letters.append(Letter(task, reason, detail, raw_text(raw), now, event_id))

    taken: list[bool] = []
    for raw in payloads:
        try:
            good.append(accept(raw, rules, now))
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
    session: Session, rules: Rules, now: datetime, ids: Sequence[int] | None = None
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
            taken.append(accept(letter.payload, rules, now))
        except Rejected as error:
            letter.reason, letter.detail = error.reason, error.detail
            refused += 1
            continue
        letter.status, letter.replayed_at = "replayed", now
    return IngestReport(apply_events(session, taken, rules, now).decisions), refused
