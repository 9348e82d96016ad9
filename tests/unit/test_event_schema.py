"""The event contract's schema: ``EventSchema``, its JSON Schema export, and the fast path.

``parse_event`` validates with the msgspec schema first and words every refusal with the precise
field-by-field checks; the property tests hold the two to the same answer on any input.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import EVENT_DEFAULTS
from tests.unit.test_events import MALFORMED, minimal, valid
from worker.cli import main
from worker.domain import events
from worker.domain.events import (
    EVENT_FIELDS,
    MAX_RETRY_AFTER_S,
    NO_EXTRA,
    REQUIRED_FIELDS,
    CallResult,
    EventSchema,
    InvalidEvent,
    event_json_schema,
    parse_event,
    parse_event_json,
)
from worker.domain.intake import Rejected, accept, accept_line
from worker.domain.rules import load_rules
from worker.replay.sources import json_record

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "event.schema.json"
DEMO = ROOT / "config" / "demo" / "demo.jsonl"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# --- the export -----------------------------------------------------------------------------


def test_committed_json_schema_is_the_generated_one() -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == event_json_schema(), (
        "docs/event.schema.json is out of date with worker.domain.events.EventSchema:"
        " regenerate it with `make event-schema`"
    )


def test_json_schema_describes_the_contract() -> None:
    schema = event_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert schema["description"]
    assert schema["type"] == "object"
    assert list(schema["properties"]) == list(EVENT_FIELDS)
    assert schema["required"] == list(REQUIRED_FIELDS)
    assert schema["additionalProperties"] is True
    for name, field in schema["properties"].items():
        assert field["description"], name
    sip = schema["properties"]["sip_code"]
    assert (sip["type"], sip["minimum"], sip["maximum"]) == ("integer", 100, 699)
    assert schema["properties"]["occurred_at"]["format"] == "date-time"
    retry = schema["properties"]["retry_after_s"]["anyOf"][0]
    assert (retry["minimum"], retry["maximum"]) == (0, MAX_RETRY_AFTER_S)
    # msgspec's own export of the class is the same schema, under $defs
    generated = msgspec.json.schema(EventSchema)
    assert generated["$defs"]["EventSchema"]["properties"] == schema["properties"]


# --- the export against events --------------------------------------------------------------


def _fixture_events() -> list[dict[str, Any]]:
    """Every valid event the suite's fixtures hold."""
    demo = []  # the demo's history holds bad lines on purpose: its valid events
    for line in DEMO.read_bytes().splitlines():
        try:
            demo.append(events._parse_precisely(orjson.loads(line)).to_json())
        except (orjson.JSONDecodeError, InvalidEvent):
            continue
    assert len(demo) > 10
    forms = [
        valid(occurred_at=text)
        for text in ("2026-03-30T09:00:00Z", "2026-03-30T09:00:00.250+00:00")
    ]
    return [
        valid(),
        minimal(),
        valid(dialer_node="n7", nested={"a": [1, 2]}),
        valid(outcome_code="CALLBACK"),
        valid(event_id="e" * 255, retry_after_s=0),
        valid(lead_id="lead-é-東京", phone_id="☎-1"),
        valid(outcome_code=None) | {"timezone": None, "retry_after_s": None},
        dict(EVENT_DEFAULTS),
        *forms,
        *demo,
    ]


def test_json_schema_accepts_the_fixture_events(validator: Any) -> None:
    for event in _fixture_events():
        parse_event(event)  # valid for the worker,
        validator.validate(event)  # and for the schema


def test_json_schema_accepts_the_sample_history(validator: Any, tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl"
    result = CliRunner().invoke(main, ["sample", "-o", str(path), "--leads", "300", "--days", "3"])
    assert result.exit_code == 0, result.output
    lines = path.read_bytes().splitlines()
    assert len(lines) > 1000
    for line in lines:
        event = orjson.loads(line)
        validator.validate(event)
        assert parse_event_json(line) == parse_event(event)


#: The malformed events of test_events.py that a JSON Schema cannot refuse: the worker's checks
#: after the schema refuse them (a NUL, an unknown zone, a timestamp's form, offset or year), and
#: JSON Schema's "integer" takes 486.0, which the contract does not.
BEYOND_THE_SCHEMA = {
    "sip-float",
    "retry-float-whole",
    "nul-event_id",
    "nul-phone_id",
    "nul-call_id",
    "nul-outcome_code",
    "ts-no-offset",
    "ts-no-offset-short",
    "ts-date-only",
    "ts-date-offset",
    "ts-garbage",
    "ts-bad-month",
    "ts-empty",
    "tz-unknown",
    "tz-padded",
    "cb-no-offset",
    "cb-date-only",
    "cb-garbage",
    "cb-empty",
    "cb-year-1",
    "agent-nul",
}


@pytest.mark.parametrize(("payload", "field", "reason"), MALFORMED)
def test_json_schema_refuses_what_it_can_express(
    request: pytest.FixtureRequest, validator: Any, payload: object, field: str, reason: str
) -> None:
    case = request.node.callspec.id
    refused = not validator.is_valid(payload)
    assert refused == (case not in BEYOND_THE_SCHEMA), case
    with pytest.raises(InvalidEvent):  # and the worker refuses them all
        parse_event(payload)


# --- the fast path against the precise checks -----------------------------------------------

_TEXTS = st.one_of(
    st.sampled_from(
        ["e1", "default", "L1", "Europe/London", "SYSBUSY", " ", "", "a\x00", "\ud800"]
    ),
    st.sampled_from(["x" * 64, "x" * 65, "x" * 255, "x" * 256, "lead-é-東京", "europe/london "]),
    st.text(max_size=8),
)
_TIMES = st.sampled_from(
    [
        "2026-03-30T10:00:00+01:00",
        "2026-03-30T09:00:00Z",
        "2026-03-30 04:00:00-05:00",
        "2026-03-30T14:30+05:30",
        "2026-03-30T10:00:00",
        "2026-03-30",
        "2026-13-45T10:00:00+00:00",
        "0001-01-01T00:00:00+00:00",
        "9999-01-01T00:00:00+00:00",
        "",
    ]
)
_INTEGERS = st.one_of(
    st.sampled_from([99, 100, 486, 699, 700, -1, 0, MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S + 1]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
_VALUES = st.one_of(
    _TEXTS, _TIMES, _INTEGERS, st.none(), st.booleans(), st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
_FIELD_VALUES = {
    **dict.fromkeys(("event_id", "plan_id", "lead_id", "phone_id", "call_id"), _TEXTS),
    **dict.fromkeys(("outcome_code", "timezone", "callback_agent"), _TEXTS),
    **dict.fromkeys(("occurred_at", "callback_at"), _TIMES),
    **dict.fromkeys(("sip_code", "retry_after_s"), _INTEGERS),
}


@st.composite
def _events(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid event with a few fields changed, dropped, or given any value, and extras."""
    event: dict[Any, Any] = valid()
    for name in draw(st.lists(st.sampled_from(EVENT_FIELDS), max_size=3, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            event.pop(name)
        else:
            event[name] = draw(_FIELD_VALUES[name] if choice == 1 else _VALUES)
    event.update(draw(st.dictionaries(st.sampled_from(["x", "note", 7]), _VALUES, max_size=2)))
    return event


def _outcome(parse: Any, payload: object) -> CallResult | str:
    try:
        return parse(payload)  # type: ignore[no-any-return]
    except InvalidEvent as error:
        return str(error)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(_events())
def test_fast_path_agrees_with_the_precise_checks(event: dict[Any, Any]) -> None:
    expected = _outcome(events._parse_precisely, event)
    got = _outcome(parse_event, event)
    assert got == expected
    if isinstance(expected, CallResult):
        assert isinstance(got, CallResult)
        assert dict(got.extra) == dict(expected.extra)
        assert got.occurred_at.utcoffset() == expected.occurred_at.utcoffset()


@settings(max_examples=600, deadline=None, derandomize=True)
@given(_events())
def test_json_fast_path_agrees_with_the_precise_checks(event: dict[Any, Any]) -> None:
    try:
        text = json.dumps(event)  # stdlib: integers over 64 bits and lone surrogates too
    except (TypeError, ValueError):
        return
    if any(not isinstance(key, str) for key in event):
        return  # json.dumps writes 7 as "7": another event
    try:
        expected: CallResult | str = events._parse_precisely(orjson.loads(text))
    except orjson.JSONDecodeError as error:
        expected = f"event: not valid JSON: {error}"
    except InvalidEvent as error:
        expected = str(error)
    assert _outcome(parse_event_json, text) == expected
    assert _outcome(parse_event_json, text.encode("utf-8", "surrogatepass")) == expected


_RULES = load_rules()
_CLOCK = datetime.fromisoformat("2026-06-01T00:00:00+00:00")


def _accepted(raw: object) -> CallResult | str:
    try:
        return accept(raw, _RULES, _CLOCK, 300)
    except Rejected as error:
        return str(error)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(_events())
def test_a_replay_line_taken_as_it_is_is_what_accept_takes(event: dict[Any, Any]) -> None:
    # A replay takes a JSON line's event straight from its text when it is plainly valid; any
    # other line is decoded and goes to accept. The shortcut must take nothing accept refuses,
    # and give exactly the event accept gives.
    try:
        text = json.dumps(event)
    except (TypeError, ValueError):
        return
    if any(not isinstance(key, str) for key in event):
        return
    taken = accept_line(text, _RULES, _CLOCK, 300)
    expected = _accepted(json_record(text))
    if taken is None:
        return
    assert taken == expected
    assert isinstance(expected, CallResult)
    assert taken.extra is NO_EXTRA
    assert expected.extra is NO_EXTRA
    assert taken.occurred_at.utcoffset() == expected.occurred_at.utcoffset()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(orjson.dumps(valid(note="hi")).decode(), id="extra-field"),
        pytest.param(orjson.dumps(valid(plan_id="gone")).decode(), id="unknown-plan"),
        pytest.param(
            orjson.dumps(valid(occurred_at="2026-06-01T01:00:00+00:00")).decode(), id="ahead"
        ),
        pytest.param(
            orjson.dumps(valid(occurred_at="2026-03-30T10:00:00." + "0" * 60 + "+01:00")).decode(),
            id="long-timestamp",
        ),
        pytest.param(orjson.dumps(orjson.dumps(valid()).decode()).decode(), id="json-in-a-string"),
        pytest.param('{"event_id": "e1"', id="not-json"),
    ],
)
def test_a_replay_line_not_plainly_valid_goes_to_accept(text: str) -> None:
    assert accept_line(text, _RULES, _CLOCK, 300) is None


def test_a_plain_replay_line_is_taken_as_it_is() -> None:
    text = orjson.dumps(valid()).decode()
    assert accept_line(text, _RULES, _CLOCK, 300) == accept(orjson.loads(text), _RULES, _CLOCK, 300)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"event_id":"a\\ud800"}', id="lone-surrogate-escape"),
        pytest.param(b'{"sip_code": 1e999}', id="infinity"),
        pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
        pytest.param(b'{"event_id": "a\tb"}', id="raw-control-character"),
    ],
)
def test_json_refusals_word_what_orjson_says(payload: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError) as decoding:
        orjson.loads(payload)
    with pytest.raises(InvalidEvent) as caught:
        parse_event_json(payload)
    assert str(caught.value) == f"event: not valid JSON: {decoding.value}"


def test_mappings_other_than_dict_are_refused_as_today() -> None:
    from types import MappingProxyType

    with pytest.raises(InvalidEvent) as caught:
        parse_event(MappingProxyType(valid()))
    assert str(caught.value) == "event: must be a JSON object, got mappingproxy"


def test_duplicate_keys_take_the_last_as_orjson_does() -> None:
    text = orjson.dumps(valid()).decode()[:-1] + ', "sip_code": 503}'
    assert parse_event_json(text).sip_code == 503
    text = orjson.dumps(valid()).decode()[:-1] + ', "sip_code": "busy"}'
    with pytest.raises(InvalidEvent) as caught:
        parse_event_json(text)
    assert str(caught.value) == "sip_code: must be an integer, got a string"
