"""Tests for worker.events: the call-result event contract (DESIGN.md section 5)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from worker.domain.events import (
    EVENT_FIELDS,
    MAX_EVENT_BYTES,
    CallResult,
    InvalidEvent,
    event_from_csv_row,
    parse_event,
    parse_event_json,
)

REQUIRED = ("event_id", "plan_id", "lead_id", "phone_id", "sip_code", "occurred_at")


def valid(**changes: Any) -> dict[str, Any]:
    """A complete valid event; ``changes`` replace fields (``None`` removes one)."""
    event: dict[str, Any] = {
        "event_id": "e1",
        "plan_id": "default",
        "lead_id": "L1",
        "phone_id": "L1-P1",
        "sip_code": 486,
        "occurred_at": "2026-03-30T10:00:00+01:00",
        "outcome_code": "SYSBUSY",
        "timezone": "Europe/London",
        "retry_after_s": 120,
        "call_id": "c-123",
        "callback_at": "2026-03-31T15:30:00+01:00",
        "callback_agent": "agent-7",
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def minimal(**changes: Any) -> dict[str, Any]:
    return valid(
        outcome_code=None,
        timezone=None,
        retry_after_s=None,
        call_id=None,
        callback_at=None,
        callback_agent=None,
        **changes,
    )


# --- valid events ---------------------------------------------------------------------------


def test_valid_event_parses_with_types() -> None:
    event = parse_event(valid(dialer_node="n7", attempt_no=3))
    assert isinstance(event, CallResult)
    assert event.event_id == "e1"
    assert event.plan_id == "default"
    assert event.lead_id == "L1"
    assert event.phone_id == "L1-P1"
    assert event.sip_code == 486
    assert type(event.sip_code) is int
    assert event.outcome_code == "SYSBUSY"
    assert event.timezone == "Europe/London"
    assert event.retry_after_s == 120
    assert event.call_id == "c-123"
    assert event.occurred_at == datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=1)
    assert dict(event.extra) == {"dialer_node": "n7", "attempt_no": 3}


def test_minimal_event_leaves_optionals_none() -> None:
    event = parse_event(minimal())
    assert event.outcome_code is None
    assert event.timezone is None
    assert event.retry_after_s is None
    assert event.call_id is None
    assert dict(event.extra) == {}


def test_null_optional_field_is_absent() -> None:
    event = parse_event(valid(outcome_code=None) | {"timezone": None, "retry_after_s": None})
    assert event.timezone is None
    assert event.retry_after_s is None
    assert "timezone" not in event.to_json()


def test_extra_is_read_only_and_event_frozen() -> None:
    event = parse_event(valid(x=1))
    with pytest.raises(TypeError):
        event.extra["x"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.sip_code = 200  # type: ignore[misc]


def test_to_json_round_trip() -> None:
    raw = valid(dialer_node="n7", nested={"a": [1, 2]})
    event = parse_event(raw)
    wire = event.to_json()
    assert wire == raw
    assert parse_event(wire) == event
    assert parse_event_json(orjson.dumps(wire)) == event
    assert parse_event(minimal()).to_json() == minimal()


def test_to_json_contract_fields_win_over_extras() -> None:
    wire = parse_event(valid(extra_field="kept")).to_json()
    assert wire["extra_field"] == "kept"
    assert set(EVENT_FIELDS) <= set(wire)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-03-30T09:00:00Z", datetime(2026, 3, 30, 9, tzinfo=UTC), id="Z"),
        pytest.param(
            "2026-03-30T09:00:00.250+00:00",
            datetime(2026, 3, 30, 9, 0, 0, 250000, tzinfo=UTC),
            id="fraction",
        ),
        pytest.param(
            "2026-03-30 04:00:00-05:00", datetime(2026, 3, 30, 9, tzinfo=UTC), id="space-sep"
        ),
        pytest.param("2026-03-30T14:30+05:30", datetime(2026, 3, 30, 9, tzinfo=UTC), id="no-secs"),
    ],
)
def test_occurred_at_forms_accepted(text: str, expected: datetime) -> None:
    event = parse_event(valid(occurred_at=text))
    assert event.occurred_at == expected
    assert event.occurred_at.tzinfo is not None


def test_z_suffix_round_trips_as_offset() -> None:
    event = parse_event(valid(occurred_at="2026-03-30T09:00:00Z"))
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.to_json()["occurred_at"] == "2026-03-30T09:00:00+00:00"


@pytest.mark.parametrize("sip_code", [100, 200, 302, 400, 699])
def test_sip_code_range_bounds_accepted(sip_code: int) -> None:
    assert parse_event(valid(sip_code=sip_code)).sip_code == sip_code


def test_limits_accepted_at_the_edge() -> None:
    event = parse_event(valid(event_id="e" * 255, call_id="c" * 255, retry_after_s=0))
    assert len(event.event_id) == 255
    assert event.retry_after_s == 0
    assert parse_event(valid(retry_after_s=366 * 24 * 3600)).retry_after_s == 366 * 24 * 3600


def test_non_ascii_ids_accepted() -> None:
    event = parse_event(valid(lead_id="lead-é-東京", phone_id="☎-1"))
    assert event.lead_id == "lead-é-東京"


def test_parse_event_json_bytes_and_str() -> None:
    raw = orjson.dumps(valid())
    assert parse_event_json(raw) == parse_event_json(raw.decode()) == parse_event(valid())


# --- malformed events -----------------------------------------------------------------------

LONG = "x" * 256

MALFORMED = [
    *(
        pytest.param(valid(**{name: None}), name, "required", id=f"missing-{name}")
        for name in REQUIRED
    ),
    *(
        pytest.param(valid(**{name: ""}), name, "empty", id=f"empty-{name}")
        for name in REQUIRED[:4]
    ),
    pytest.param(valid(event_id="   "), "event_id", "empty", id="blank-event_id"),
    *(pytest.param(valid(**{name: 17}), name, "string", id=f"int-{name}") for name in REQUIRED[:4]),
    pytest.param(valid(event_id=["e1"]), "event_id", "string", id="list-event_id"),
    pytest.param(valid(phone_id={"id": 1}), "phone_id", "string", id="object-phone_id"),
    pytest.param(valid(lead_id=True), "lead_id", "string", id="bool-lead_id"),
    pytest.param(valid(event_id=LONG), "event_id", "255", id="long-event_id"),
    pytest.param(valid(plan_id=LONG), "plan_id", "255", id="long-plan_id"),
    pytest.param(valid(lead_id=LONG), "lead_id", "255", id="long-lead_id"),
    pytest.param(valid(phone_id=LONG), "phone_id", "255", id="long-phone_id"),
    pytest.param(valid(call_id=LONG), "call_id", "255", id="long-call_id"),
    pytest.param(valid(outcome_code="X" * 65), "outcome_code", "64", id="long-outcome_code"),
    pytest.param(valid(event_id="e\x001"), "event_id", "NUL", id="nul-event_id"),
    pytest.param(valid(phone_id="p\x00"), "phone_id", "NUL", id="nul-phone_id"),
    pytest.param(valid(call_id="\x00c"), "call_id", "NUL", id="nul-call_id"),
    pytest.param(valid(outcome_code="SYS\x00"), "outcome_code", "NUL", id="nul-outcome_code"),
    pytest.param(valid(sip_code="486"), "sip_code", "integer", id="sip-string"),
    pytest.param(valid(sip_code=486.0), "sip_code", "integer", id="sip-float"),
    pytest.param(valid(sip_code=True), "sip_code", "integer", id="sip-bool"),
    pytest.param(valid(sip_code=99), "sip_code", "99", id="sip-99"),
    pytest.param(valid(sip_code=700), "sip_code", "700", id="sip-700"),
    pytest.param(valid(sip_code=-486), "sip_code", "between", id="sip-negative"),
    pytest.param(
        valid(occurred_at="2026-03-30T10:00:00"), "occurred_at", "UTC offset", id="ts-no-offset"
    ),
    pytest.param(
        valid(occurred_at="2026-03-30T10:00"), "occurred_at", "UTC offset", id="ts-no-offset-short"
    ),
    pytest.param(valid(occurred_at="2026-03-30"), "occurred_at", "ISO-8601", id="ts-date-only"),
    pytest.param(
        valid(occurred_at="2026-03-30+01:00"), "occurred_at", "ISO-8601", id="ts-date-offset"
    ),
    pytest.param(
        valid(occurred_at="yesterday at noon"), "occurred_at", "ISO-8601", id="ts-garbage"
    ),
    pytest.param(
        valid(occurred_at="2026-13-45T10:00:00+00:00"), "occurred_at", "ISO-8601", id="ts-bad-month"
    ),
    pytest.param(valid(occurred_at=""), "occurred_at", "ISO-8601", id="ts-empty"),
    pytest.param(valid(occurred_at=1774861200), "occurred_at", "string", id="ts-epoch-int"),
    pytest.param(valid(occurred_at=1774861200.5), "occurred_at", "string", id="ts-float"),
    pytest.param(
        valid(occurred_at=["2026-03-30T10:00:00Z"]), "occurred_at", "string", id="ts-list"
    ),
    pytest.param(valid(timezone="Mars/Olympus"), "timezone", "Mars/Olympus", id="tz-unknown"),
    pytest.param(valid(timezone="europe/london "), "timezone", "time zone", id="tz-padded"),
    pytest.param(valid(timezone=1), "timezone", "string", id="tz-integer"),
    pytest.param(valid(retry_after_s=-1), "retry_after_s", "between", id="retry-negative"),
    pytest.param(valid(retry_after_s=1.5), "retry_after_s", "integer", id="retry-float"),
    pytest.param(valid(retry_after_s=30.0), "retry_after_s", "integer", id="retry-float-whole"),
    pytest.param(valid(retry_after_s="30"), "retry_after_s", "integer", id="retry-string"),
    pytest.param(
        valid(retry_after_s=366 * 24 * 3600 + 1), "retry_after_s", "between", id="retry-too-large"
    ),
    pytest.param(valid(retry_after_s=10**30), "retry_after_s", "between", id="retry-huge"),
    pytest.param(valid(outcome_code=5), "outcome_code", "string", id="outcome-int"),
    pytest.param(valid(outcome_code=["SYSBUSY"]), "outcome_code", "string", id="outcome-list"),
    pytest.param(valid(call_id=12345), "call_id", "string", id="call_id-int"),
    pytest.param(
        valid(callback_at="2026-03-31T15:30:00"), "callback_at", "UTC offset", id="cb-no-offset"
    ),
    pytest.param(valid(callback_at="2026-03-31"), "callback_at", "ISO-8601", id="cb-date-only"),
    pytest.param(valid(callback_at="tomorrow"), "callback_at", "ISO-8601", id="cb-garbage"),
    pytest.param(valid(callback_at=1774971000), "callback_at", "string", id="cb-epoch-int"),
    pytest.param(valid(callback_at=""), "callback_at", "ISO-8601", id="cb-empty"),
    pytest.param(
        valid(callback_at="0001-01-01T00:00:00+00:00"), "callback_at", "year", id="cb-year-1"
    ),
    pytest.param(valid(callback_agent=7), "callback_agent", "string", id="agent-int"),
    pytest.param(valid(callback_agent=""), "callback_agent", "empty", id="agent-empty"),
    pytest.param(valid(callback_agent=LONG), "callback_agent", "255", id="agent-long"),
    pytest.param(valid(callback_agent="a\x00"), "callback_agent", "NUL", id="agent-nul"),
    pytest.param([valid()], "event", "object", id="payload-list"),
    pytest.param("e1", "event", "object", id="payload-string"),
    pytest.param(None, "event", "object", id="payload-null"),
    pytest.param(486, "event", "object", id="payload-int"),
]


@pytest.mark.parametrize(("payload", "field", "reason"), MALFORMED)
def test_malformed_event_is_refused(payload: object, field: str, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(payload)
    error = caught.value
    assert error.field == field
    message = str(error)
    assert message.startswith(f"{field}: "), message
    assert reason in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("payload", "field", "reason"), MALFORMED)
def test_malformed_event_is_refused_from_json(payload: object, field: str, reason: str) -> None:
    # stdlib json: orjson cannot write integers over 64 bits (retry-huge)
    with pytest.raises(InvalidEvent) as caught:
        parse_event_json(json.dumps(payload))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_callback_fields_parse_and_round_trip() -> None:
    event = parse_event(valid(outcome_code="CALLBACK"))
    assert event.callback_at == datetime(2026, 3, 31, 14, 30, tzinfo=UTC)
    assert event.callback_at.utcoffset() == timedelta(hours=1)
    assert event.callback_agent == "agent-7"
    assert event.to_json()["callback_at"] == "2026-03-31T15:30:00+01:00"
    assert parse_event(event.to_json()) == event
    absent = parse_event(minimal())
    assert (absent.callback_at, absent.callback_agent) == (None, None)
    assert "callback_at" not in absent.to_json()


def test_naive_callback_at_is_named_like_occurred_at() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(valid(callback_at="2026-03-31T15:30:00"))
    assert str(caught.value) == "callback_at: no UTC offset in '2026-03-31T15:30:00'"


def test_invalid_event_is_a_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)
    error = InvalidEvent("sip_code", "must be an integer")
    assert str(error) == "sip_code: must be an integer"
    assert error.field == "sip_code"


def test_first_required_field_is_named_when_several_are_missing() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event({})
    assert caught.value.field == "event_id"


def test_long_garbage_timestamp_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(valid(occurred_at="2026-03-30T" + "9" * 5000))
    message = str(caught.value)
    assert message.startswith("occurred_at: ")
    assert len(message) < 200


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="garbage"),
        pytest.param(b'{"event_id": "e1",}', id="trailing-comma"),
        pytest.param(b"\xff\xfe{}", id="bad-utf8"),
        pytest.param("{'event_id': 'e1'}", id="python-repr"),
    ],
)
def test_parse_event_json_invalid_json(payload: bytes | str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event_json(payload)
    assert caught.value.field == "event"
    assert str(caught.value).startswith("event: not valid JSON")
    assert "\n" not in str(caught.value)


def test_parse_event_json_oversized_payload() -> None:
    big = orjson.dumps(valid(padding="x" * MAX_EVENT_BYTES))
    assert len(big) > MAX_EVENT_BYTES
    with pytest.raises(InvalidEvent) as caught:
        parse_event_json(big)
    assert caught.value.field == "event"
    assert str(caught.value) == (
        f"event: payload of {len(big)} bytes is over the {MAX_EVENT_BYTES} limit"
    )
    with pytest.raises(InvalidEvent):
        parse_event_json(big.decode())


def test_parse_event_json_size_counts_bytes_not_characters() -> None:
    base = orjson.dumps(valid(padding=""))
    room = MAX_EVENT_BYTES - len(base)
    # "é" is two bytes in UTF-8: half the room in characters fills it exactly
    fits = orjson.dumps(valid(padding="é" * (room // 2)))
    assert len(fits) <= MAX_EVENT_BYTES
    assert parse_event_json(fits.decode()).extra["padding"].startswith("é")
    over = orjson.dumps(valid(padding="é" * (room // 2 + 1)))
    with pytest.raises(InvalidEvent):
        parse_event_json(over.decode())


def test_aware_offsets_are_kept() -> None:
    event = parse_event(valid(occurred_at="2026-03-30T10:00:00-04:00"))
    assert event.occurred_at.tzinfo == timezone(timedelta(hours=-4))


# --- CSV rows -------------------------------------------------------------------------------


def _csv_rows(text: str) -> list[dict[str, str | None]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_row_empty_cells_absent_and_integers_converted() -> None:
    header = ",".join(EVENT_FIELDS)
    rows = _csv_rows(
        f"{header}\n"
        "e1,default,L1,L1-P1,486,2026-03-30T10:00:00+01:00,,,,\n"
        "e2,default,L1,L1-P1,503,2026-03-30T10:05:00+01:00,SYSBUSY,Europe/London,120,c-9\n"
    )
    first = event_from_csv_row(rows[0])
    assert first == {
        "event_id": "e1",
        "plan_id": "default",
        "lead_id": "L1",
        "phone_id": "L1-P1",
        "sip_code": 486,
        "occurred_at": "2026-03-30T10:00:00+01:00",
    }
    event = parse_event(first)
    assert event.outcome_code is None
    assert event.timezone is None
    assert event.retry_after_s is None
    second = event_from_csv_row(rows[1])
    assert second["sip_code"] == 503
    assert second["retry_after_s"] == 120
    assert type(second["retry_after_s"]) is int
    assert parse_event(second).to_json() == second


def test_csv_row_only_integer_columns_are_converted() -> None:
    data = event_from_csv_row(
        {"event_id": "123", "lead_id": "007", "sip_code": "486", "call_id": "42"}
    )
    assert data == {"event_id": "123", "lead_id": "007", "sip_code": 486, "call_id": "42"}


def test_csv_row_integer_with_spaces_or_sign() -> None:
    assert event_from_csv_row({"sip_code": " 486 "})["sip_code"] == 486
    assert event_from_csv_row({"sip_code": "+486"})["sip_code"] == 486
    assert event_from_csv_row({"retry_after_s": "-5"})["retry_after_s"] == -5
    with pytest.raises(InvalidEvent) as caught:
        parse_event(valid() | event_from_csv_row({"retry_after_s": "-5"}))
    assert caught.value.field == "retry_after_s"


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        pytest.param("sip_code", "486.0", id="sip-decimal"),
        pytest.param("sip_code", "busy", id="sip-word"),
        pytest.param("sip_code", "4 86", id="sip-inner-space"),
        pytest.param("sip_code", "٤٨٦", id="sip-arabic-digits"),
        pytest.param("sip_code", "-", id="sip-dash"),
        pytest.param("retry_after_s", "1e3", id="retry-exponent"),
        pytest.param("retry_after_s", "30s", id="retry-unit"),
    ],
)
def test_csv_non_integer_text_kept_so_validation_names_it(column: str, cell: str) -> None:
    data = event_from_csv_row({column: cell})
    assert data == {column: cell}
    with pytest.raises(InvalidEvent) as caught:
        parse_event(valid() | data)
    assert caught.value.field == column
    assert "integer" in str(caught.value)


def test_csv_extra_columns_kept_and_overflow_cells_dropped() -> None:
    header = ",".join([*EVENT_FIELDS, "campaign"])
    rows = _csv_rows(
        f"{header}\ne1,default,L1,L1-P1,486,2026-03-30T10:00:00Z,,,,,,,spring,overflow1,overflow2\n"
    )
    assert None in rows[0]  # DictReader puts surplus cells under the key None
    data = event_from_csv_row(rows[0])
    assert data["campaign"] == "spring"
    assert None not in data
    assert dict(parse_event(data).extra) == {"campaign": "spring"}


def test_csv_callback_columns() -> None:
    rows = _csv_rows(
        "event_id,plan_id,lead_id,phone_id,sip_code,occurred_at,outcome_code,callback_at,"
        "callback_agent\n"
        "e1,default,L1,L1-P1,200,2026-03-30T10:00:00Z,CALLBACK,2026-03-31T15:30:00+01:00,a7\n"
        "e2,default,L1,L1-P1,200,2026-03-30T10:05:00Z,CALLBACK,,\n"
    )
    booked, missing = (parse_event(event_from_csv_row(row)) for row in rows)
    assert booked.callback_at == datetime(2026, 3, 31, 14, 30, tzinfo=UTC)
    assert booked.callback_agent == "a7"
    assert booked.extra == {}
    assert (missing.callback_at, missing.callback_agent) == (None, None)


def test_csv_short_row_missing_cells_are_absent() -> None:
    rows = _csv_rows(",".join(EVENT_FIELDS) + "\ne1,default,L1\n")
    data = event_from_csv_row(rows[0])
    assert data == {"event_id": "e1", "plan_id": "default", "lead_id": "L1"}
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data)
    assert caught.value.field == "phone_id"


def test_csv_empty_required_cell_is_reported_as_required() -> None:
    row = dict.fromkeys(EVENT_FIELDS, "") | {"event_id": "e1", "plan_id": "default"}
    with pytest.raises(InvalidEvent) as caught:
        parse_event(event_from_csv_row(row))
    assert str(caught.value) == "lead_id: required"
