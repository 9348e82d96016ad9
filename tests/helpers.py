"""Small builders shared by the tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import gzip
from datetime import datetime
from typing import Any

import orjson
from click.testing import Result

import worker.store.database
from config.settings import DEFAULTS, get_settings
from worker.domain.events import CallResult, parse_event

#: The keys of a decision's JSON form (the contract, DESIGN.md section 7).
DECISION_KEYS = {
    "event_id",
    "phone_id",
    "action",
    "due_at",
    "source",
    "rule",
    "reason",
    "adjustments",
    "warnings",
    "explanation",
    "rules_version",
}

#: A Wednesday, 10:00 in London (GMT in January): inside every shipped plan's calling hours.
#: The clock skew the worker allows by default (RECALL_CLOCK_SKEW_S), for direct calls.
SKEW_S: int = DEFAULTS["clock_skew_s"]

DEFAULT_OCCURRED_AT = "2026-01-14T10:00:00+00:00"

EVENT_DEFAULTS: dict[str, Any] = {
    "event_id": "e1",
    "plan_id": "default",
    "lead_id": "L1",
    "phone_id": "P1",
    "sip_code": 486,
    "occurred_at": DEFAULT_OCCURRED_AT,
}


def make_event(**fields: Any) -> CallResult:
    """A validated ``CallResult`` from the defaults above, overridden by ``fields``.

    ``occurred_at`` may be given as an aware ``datetime``; a field given as ``None`` is left out.
    """
    data = {**EVENT_DEFAULTS, **fields}
    if isinstance(data["occurred_at"], datetime):
        data["occurred_at"] = data["occurred_at"].isoformat()
    return parse_event({key: value for key, value in data.items() if value is not None})


def at(text: str) -> datetime:
    """An aware datetime from an ISO-8601 string that must carry a UTC offset."""
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"no UTC offset in {text!r}")
    return moment


def corrupt_gzip(data: bytes) -> bytes:
    """``data`` gzip-compressed, then 16 bytes in the middle flipped (always the same ones)."""
    packed = bytearray(gzip.compress(data, mtime=0))
    middle = len(packed) // 2
    packed[middle : middle + 16] = bytes(byte ^ 0xFF for byte in packed[middle : middle + 16])
    return bytes(packed)


def truncated_gzip(data: bytes) -> bytes:
    """``data`` gzip-compressed, cut off after three quarters, as an interrupted copy leaves it."""
    packed = gzip.compress(data, mtime=0)
    return packed[: len(packed) * 3 // 4]


def reset_process_state() -> None:
    """Forget the cached settings, engine and session factory (each is built once per process)."""
    get_settings.cache_clear()
    if worker.store.database.get_engine.cache_info().currsize:
        worker.store.database.get_engine().dispose()
    worker.store.database.get_engine.cache_clear()
    worker.store.database._session_factory.cache_clear()


def json_of(result: Result) -> Any:
    """What a ``recall ... --json`` run printed: exit 0, nothing on stderr, one line of JSON."""
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert result.exception is None
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return orjson.loads(lines[0])


def one_line_error(result: Result, *parts: str) -> str:
    """Exit 1, nothing on stdout, exactly one stderr line starting 'error:', no traceback.

    Each of ``parts`` must be in that line; the line is returned.
    """
    assert result.exit_code == 1, (result.output, result.exception)
    # a clean exit is SystemExit(1); anything else is a crash caught by the runner
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]
