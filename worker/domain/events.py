"""Call-result events: the wire schema of DESIGN.md section 5, validated into ``CallResult``.

``EventSchema`` is the contract as one msgspec schema: the worker, replay and the HTTP API
validate with it, and ``event_json_schema()`` exports it for dialer integrators
(``docs/event.schema.json``). A schema cannot say everything (a blank id, a NUL character, an
IANA zone, a timestamp's offset), so ``parse_event`` checks those after it.

Every malformed input is refused with ``InvalidEvent``, whose message names the field and says
what is wrong in one line, so that operators can fix the sender from the dead-letter store alone.
The wording comes from the precise field-by-field checks below (``_parse_precisely``), which run
only when the schema or a later check refuses an input: the good events, nearly all of them,
take the fast path alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any

import msgspec
import orjson

from worker.domain.rules import is_valid_timezone

__all__ = [
    "EVENT_FIELDS",
    "KNOWN_FIELDS",
    "MAX_EVENT_BYTES",
    "NO_EXTRA",
    "REQUIRED_FIELDS",
    "CallResult",
    "EventSchema",
    "InvalidEvent",
    "event_from_csv_row",
    "event_json_schema",
    "parse_event",
    "parse_event_json",
    "plain_event_json",
]

#: Columns of the contract, in order; CSV files use the same names.
EVENT_FIELDS = (
    "event_id",
    "plan_id",
    "lead_id",
    "phone_id",
    "sip_code",
    "occurred_at",
    "outcome_code",
    "timezone",
    "retry_after_s",
    "call_id",
    "callback_at",
    "callback_agent",
)
#: The contract's field names, as a set (anything else in an event is an extra field).
KNOWN_FIELDS = frozenset(EVENT_FIELDS)
_REQUIRED_TEXT = ("event_id", "plan_id", "lead_id", "phone_id")
#: The fields every event must carry (DESIGN.md section 5).
REQUIRED_FIELDS = (*_REQUIRED_TEXT, "sip_code", "occurred_at")
_INTEGER_FIELDS = ("sip_code", "retry_after_s")

# Ids are keys in the database and in every log line: 255 characters is generous for any dialer's
# UUIDs or composite keys, and keeps an index entry small. Codes and zone names are much shorter.
MAX_ID_LENGTH = 255
MAX_CODE_LENGTH = 64
# A year of Retry-After is already absurd; more would overflow date arithmetic.
MAX_RETRY_AFTER_S = 366 * 24 * 3600
# Far outside any real call, and it keeps date arithmetic (a year of delays) from overflowing.
MIN_YEAR, MAX_YEAR = 1970, 9000
# One event is a few hundred bytes; 64 KiB leaves room for the dialer's extra fields.
MAX_EVENT_BYTES = 64 * 1024


#: The extra fields of an event that has none (shared: a mapping proxy cannot be changed).
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


# --- the schema -----------------------------------------------------------------------------
# The descriptions are DESIGN.md section 5's. Blank text is refused after the schema (a pattern
# would cost a regular expression per field per event), so "pattern" is written into the JSON
# Schema for integrators but not checked by msgspec.
_NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}
_Id = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, extra_json_schema=_NOT_BLANK)
]
_Code = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_CODE_LENGTH, extra_json_schema=_NOT_BLANK)
]
# A string, parsed after the schema: datetime.fromisoformat takes more forms than RFC 3339 (no
# seconds, a space for the T), and the contract has always taken them.
_Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class EventSchema(msgspec.Struct, frozen=True, gc=False):
    """A call result, as the dialer publishes it: one JSON object (the recall scheduler's event
    contract, DESIGN.md section 5).

    Unknown extra fields are kept but ignored; a field given as null is absent. Beyond what the
    schema says, the worker refuses text that is blank or holds a NUL character, a `timezone`
    that is not an IANA zone it knows, timestamps that do not parse as an ISO-8601 date and time
    with a UTC offset in the years 1970-9000, and integers written with a fraction (486.0).
    """

    event_id: Annotated[
        _Id, msgspec.Meta(description="unique id of this result; the idempotency key")
    ]
    plan_id: Annotated[_Id, msgspec.Meta(description="the plan (campaign dialling plan)")]
    lead_id: Annotated[_Id, msgspec.Meta(description="the lead")]
    phone_id: Annotated[_Id, msgspec.Meta(description="the lead phone; recalls are per lead phone")]
    sip_code: Annotated[
        int, msgspec.Meta(ge=100, le=699, description="the carrier's final SIP response")
    ]
    occurred_at: Annotated[
        _Timestamp,
        msgspec.Meta(
            description="ISO-8601 with a UTC offset; a time without offset is rejected",
            examples=["2026-03-30T10:00:00+01:00"],
        ),
    ]
    outcome_code: Annotated[
        _Code | None, msgspec.Meta(description="system or user outcome code")
    ] = None
    timezone: Annotated[
        _Code | None,
        msgspec.Meta(description="IANA zone of the phone", examples=["Europe/London"]),
    ] = None
    retry_after_s: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRY_AFTER_S)] | None,
        msgspec.Meta(description="the SIP Retry-After header, in seconds"),
    ] = None
    call_id: Annotated[
        _Id | None, msgspec.Meta(description="the dialer's call id, kept for tracing")
    ] = None
    callback_at: Annotated[
        _Timestamp | None,
        msgspec.Meta(description="ISO-8601 with a UTC offset: when the agent booked the callback"),
    ] = None
    callback_agent: Annotated[
        _Id | None,
        msgspec.Meta(
            description="the agent who owns a personal callback; absent: anyone may take it"
        ),
    ] = None


class _ClosedEventSchema(EventSchema, frozen=True, gc=False, forbid_unknown_fields=True):
    """The schema refusing extra fields: JSON text decoded straight into it has none to keep,
    and text that has some takes the dictionary path, which keeps them."""


#: The JSON Schema's dialect (msgspec writes draft 2020-12).
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_json_schema() -> dict[str, Any]:
    """The event contract as a JSON Schema document (``docs/event.schema.json``)."""
    generated = msgspec.json.schema(EventSchema)
    body = generated["$defs"][generated["$ref"].rsplit("/", 1)[1]]
    body.pop("title", None)
    # The docstring's lines joined again, paragraph by paragraph, for tools that show the text.
    paragraphs = body["description"].split("\n\n")
    body["description"] = "\n\n".join(" ".join(part.split("\n")) for part in paragraphs)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "Call-result event",
        **body,
        # The default, said out loud: a dialer may send its own fields beside the contract's.
        "additionalProperties": True,
    }


class InvalidEvent(ValueError):
    """An event that does not meet the schema; ``str()`` is ``"<field>: <what is wrong>"``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class CallResult(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One validated call result. ``occurred_at`` is always timezone-aware.

    A frozen ``msgspec.Struct`` rather than a frozen dataclass: as immutable, and built ten times
    faster (a replay builds one per event). ``gc=False``: it holds no reference cycle.
    ``omit_defaults``: msgspec's JSON of it (replay's spilled runs) leaves out unset fields.
    """

    event_id: str
    plan_id: str
    lead_id: str
    phone_id: str
    sip_code: int
    occurred_at: datetime
    outcome_code: str | None = None
    timezone: str | None = None
    retry_after_s: int | None = None
    call_id: str | None = None
    #: When the agent booked the callback (aware), and the agent who owns a personal one.
    callback_at: datetime | None = None
    callback_agent: str | None = None
    extra: Mapping[str, Any] = NO_EXTRA

    def to_json(self) -> dict[str, Any]:
        """The event in its wire form (absent optional fields left out, extras kept)."""
        data: dict[str, Any] = {
            "event_id": self.event_id,
            "plan_id": self.plan_id,
            "lead_id": self.lead_id,
            "phone_id": self.phone_id,
            "sip_code": self.sip_code,
            "occurred_at": self.occurred_at.isoformat(),
        }
        for name in ("outcome_code", "timezone", "retry_after_s", "call_id"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.callback_at is not None:
            data["callback_at"] = self.callback_at.isoformat()
        if self.callback_agent is not None:
            data["callback_agent"] = self.callback_agent
        return {**self.extra, **data}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object"})
    return names.get(type(value), type(value).__name__)


def _text(data: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidEvent(name, "required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(name, f"must be a string, got {_describe(value)}")
    if not value.strip():
        raise InvalidEvent(name, "must not be empty")
    if len(value) > limit:
        raise InvalidEvent(name, f"longer than {limit} characters ({len(value)})")
    if "\x00" in value:
        raise InvalidEvent(name, "contains a NUL character")
    if not (value.isascii() or _encodable(value)):
        raise InvalidEvent(name, "is not valid Unicode (a lone surrogate)")
    return value


def _integer(data: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(name, f"must be an integer, got {_describe(value)}")
    if not low <= value <= high:
        raise InvalidEvent(name, f"must be between {low} and {high}, got {value}")
    return value


def _timestamp(data: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidEvent(name, "required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(name, f"must be an ISO-8601 string, got {_describe(value)}")
    return _moment(name, value)


def _moment(name: str, value: str) -> datetime:
    """The aware datetime of timestamp text, or ``InvalidEvent`` saying what is wrong with it."""
    shown = value if len(value) <= 40 else value[:40] + "..."
    # fromisoformat also takes a bare date or a week date; the contract wants a full timestamp.
    if len(value) < 16 or value[10:11] not in ("T", "t", " "):
        raise InvalidEvent(name, f"not an ISO-8601 date and time: {shown!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(name, f"not an ISO-8601 date and time: {shown!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEvent(name, f"no UTC offset in {shown!r}")
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise InvalidEvent(name, f"year must be {MIN_YEAR}-{MAX_YEAR}, got {shown!r}")
    return moment


def _parse_precisely(data: object) -> CallResult:
    """Validate ``data`` field by field, in the contract's order: the reference for what is
    accepted, and the wording of every refusal (the first fault found, one line)."""
    if not isinstance(data, dict):
        raise InvalidEvent("event", f"must be a JSON object, got {_describe(data)}")
    event_id, plan_id, lead_id, phone_id = (
        _text(data, name, MAX_ID_LENGTH, required=True) for name in _REQUIRED_TEXT
    )
    sip_code = _integer(data, "sip_code", 100, 699)
    if sip_code is None:
        raise InvalidEvent("sip_code", "required")
    occurred_at = _timestamp(data, "occurred_at", required=True)
    timezone = _text(data, "timezone", MAX_CODE_LENGTH, required=False)
    if timezone is not None and not is_valid_timezone(timezone):
        raise InvalidEvent("timezone", f"unknown IANA time zone {timezone!r}")
    # Most senders add nothing: one set comparison (C speed) spares the per-key loop.
    if data.keys() <= KNOWN_FIELDS:
        extra: Mapping[str, Any] = NO_EXTRA
    else:
        extra = MappingProxyType(
            {key: value for key, value in data.items() if key not in KNOWN_FIELDS}
        )
    return CallResult(
        event_id=event_id,  # type: ignore[arg-type]  # required=True never returns None
        plan_id=plan_id,  # type: ignore[arg-type]
        lead_id=lead_id,  # type: ignore[arg-type]
        phone_id=phone_id,  # type: ignore[arg-type]
        sip_code=sip_code,
        occurred_at=occurred_at,  # type: ignore[arg-type]  # required=True never returns None
        outcome_code=_text(data, "outcome_code", MAX_CODE_LENGTH, required=False),
        timezone=timezone,
        retry_after_s=_integer(data, "retry_after_s", 0, MAX_RETRY_AFTER_S),
        call_id=_text(data, "call_id", MAX_ID_LENGTH, required=False),
        # Few events book a callback: a key test spares the rest two calls.
        callback_at=(
            _timestamp(data, "callback_at", required=False) if "callback_at" in data else None
        ),
        callback_agent=(
            _text(data, "callback_agent", MAX_ID_LENGTH, required=False)
            if "callback_agent" in data
            else None
        ),
        extra=extra,
    )


def _encodable(value: str) -> bool:
    """False for text holding a lone surrogate, which no UTF-8 (JSON, database) can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_schema(event: EventSchema, extra: Mapping[str, Any]) -> CallResult:
    """The ``CallResult`` of an event the schema took, after the checks it cannot make.

    Raises ``InvalidEvent`` on a fault, not necessarily the one ``_parse_precisely`` names first:
    callers word the refusal with it.
    """
    for value in (
        event.event_id,
        event.plan_id,
        event.lead_id,
        event.phone_id,
        event.outcome_code,
        event.timezone,
        event.call_id,
        event.callback_agent,
    ):
        # What the schema does not express: blank, a NUL, a lone surrogate (inline: per event).
        if value is not None and (
            "\x00" in value or not value.strip() or not (value.isascii() or _encodable(value))
        ):
            raise InvalidEvent("event", "text the schema took and the checks refuse")
    zone = event.timezone
    if zone is not None and zone not in _KNOWN_ZONES:
        if not is_valid_timezone(zone):
            raise InvalidEvent("timezone", "unknown")
        _KNOWN_ZONES.add(zone)
    callback_at = event.callback_at
    return CallResult(
        event.event_id,
        event.plan_id,
        event.lead_id,
        event.phone_id,
        event.sip_code,
        _moment("occurred_at", event.occurred_at),
        event.outcome_code,
        zone,
        event.retry_after_s,
        event.call_id,
        None if callback_at is None else _moment("callback_at", callback_at),
        event.callback_agent,
        extra,
    )


# Zone names already found valid: a set lookup instead of a ZoneInfo call per event. Bounded by
# the zones that exist (a name is added only once ZoneInfo knows it).
_KNOWN_ZONES: set[str] = set()
_convert = msgspec.convert
_decode_closed = msgspec.json.Decoder(_ClosedEventSchema).decode


def parse_event(data: object) -> CallResult:
    """Validate one decoded event (a JSON object) into a ``CallResult``."""
    # Exactly a dict: msgspec would also take any mapping, which the contract does not.
    if type(data) is dict:
        try:
            event = _convert(data, EventSchema)
            # Most senders add nothing: one set comparison (C speed) spares the per-key loop.
            if data.keys() <= KNOWN_FIELDS:
                return _from_schema(event, NO_EXTRA)
            extra = {key: value for key, value in data.items() if key not in KNOWN_FIELDS}
            return _from_schema(event, MappingProxyType(extra))
        except ValueError:  # msgspec's ValidationError, or InvalidEvent
            pass  # worded below
    return _parse_precisely(data)


def plain_event_json(text: bytes | str) -> tuple[CallResult, str, str | None] | None:
    """The event of JSON text holding the contract's fields alone, every one valid; else None.

    Decoded straight into the schema, with no dictionary in between: the replay's fast path. The
    timestamps come back too, as the text gave them, for the caller to bound their length. None
    says nothing about why: the caller decodes the text and words the refusal (``parse_event``).
    """
    try:
        event = _decode_closed(text)
        return _from_schema(event, NO_EXTRA), event.occurred_at, event.callback_at
    except ValueError:  # msgspec's errors, InvalidEvent, a lone surrogate
        return None


def parse_event_json(payload: bytes | str) -> CallResult:
    """Decode and validate one event from JSON text."""
    size = len(payload.encode() if isinstance(payload, str) else payload)
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent("event", f"payload of {size} bytes is over the {MAX_EVENT_BYTES} limit")
    # One pass, straight into the schema, when the text is a valid event with no extra fields.
    # ValueError: msgspec's DecodeError and ValidationError, and UnicodeEncodeError for a str
    # holding a lone surrogate.
    try:
        return _from_schema(_decode_closed(payload), NO_EXTRA)
    except (ValueError, InvalidEvent):
        pass  # extra fields, or a fault: decoded again and worded below
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent("event", f"not valid JSON: {error}") from None
    return parse_event(data)


def event_from_csv_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """Turn a CSV row into the JSON form of an event: empty cells are absent, numbers are ints.

    A cell that is not a whole number is kept as text, so that validation names it precisely.
    """
    data: dict[str, Any] = {}
    for key, cell in row.items():
        if key is None or cell is None or cell == "":
            continue
        if key in _INTEGER_FIELDS:
            stripped = cell.strip()
            digits = stripped[1:] if stripped[:1] in "+-" else stripped
            data[key] = int(stripped) if digits.isdigit() and digits.isascii() else cell
        else:
            data[key] = cell
    return data
