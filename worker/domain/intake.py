"""Intake: a raw call result checked against the schema, the rules and the deciding clock.

What the worker, replay and ``recall decide`` all do first to an input: ``accept`` turns it into
a ``CallResult`` or refuses it with the contract's reason (``Rejected``); the helpers say what
the dead letter of a refused input holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from worker.domain.engine import Decision, PhoneHistory, decide
from worker.domain.events import (
    KNOWN_FIELDS,
    MAX_EVENT_BYTES,
    MAX_YEAR,
    MIN_YEAR,
    CallResult,
    InvalidEvent,
    parse_event,
    parse_event_json,
    plain_event_json,
)
from worker.domain.rules import Rules

__all__ = [
    "AheadOfClock",
    "Refused",
    "Rejected",
    "accept",
    "accept_line",
    "check_clock",
    "decide_alone",
    "event_id_of",
    "parse_instant",
    "raw_text",
]


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


def parse_instant(text: str, name: str) -> datetime:
    """A deciding clock given by a person or a client (``--now``, ``?now=``): ISO-8601 with an
    offset. Raises ``InvalidEvent`` naming ``name`` when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(name, f"not an ISO-8601 date and time: {text!r}") from None
    if moment.tzinfo is None:
        raise InvalidEvent(name, f"no UTC offset in {text!r}")
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise InvalidEvent(name, f"year must be {MIN_YEAR}-{MAX_YEAR}, got {text!r}")
    return moment


def check_clock(event: CallResult, now: datetime, skew_s: int) -> None:
    """Refuse ``event`` if it occurred more than ``skew_s`` seconds after ``now``.

    A dialer's clock can be wrong. Trusted, a call dated years ahead makes every real call for
    its phone look late (decided before it) and holds the phone until that date. Refused, it waits
    in the dead letters, and a replay of them takes it once the clock has passed it. ``now`` is
    the deciding clock: the worker's wall clock, or ``--now`` of ``recall decide`` and replay.
    ``skew_s`` is ``RECALL_CLOCK_SKEW_S``, which the caller reads.
    """
    limit = skew_s
    ahead = (event.occurred_at - now).total_seconds()
    if ahead > limit:
        raise AheadOfClock(
            "invalid_event",
            f"occurred_at: {event.occurred_at.isoformat()} is {_ahead(ahead)} ahead of the clock"
            f" ({now.astimezone(UTC).isoformat(timespec='seconds')}); the limit is"
            f" RECALL_CLOCK_SKEW_S={limit} s",
        )


def accept(raw: object, rules: Rules, now: datetime, skew_s: int) -> CallResult:
    """Validate one raw input (a decoded event or its JSON text) against the schema and rules.

    ``now`` is the deciding clock and ``skew_s`` the skew it allows, for ``check_clock``.
    """
    try:
        # Senders in other languages may put the event on the wire as JSON text.
        event = parse_event_json(raw) if isinstance(raw, str | bytes) else _parse_decoded(raw)
    except InvalidEvent as error:
        raise Rejected("invalid_event", str(error)) from None
    if event.plan_id not in rules.plans:
        raise Rejected("unknown_plan", f"plan_id: plan {event.plan_id!r} is not in the rules")
    check_clock(event, now, skew_s)
    return event


#: Longer than any timestamp the contract means (fromisoformat takes any number of digits of a
#: second's fraction): such an event is measured like one with extra fields.
_LONGEST_TIMESTAMP = 64


def accept_line(text: str, rules: Rules, now: datetime, skew_s: int) -> CallResult | None:
    """The event of a JSON line (its text, not decoded yet) that ``accept`` would take as it
    is, or None.

    The fast path for the lines of a replay, nearly all of them: the text is decoded straight into
    the schema (``plain_event_json``), which takes the contract's fields alone, and the event is
    checked as ``accept`` checks a decoded one (the size bound of ``_plainly_small``, the plan,
    the clock). None is anything else, a fault or an extra field: the caller decodes the line
    (``json_record``) and hands it to ``accept``, which keeps the extra fields or words the
    refusal.
    """
    plain = plain_event_json(text)
    if plain is None:
        return None
    event, occurred_at, callback_at = plain
    if len(occurred_at) > _LONGEST_TIMESTAMP or (
        callback_at is not None and len(callback_at) > _LONGEST_TIMESTAMP
    ):
        return None  # measured as any other event would be
    if event.plan_id not in rules.plans:
        return None
    try:
        check_clock(event, now, skew_s)
    except AheadOfClock:
        return None
    return event


def _parse_decoded(raw: object) -> CallResult:
    """Validate a decoded event, refusing one too large, or unencodable, to store as JSON."""
    if _plainly_small(raw):
        # The contract's fields alone, within the schema's limits, and short timestamps: once
        # the schema takes it, it encodes as JSON well within the limit, so it is not encoded
        # here to be measured (a replay's events, nearly all of them). A fault is worded below,
        # as for any event, so that the size is still the first fault named.
        try:
            return parse_event(raw)
        except InvalidEvent:
            pass
    try:
        size = len(orjson.dumps(raw))
    except TypeError:
        # A lone surrogate or an integer past 64 bits, which no JSON column can store. In a
        # field of the schema, its check says precisely what is wrong (an out-of-range sip_code
        # must not read as bad Unicode); else it is in an extra field.
        parse_event(raw)
        detail = "cannot be stored as JSON (a lone surrogate or an integer past 64 bits)"
        raise InvalidEvent(_unencodable_field(raw), detail) from None
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent("event", f"payload is over the {MAX_EVENT_BYTES}-byte limit")
    return parse_event(raw)


def _plainly_small(raw: object) -> bool:
    """Whether ``raw`` is a dict of the contract's fields only, with timestamps of sane length.

    Every other field the schema bounds (ids and codes by length, integers by range), so such an
    event, if valid, is far below ``MAX_EVENT_BYTES`` and encodable as JSON.
    """
    if type(raw) is not dict or not raw.keys() <= KNOWN_FIELDS:
        return False
    return all(
        not isinstance(value, str) or len(value) <= _LONGEST_TIMESTAMP
        for value in (raw.get("occurred_at"), raw.get("callback_at"))
    )


class Refused(ValueError):
    """An event ``decide_alone`` cannot decide: ``str()`` is the one-line reason."""


def decide_alone(
    payload: bytes | str, rules: Rules, now: datetime | None, skew_s: int
) -> tuple[CallResult, Decision]:
    """One event (JSON text) decided against ``rules`` alone: no history, no database.

    What ``recall decide`` and ``POST /v1/decide`` both do. ``now`` None decides as of the
    event's own ``occurred_at`` (so the same event and rules always give the same decision);
    a given ``now`` refuses an event more than ``skew_s`` seconds after it. A malformed event,
    an unknown plan or a clock refusal raises ``Refused`` with the line both print.
    """
    try:
        event = parse_event_json(payload)
    except InvalidEvent as error:
        raise Refused(f"invalid event: {error}") from None
    if now is None:
        now = event.occurred_at
    elif event.plan_id in rules.plans:  # else the decision says unknown_plan, as accept does
        try:
            check_clock(event, now, skew_s)
        except Rejected as error:
            raise Refused(f"{error.reason}: {error.detail}") from None
    decision = decide(event, rules, PhoneHistory(), now)
    if decision.action == "reject":
        raise Refused(f"{decision.reason}: {decision.explanation}")
    return event, decision
