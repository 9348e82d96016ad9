"""Bad input: thousands of malformed events and messages, mixed with good ones, on a real worker.

The cases are generated once by hypothesis with a fixed derandomised seed (the same cases on
every run): events with a missing field, a wrong type, an out-of-range or over-64-bit integer, a
bad timestamp or zone, NUL, lone surrogates, empty or over-long ids, SQL-looking plan ids, a huge
payload, JSON text that does not parse; and whole messages of the wrong shape or arguments, not
JSON, or for an unknown task. Good events with odd but valid ids (quotes, SQL, RTL, emoji) go
between them, alone and in the same batches. Each bad case carries a marker (``CASE#n#``) so
that its dead letter is found and its reason and detail checked one by one.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from celery import Celery
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.helpers import SKEW_S
from tests.reliability.fast_harness import fresh_database, publish_mixed, worker_env
from tests.servers import PostgresServer
from tests.workers import WorkerProcess
from worker.client import RecallClient
from worker.domain.events import MAX_EVENT_BYTES, MAX_ID_LENGTH, MAX_RETRY_AFTER_S
from worker.domain.intake import Rejected, accept
from worker.domain.rules import is_valid_timezone, load_rules
from worker.store.models import DeadLetter, Phone, ProcessedEvent

BAD_EVENTS = 2000
GOOD_EVENTS = 600
PER_EXAMPLE = 10
MARKER = re.compile(r"CASE#(\d+)#")
TEXT_FIELDS = ("event_id", "plan_id", "lead_id", "phone_id")
OPTIONAL_TEXT = ("outcome_code", "timezone", "call_id")


@dataclass(frozen=True)
class Case:
    """A malformed input and the dead letter it must become."""

    payload: Any
    reason: str
    field: str  # the detail starts with "<field>: "
    fragment: str  # and says this


#: Stands for a case's number while hypothesis draws it (drawing must not depend on a counter).
N = "@N@"


def renumber(value: Any, number: int) -> Any:
    """``value`` with every ``N`` in its strings (keys too) replaced by ``number``."""
    if isinstance(value, str):
        return value.replace(N, str(number))
    if isinstance(value, dict):
        return {renumber(key, number): renumber(item, number) for key, item in value.items()}
    if isinstance(value, list):
        return [renumber(item, number) for item in value]
    return value


def valid(n: int | str, kind: str = "bad") -> dict[str, Any]:
    moment = datetime.now(UTC) - timedelta(minutes=1)
    return {
        "case": f"CASE#{n}#",
        "event_id": f"{kind}-{n}",
        "plan_id": "default",
        "lead_id": f"L-{kind}-{n}",
        "phone_id": f"P-{kind}-{n}",
        "sip_code": 486,
        "occurred_at": moment.isoformat(),
    }


def _with(n: int | str, field: str, value: Any) -> dict[str, Any]:
    return {**valid(n), field: value}


def _without(n: int | str, field: str) -> dict[str, Any]:
    event = valid(n)
    del event[field]
    return event


NOT_TEXT = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
NOT_INTEGER = st.one_of(
    st.text(max_size=6), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2)
)
LONE_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)


def bad_case(n: int | str) -> st.SearchStrategy[Case]:
    """One malformed event (or JSON text of one), numbered ``n``."""
    text_field = st.sampled_from(TEXT_FIELDS)
    any_text = st.sampled_from(TEXT_FIELDS + OPTIONAL_TEXT)
    required = st.sampled_from((*TEXT_FIELDS, "sip_code", "occurred_at"))
    int_field = st.sampled_from(("sip_code", "retry_after_s"))
    return st.one_of(
        required.map(lambda f: Case(_without(n, f), "invalid_event", f, "required")),
        st.tuples(any_text, NOT_TEXT).map(
            lambda fv: Case(_with(n, *fv), "invalid_event", fv[0], "must be a string")
        ),
        st.tuples(int_field, NOT_INTEGER).map(
            lambda fv: Case(_with(n, *fv), "invalid_event", fv[0], "must be an integer")
        ),
        st.one_of(
            st.integers(max_value=99).map(lambda v: ("sip_code", v)),
            st.integers(min_value=700).map(lambda v: ("sip_code", v)),
            st.integers(max_value=-1).map(lambda v: ("retry_after_s", v)),
            st.integers(min_value=MAX_RETRY_AFTER_S + 1).map(lambda v: ("retry_after_s", v)),
        ).map(lambda fv: Case(_with(n, *fv), "invalid_event", fv[0], "must be between")),
        st.datetimes().map(
            lambda d: Case(
                _with(n, "occurred_at", d.isoformat()),
                "invalid_event",
                "occurred_at",
                "no UTC offset",
            )
        ),
        st.text(st.characters(codec="ascii"), max_size=30).map(
            lambda t: Case(
                _with(n, "occurred_at", f"#{t}"),
                "invalid_event",
                "occurred_at",
                "not an ISO-8601 date and time",
            )
        ),
        st.sampled_from(
            [
                "2026-02-30T10:00:00+00:00",
                "2026-01-14",
                "2026-01-14T10:00:00+0000x",
                "14/01/2026 10:00 +0000",
                "2026-01-14T25:00:00Z",
                "now",
                "2026-01-14T10:00:00+25:00",
            ]
        ).map(
            lambda t: Case(
                _with(n, "occurred_at", t),
                "invalid_event",
                "occurred_at",
                "not an ISO-8601 date and time",
            )
        ),
        # Hardening #2: a dialer's clock far ahead (an hour to a century) poisons no phone.
        st.integers(3600, 100 * 366 * 86400).map(
            lambda ahead: Case(
                _with(n, "occurred_at", (datetime.now(UTC) + timedelta(seconds=ahead)).isoformat()),
                "invalid_event",
                "occurred_at",
                "ahead of the clock",
            )
        ),
        st.sampled_from(
            ["0001-01-01T00:00:00+00:00", "1969-12-31T23:59:59+00:00", "9999-12-31T23:59:59+00:00"]
        ).map(
            lambda t: Case(
                _with(n, "occurred_at", t), "invalid_event", "occurred_at", "year must be"
            )
        ),
        st.one_of(
            st.text(min_size=1, max_size=40),
            st.sampled_from(["../../../../etc/passwd", "Mars/Olympus_Mons", "UTC+5", "EST5EDT "]),
        )
        .filter(lambda z: bool(z.strip()) and "\x00" not in z and not _surrogate(z))
        .filter(lambda z: not is_valid_timezone(z))
        .map(
            lambda z: Case(
                _with(n, "timezone", z), "invalid_event", "timezone", "unknown IANA time zone"
            )
        ),
        st.tuples(text_field, st.text(max_size=10), st.text(max_size=10)).map(
            lambda fab: Case(
                _with(n, fab[0], f"{fab[1]}\x00{fab[2]}"),
                "invalid_event",
                fab[0],
                "contains a NUL character",
            )
        ),
        st.tuples(
            any_text, st.text(max_size=10).filter(lambda t: "\x00" not in t), LONE_SURROGATE
        ).map(
            lambda fab: Case(
                _with(n, fab[0], f"x{fab[1]}{fab[2]}"),
                "invalid_event",
                fab[0],
                "is not valid Unicode",
            )
        ),
        st.tuples(any_text, st.sampled_from(["", " ", "\t\n", "\u3000", "\u00a0 "])).map(
            lambda fv: Case(_with(n, *fv), "invalid_event", fv[0], "must not be empty")
        ),
        st.tuples(text_field, st.integers(MAX_ID_LENGTH + 1, 6000), st.sampled_from("a'é😀")).map(
            lambda fnc: Case(
                _with(n, fnc[0], fnc[2] * fnc[1]),
                "invalid_event",
                fnc[0],
                f"longer than {MAX_ID_LENGTH} characters",
            )
        ),
        st.sampled_from(
            [
                "'; DROP TABLE phones; --",
                "default' OR '1'='1",
                'default"; DELETE FROM events;',
                "default/*",
                "DEFAULT",
                " default",
            ]
        ).map(
            lambda p: Case(_with(n, "plan_id", p), "unknown_plan", "plan_id", "is not in the rules")
        ),
        st.integers(MAX_EVENT_BYTES + 1, 256 * 1024).map(
            lambda size: Case(
                {**valid(n), "blob": "x" * size},
                "invalid_event",
                "event",
                f"over the {MAX_EVENT_BYTES}-byte limit",
            )
        ),
        st.integers(1, 40).map(
            lambda cut: Case(
                orjson.dumps(valid(n)).decode()[:-cut], "invalid_event", "event", "not valid JSON"
            )
        ),
        st.sampled_from([f'["CASE#{n}#"]', f'"CASE#{n}#"', f'[{{"case": "CASE#{n}#"}}]']).map(
            lambda t: Case(t, "invalid_event", "event", "must be a JSON object")
        ),
        st.just(Case([f"CASE#{n}#", 1], "invalid_event", "event", "must be a JSON object")),
        st.just(
            Case(
                orjson.dumps({**valid(n), "blob": "y" * MAX_EVENT_BYTES}).decode(),
                "invalid_event",
                "event",
                f"over the {MAX_EVENT_BYTES} limit",
            )
        ),
    )


def _surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


ODD_ID = st.one_of(
    st.sampled_from(["it's", 'say "hi"', "'; DROP TABLE phones; --", "שלום‏", "\u202etxt",
                     "👩‍👩‍👧", "e\u0301", "漢字", "back\\slash", "%s %d {0}"]),
    st.text(max_size=30),
).filter(lambda t: "\x00" not in t and not _surrogate(t))  # fmt: skip


def good_event(n: int | str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid event with odd ids, any valid SIP code, maybe an outcome, zone and Retry-After."""
    moment = datetime.now(UTC) - timedelta(minutes=2)
    return st.fixed_dictionaries(
        {
            "event_id": ODD_ID.map(lambda t: f"good-{n}-{t}"),
            "plan_id": st.sampled_from(["default", "us_tcpa", "eu_sales", "manual"]),
            "lead_id": ODD_ID.map(lambda t: f"L-good-{n}-{t}"),
            "phone_id": ODD_ID.map(lambda t: f"P-good-{n}-{t}"),
            "sip_code": st.integers(100, 699),
            # The same instant written with several offsets (not the same wall clock with
            # another offset: -05:00 would be five hours ahead of the worker's clock).
            "occurred_at": st.sampled_from(["+00:00", "-05:00", "+05:45", "Z"]).map(
                lambda offset: (
                    moment.astimezone(datetime.fromisoformat(f"2026-01-01T00:00:00{offset}").tzinfo)
                    .isoformat()
                    .replace("+00:00", offset)
                )
            ),
        },
        optional={
            "outcome_code": st.sampled_from(["SYSBUSY", "CALLBACK", "NOPE-UNKNOWN", "DNC"]),
            "timezone": st.sampled_from(["Europe/London", "America/Chicago", "Asia/Kathmandu"]),
            "retry_after_s": st.integers(0, 3600),
            "call_id": ODD_ID.filter(lambda t: t.strip() != ""),
            "note": ODD_ID,
        },
    )


def generate() -> tuple[list[Case], list[dict[str, Any]]]:
    """The cases, drawn by hypothesis from a fixed seed (derandomize): the same on every run."""
    bad: list[Case] = []
    good: list[dict[str, Any]] = []
    options = settings(
        max_examples=(BAD_EVENTS + GOOD_EVENTS) // PER_EXAMPLE, derandomize=True, database=None,
        phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip

    @options
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        for _ in range(
            PER_EXAMPLE
        ):  # several cases per example: hypothesis's overhead is per example
            if data.draw(st.integers(0, 3)):  # three bad ones for a good one
                case = data.draw(bad_case(N))
                if len(bad) < BAD_EVENTS:
                    bad.append(case)
            else:
                event = data.draw(good_event(N))
                if len(good) < GOOD_EVENTS:
                    good.append(event)

    while len(bad) < BAD_EVENTS or len(good) < GOOD_EVENTS:
        draw()
    return (
        [replace(case, payload=renumber(case.payload, k)) for k, case in enumerate(bad)],
        [renumber(event, BAD_EVENTS + k) for k, event in enumerate(good)],
    )


def message_cases(first: int) -> list[tuple[str, Any, Case]]:
    """Whole messages that are wrong: (how to send, what, the dead letter it must become)."""
    one, many = "recall.process_call_result", "recall.process_call_results"
    kinds: list[tuple[str, Callable[[int], Any], str, str]] = [
        ("args", lambda k: (one, [valid(k), valid(k)], {}),
         "arguments", "expected one event, got 2 positional"),
        ("args", lambda k: (one, [], {"event": valid(k)}),
         "arguments", "got 0 positional and 1 keyword"),
        ("args", lambda k: (many, [valid(k)], {}), "arguments", "expected one list of events"),
        ("args", lambda k: ("recall.no_such_task", [valid(k)], {}),
         "message", "unknown task 'recall.no_such_task'"),
        ("raw", lambda k: f'{{"not json": CASE#{k}#'.encode(), "message", ""),
        ("raw", lambda k: b"\xff\xfe CASE#" + str(k).encode() + b"# \x00", "message", ""),
    ]  # fmt: skip
    numbers = iter(range(first, first + 5 * len(kinds)))
    return [
        (how, make(next(numbers)), Case(None, "invalid_event", field, fragment))
        for _ in range(5)
        for how, make, field, fragment in kinds
    ]


def send_raw(broker: str, body: bytes) -> None:
    """A message with Celery's headers for our task whose body is not JSON at all."""
    exchange = Exchange("call_results", type="direct")
    with Connection(broker) as connection:
        connection.Producer().publish(
            body,
            exchange=exchange,
            routing_key="call_results",
            serializer=None,
            content_type="application/json",
            content_encoding="utf-8",
            headers={
                "lang": "py",
                "task": "recall.process_call_result",
                "id": str(uuid.uuid4()),
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )


def test_malformed_events_and_messages_become_dead_letters_and_good_ones_are_applied(
    postgres: PostgresServer,
    broker_url: str,
    tmp_path: Path,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    bad, good = generate()
    rules = load_rules()
    for item in good:  # the good ones really are good, the bad ones really bad
        accept(orjson.loads(orjson.dumps(item)), rules, datetime.now(UTC), SKEW_S)
    refused = sum(_refused(case.payload, rules) for case in bad)
    assert refused == len(bad)
    messages = message_cases(len(bad) + len(good))
    rng = random.Random(5)
    mixed: list[Any] = [case.payload for case in bad] + good
    rng.shuffle(mixed)

    with fresh_database(postgres) as (url, engine):
        worker = worker_process(worker_env(broker_url, url, tmp_path / "home"), name="bad")
        assert worker.process is not None
        pid = worker.process.pid
        client = RecallClient(broker_url)
        sender = Celery("sender", broker=broker_url)
        published = time.monotonic()
        # Half alone, half in batches of up to 20, good and bad mixed.
        sent_messages = publish_mixed(client, mixed, rng, single_share=0.5, largest_batch=20)
        for how, what, _ in messages:
            if how == "args":
                name, args, kwargs = what
                sender.send_task(name, args=args, kwargs=kwargs, queue="call_results")
            else:
                send_raw(broker_url, what)
        client.app.close()
        sender.close()

        deadline = time.monotonic() + 120
        while True:
            with Session(engine) as session:
                letters = list(session.scalars(select(DeadLetter)))
                stored = dict(session.execute(select(ProcessedEvent.event_id,
                                                     ProcessedEvent.action)).all())  # fmt: skip
                phones = set(session.scalars(select(Phone.phone_id)))
            done = len(letters) >= len(bad) + len(messages) and len(stored) >= len(good)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        took = time.monotonic() - published
        assert worker.process.poll() is None, "the worker died"
        assert worker.process.pid == pid
        errors = [line for line in worker.text().splitlines() if "ERROR/" in line]

    by_case: dict[int, list[DeadLetter]] = {}
    for letter in letters:
        found = MARKER.search(letter.payload)
        assert found is not None, (letter.reason, letter.detail, letter.payload[:200])
        by_case.setdefault(int(found.group(1)), []).append(letter)
    wrong = []
    for number, case in enumerate(bad):
        got = by_case.get(int(MARKER.search(str(_marker_source(case.payload))).group(1)), [])  # type: ignore[union-attr]
        if not (
            len(got) == 1
            and got[0].reason == case.reason
            and got[0].detail.startswith(f"{case.field}: ")
            and case.fragment in got[0].detail
        ):
            wrong.append(
                (
                    number,
                    case.reason,
                    case.field,
                    case.fragment,
                    [(g.reason, g.detail[:120]) for g in got],
                )
            )
    assert wrong == [], wrong[:10]
    for _, what, case in messages:
        k = int(MARKER.search(orjson.dumps(what, default=repr).decode()).group(1))  # type: ignore[union-attr]
        got = by_case.get(k, [])
        assert len(got) == 1, (case, got)
        assert (got[0].reason, got[0].detail.split(":")[0]) == (case.reason, case.field)
        assert case.fragment in got[0].detail, got[0].detail
    missing = [item["event_id"] for item in good if item["event_id"] not in stored]
    assert missing == [], (len(missing), missing[:5])
    assert len(letters) == len(bad) + len(messages)
    assert all(stored.get(item["event_id"]) in ("recall", "suppress") for item in good)
    assert {item["phone_id"] for item in good} <= phones
    assert len(stored) == len(good)
    # Celery logs each refused message at ERROR itself (with a traceback for an unknown task);
    # nothing else may fail.
    refused = ("Received unregistered task", "Can't decode message body", "Received invalid task")
    assert [line for line in errors if not any(r in line for r in refused)] == []

    reasons = Counter(f"{letter.reason} {letter.detail.split(':')[0]}" for letter in letters)
    print(
        f"\nbad input: {len(bad)} malformed events and {len(messages)} malformed messages mixed "
        f"with {len(good)} good events, sent in {sent_messages + len(messages)} messages and "
        f"taken in {took:.1f} s; worker "
        f"pid {pid} alive throughout; dead letters {len(letters)} (each matched to its case: "
        f"reason and field right for {len(bad) + len(messages) - len(wrong)}); good events "
        f"applied {sum(stored.get(item['event_id']) in ('recall', 'suppress') for item in good)}"
        f" of {len(good)}; dead letters by reason and field: {dict(sorted(reasons.items()))}"
    )


def _marker_source(payload: Any) -> str:
    return payload if isinstance(payload, str) else repr(payload)


def _refused(payload: Any, rules: Any) -> bool:
    try:
        accept(payload, rules, datetime.now(UTC), SKEW_S)
    except Rejected:
        return True
    return False
