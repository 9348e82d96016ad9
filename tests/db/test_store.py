"""Ingestion, dispatch and firing against real databases (SQLite and PostgreSQL, no mocks).

The middle test layer (STYLE.md practice 6): the domain functions behind the tasks and commands,
``worker.pipeline`` and ``worker.store``, called directly in a transaction of our own, on both
backends through the ``db_engine`` fixture. Every test reads back what was written to the tables.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from config.settings import get_settings
from tests.helpers import EVENT_DEFAULTS, SKEW_S, at, reset_process_state
from worker.domain.events import parse_event
from worker.domain.rules import Rules, RulesError, load_rules
from worker.store import queries
from worker.store.bulk import COPY_FROM_ROWS
from worker.store.decisions import apply_events, lead_key
from worker.store.ingest import IngestReport, ingest, replay_dead_letters
from worker.store.models import Attempt, DeadLetter, Phone, ProcessedEvent, Recall, RulesVersion
from worker.store.recalls import Fired, claim_due, fire_due, fire_recalls
from worker.store.rules_versions import (
    UnknownVersion,
    find_version,
    record_rules_version,
    rules_history,
)

# Wednesday 2026-01-14: the helpers' events happen at 10:00 London (GMT), inside calling hours.
NOW = at("2026-01-14T10:01:00+00:00")
# SIP 486 recalls after 15 minutes in the shipped rules, 480 after 1 hour, 408 after 2 hours.
DUE_486 = at("2026-01-14T10:15:00+00:00")
TOLERANCE = timedelta(milliseconds=500)
PHONE_KEYS = {
    "phone_id",
    "lead_id",
    "plan_id",
    "eligible",
    "eligible_at",
    "pending_recall",
    "last_result_at",
    "last_decision",
}
# Plans with one constraint each and no calling hours, so that due times are plain arithmetic.
CUSTOM_RULES = """
[[plans]]
id = "capped"
timezone = "UTC"
max_attempts = [ { count = 2, within = { hours = 1 } } ]

[[plans]]
id = "limited"
timezone = "UTC"
max_recalls = 2

[[plans]]
id = "newplan"
timezone = "UTC"

[[plans]]
id = "lead"
timezone = "UTC"
lead_max_attempts = [ { count = 2, within = { hours = 1 } } ]
"""


# --- helpers -------------------------------------------------------------------------------------


def event(**changes: Any) -> dict[str, Any]:
    """A valid event as the dialer sends it (a JSON object); a field given as None is left out."""
    data = {**EVENT_DEFAULTS, **changes}
    return {key: value for key, value in data.items() if value is not None}


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session, session.begin():
        yield session


def run_ingest(
    engine: Engine,
    payloads: Sequence[object],
    rules: Rules,
    now: datetime = NOW,
    skew_s: int | None = None,
) -> IngestReport:
    # By default the skew the worker's task reads from the settings (RECALL_CLOCK_SKEW_S).
    skew_s = get_settings().clock_skew_s if skew_s is None else skew_s
    with transaction(engine) as session:
        return ingest(session, payloads, rules, now, task="t", skew_s=skew_s)


def table(engine: Engine, model: type[Any]) -> list[Any]:
    """Every row of ``model``'s table, in primary-key order (detached, attributes loaded)."""
    with Session(engine) as session:
        keys = inspect(model).primary_key
        return list(session.scalars(select(model).order_by(*keys)))


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The whole database as plain values, to show that a call changed nothing."""
    result = {}
    for model in (ProcessedEvent, Attempt, Phone, Recall, DeadLetter):
        names = [attribute.key for attribute in inspect(model).column_attrs]
        result[model.__tablename__] = [
            {name: getattr(row, name) for name in names} for row in table(engine, model)
        ]
    return result


def phone_json(engine: Engine, phone_id: str) -> dict[str, Any] | None:
    with Session(engine) as session:
        return queries.phone(session, phone_id)


def phone_row(engine: Engine, phone_id: str) -> Phone:
    with Session(engine) as session:
        row = session.get(Phone, phone_id)
    assert row is not None, phone_id
    return row


def recall_states(engine: Engine) -> dict[str, str]:
    return {recall.recall_id: recall.state for recall in table(engine, Recall)}


def actions(report: IngestReport) -> list[str]:
    return [decision.action for decision in report.decisions]


def replay(engine: Engine, rules: Rules, now: datetime) -> tuple[IngestReport, int]:
    with transaction(engine) as session:
        return replay_dead_letters(session, rules, now, skew_s=SKEW_S)


def claim(engine: Engine, now: datetime, **options: Any) -> list[tuple[str, datetime]]:
    settings = {
        "horizon": timedelta(seconds=30),
        "redispatch_after": timedelta(minutes=5),
        "limit": 100,
    }
    with transaction(engine) as session:
        return claim_due(session, now, **{**settings, **options})


def fire(engine: Engine, ids: Sequence[str], now: datetime) -> list[Fired]:
    with transaction(engine) as session:
        return fire_recalls(session, ids, now, early_tolerance=TOLERANCE)


def dispatched(engine: Engine) -> dict[str, datetime | None]:
    return {recall.recall_id: recall.dispatched_at for recall in table(engine, Recall)}


@pytest.fixture
def rules(default_rules: Rules) -> Rules:
    return default_rules


@pytest.fixture
def custom_rules(write_rules: Callable[..., Path]) -> Rules:
    return load_rules(write_rules(CUSTOM_RULES))


def require_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row-lock races are a PostgreSQL matter: SQLite has one writer at a time")


# --- ingestion -----------------------------------------------------------------------------------


def test_the_store_uses_no_deprecated_sqlalchemy_api(db_engine: Engine, rules: Rules) -> None:
    """The project runs its tests with warnings as errors (pyproject.toml)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        run_ingest(db_engine, [event()], rules)
        fire(db_engine, ["e1"], DUE_486)
        with Session(db_engine) as session:
            queries.summary(session)


def test_ingest_writes_events_attempts_phones_and_recalls(db_engine: Engine, rules: Rules) -> None:
    busy = event(event_id="e1", phone_id="P1", call_id="c-1", campaign="spring")
    not_found = event(event_id="e2", phone_id="P2", lead_id="L2", sip_code=404)
    as_text = orjson.dumps(event(event_id="e3", phone_id="P3", lead_id="L3")).decode()

    report = run_ingest(db_engine, [busy, not_found, as_text], rules)

    assert [(d.event_id, d.action, d.reason) for d in report.decisions] == [
        ("e1", "recall", "sip_recall"),
        ("e2", "suppress", "sip_no_recall"),
        ("e3", "recall", "sip_recall"),
    ]
    assert report.dead_letters == 0
    first = report.decisions[0]
    assert (first.due_at, first.source, first.rule) == (DUE_486, "sip_code", "sip:486")

    events = {row.event_id: row for row in table(db_engine, ProcessedEvent)}
    assert sorted(events) == ["e1", "e2", "e3"]
    row = events["e1"]
    assert (row.phone_id, row.plan_id, row.lead_id) == ("P1", "default", "L1")
    assert (row.occurred_at, row.processed_at) == (at("2026-01-14T10:00:00+00:00"), NOW)
    assert (row.action, row.reason) == ("recall", "sip_recall")
    assert row.payload == busy  # the wire form, unknown extra fields kept
    assert row.decision == first.to_json()

    attempts = [(a.event_id, a.phone_id, a.occurred_at) for a in table(db_engine, Attempt)]
    occurred = at("2026-01-14T10:00:00+00:00")
    assert attempts == [("e1", "P1", occurred), ("e2", "P2", occurred), ("e3", "P3", occurred)]

    (recall_1, recall_3) = table(db_engine, Recall)
    assert recall_1.recall_id == "e1"
    assert (recall_1.phone_id, recall_1.lead_id, recall_1.plan_id) == ("P1", "L1", "default")
    assert (recall_1.due_at, recall_1.source, recall_1.rule) == (DUE_486, "sip_code", "sip:486")
    assert (recall_1.reason, recall_1.state, recall_1.generation) == ("sip_recall", "pending", 1)
    assert (recall_1.created_at, recall_1.dispatched_at, recall_1.fired_at) == (NOW, None, None)
    assert recall_3.recall_id == "e3"

    phone = phone_row(db_engine, "P1")
    assert (phone.generation, phone.pending_recall_id, phone.last_event_id) == (1, "e1", "e1")
    assert (phone.system_recalls, phone.eligible, phone.updated_at) == (1, False, NOW)

    shown = phone_json(db_engine, "P1")
    assert shown == {
        "phone_id": "P1",
        "lead_id": "L1",
        "plan_id": "default",
        "eligible": False,
        "eligible_at": None,
        "pending_recall": {
            "due_at": "2026-01-14T10:15:00+00:00",
            "source": "sip_code",
            "rule": "sip:486",
            "reason": "sip_recall",
            "agent": None,
        },
        "last_result_at": "2026-01-14T10:00:00+00:00",
        "last_decision": first.to_json(),
    }
    suppressed = phone_json(db_engine, "P2")
    assert suppressed is not None
    assert set(suppressed) == PHONE_KEYS
    assert suppressed["pending_recall"] is None
    assert suppressed["last_decision"]["reason"] == "sip_no_recall"
    assert phone_json(db_engine, "P-unknown") is None


def test_the_same_batch_twice_is_all_duplicates(db_engine: Engine, rules: Rules) -> None:
    batch = [
        event(event_id="e1", phone_id="P1"),
        event(event_id="e2", phone_id="P2", sip_code=404),
        orjson.dumps(event(event_id="e3", phone_id="P3")).decode(),
    ]
    run_ingest(db_engine, batch, rules)
    before = snapshot(db_engine)

    again = run_ingest(db_engine, batch, rules, NOW + timedelta(minutes=5))

    assert [(d.event_id, d.action, d.reason) for d in again.decisions] == [
        ("e1", "duplicate", "duplicate"),
        ("e2", "duplicate", "duplicate"),
        ("e3", "duplicate", "duplicate"),
    ]
    assert all(d.due_at is None for d in again.decisions)
    assert snapshot(db_engine) == before


def test_the_same_event_twice_in_one_batch_is_applied_once(db_engine: Engine, rules: Rules) -> None:
    report = run_ingest(db_engine, [event(), event()], rules)

    assert actions(report) == ["recall", "duplicate"]
    assert [row.event_id for row in table(db_engine, ProcessedEvent)] == ["e1"]
    assert [row.event_id for row in table(db_engine, Attempt)] == ["e1"]
    assert recall_states(db_engine) == {"e1": "pending"}
    assert phone_row(db_engine, "P1").generation == 1


def test_an_event_id_reused_for_another_phone_in_one_batch_is_a_duplicate(
    db_engine: Engine, rules: Rules
) -> None:
    """``event_id`` is the idempotency key, whatever phone the copy names.

    Across batches the copy is a duplicate; inside one batch it must be too, not an integrity
    error that loses every good event of the batch.
    """
    good = event(event_id="g1", phone_id="P9")
    report = run_ingest(
        db_engine,
        [event(event_id="e1", phone_id="P1"), event(event_id="e1", phone_id="P2"), good],
        rules,
    )

    assert sorted(actions(report)) == ["duplicate", "recall", "recall"]
    assert [row.event_id for row in table(db_engine, ProcessedEvent)] == ["e1", "g1"]


@pytest.mark.parametrize("delivery", ["two_ingests", "one_batch", "one_batch_reversed"])
def test_a_later_event_supersedes_the_pending_recall(
    db_engine: Engine, rules: Rules, delivery: str
) -> None:
    first = event(event_id="e1")
    second = event(event_id="e2", occurred_at="2026-01-14T10:05:00+00:00")
    later = at("2026-01-14T10:06:00+00:00")
    if delivery == "two_ingests":
        run_ingest(db_engine, [first], rules)
        decisions = run_ingest(db_engine, [second], rules, later).decisions
    else:
        batch = [first, second] if delivery == "one_batch" else [second, first]
        decisions = run_ingest(db_engine, batch, rules, later).decisions

    by_id = {decision.event_id: decision for decision in decisions}
    assert by_id["e2"].action == "recall"
    assert by_id["e2"].due_at == at("2026-01-14T10:20:00+00:00")
    assert "replaces the pending recall due 2026-01-14T10:15:00+00:00" in by_id["e2"].explanation
    assert recall_states(db_engine) == {"e1": "superseded", "e2": "pending"}
    phone = phone_row(db_engine, "P1")
    assert (phone.pending_recall_id, phone.last_event_id, phone.generation) == ("e2", "e2", 2)
    shown = phone_json(db_engine, "P1")
    assert shown is not None
    assert shown["pending_recall"]["due_at"] == "2026-01-14T10:20:00+00:00"


def test_max_attempts_counts_the_history_stored_in_the_database(
    db_engine: Engine, custom_rules: Rules
) -> None:
    first = event(event_id="e1", plan_id="capped")
    (decision,) = run_ingest(db_engine, [first], custom_rules).decisions
    assert (decision.due_at, decision.adjustments) == (DUE_486, ())

    # Second attempt in a separate transaction: the first one is known only from the table.
    second = event(event_id="e2", plan_id="capped", occurred_at="2026-01-14T10:05:00+00:00")
    report = run_ingest(db_engine, [second], custom_rules, at("2026-01-14T10:06:00+00:00"))

    (decision,) = report.decisions
    # 2 attempts within 1 hour: the next may come once the 10:00 attempt leaves the window.
    assert decision.action == "recall"
    assert decision.due_at == at("2026-01-14T11:00:00+00:00")
    assert decision.adjustments == ("max_attempts",)
    (recall,) = [r for r in table(db_engine, Recall) if r.state == "pending"]
    assert (recall.recall_id, recall.due_at) == ("e2", at("2026-01-14T11:00:00+00:00"))


def test_lead_caps_count_the_leads_other_phones_across_batches(
    db_engine: Engine, custom_rules: Rules
) -> None:
    """The lead's cap is 2 calls an hour on plan ``lead``; each call in its own transaction, so
    the lead's other phones are known only from the tables."""

    def call(event_id: str, phone_id: str, clock: str, **fields: Any) -> Any:
        occurred = f"2026-01-14T{clock}:00+00:00"
        fields = {"lead_id": "L", "plan_id": "lead", "timezone": None, **fields}
        payload = event(event_id=event_id, phone_id=phone_id, occurred_at=occurred, **fields)
        (decision,) = run_ingest(db_engine, [payload], custom_rules, at(occurred)).decisions
        return decision

    def dues() -> dict[str, tuple[str, datetime]]:
        return {r.recall_id: (r.state, r.due_at) for r in table(db_engine, Recall)}

    def hhmm(clock: str) -> datetime:
        return at(f"2026-01-14T{clock}:00+00:00")

    first = call("a1", "A", "10:00", lead_id="L")
    assert (first.due_at, first.adjustments) == (hhmm("10:15"), ())
    # B is the lead's second call in the hour: its recall waits until A's 10:00 leaves the
    # window (11:00), and A's pending 10:15 would now be the lead's third: 11:00 too.
    second = call("b1", "B", "10:05", lead_id="L")
    assert (second.due_at, second.adjustments) == (hhmm("11:00"), ("lead_max_attempts",))
    assert "moved the pending recall of phone A to Wed 2026-01-14 11:00 UTC" in (second.explanation)
    assert dues() == {"a1": ("pending", hhmm("11:00")), "b1": ("pending", hhmm("11:00"))}
    # Another lead is another lead.
    other = call("c1", "C", "10:10", lead_id="L2")
    assert (other.due_at, other.adjustments) == (hhmm("10:25"), ())
    # D is the lead's, on a plan without lead caps: its own recall is not capped, but its call
    # counts for the plans that do cap the lead: at 11:00 the hour holds 10:05 and 10:20, so A
    # and B wait for 10:05 to leave it.
    free = call("d1", "D", "10:20", plan_id="newplan")
    assert (free.due_at, free.adjustments) == (hhmm("10:35"), ())
    assert dues() == {
        "a1": ("pending", hhmm("11:05")),
        "b1": ("pending", hhmm("11:05")),
        "c1": ("pending", hhmm("10:25")),
        "d1": ("pending", hhmm("10:35")),
    }
    # The phones' last decisions are as decided; only the recalls moved.
    assert phone_row(db_engine, "A").last_decision["due_at"] == "2026-01-14T10:15:00+00:00"
    # Four calls at once in one batch are taken in time order, each counting those before it.
    batch = [
        event(event_id=f"e{n}", phone_id=f"P{n}", occurred_at=f"2026-01-14T12:0{n}:00+00:00",
              lead_id="M", plan_id="lead", timezone=None)
        for n in (3, 1, 2)
    ]  # fmt: skip
    decisions = run_ingest(db_engine, batch, custom_rules, hhmm("12:04")).decisions
    assert [(d.event_id, d.due_at) for d in decisions] == [
        ("e3", hhmm("13:02")),  # 12:01, 12:02, 12:03: the 2nd latest end is 12:02 + 1 h
        ("e1", hhmm("12:16")),
        ("e2", hhmm("13:01")),
    ]
    assert {k: v for k, v in dues().items() if k.startswith("e")} == {
        "e1": ("pending", hhmm("13:02")),  # moved by e2 (13:01), then by e3 (13:02)
        "e2": ("pending", hhmm("13:02")),
        "e3": ("pending", hhmm("13:02")),
    }


def test_max_recalls_counts_system_recalls_across_ingests(
    db_engine: Engine, custom_rules: Rules
) -> None:
    decisions = []
    for hour in (10, 11, 12):
        occurred = at(f"2026-01-14T{hour}:00:00+00:00")
        payload = event(event_id=f"e{hour}", plan_id="limited", occurred_at=occurred.isoformat())
        report = run_ingest(db_engine, [payload], custom_rules, occurred + timedelta(minutes=1))
        decisions.extend(report.decisions)

    assert [(d.action, d.reason) for d in decisions] == [
        ("recall", "sip_recall"),
        ("recall", "sip_recall"),
        ("suppress", "max_recalls"),
    ]
    assert decisions[2].rule == "plan:limited"
    assert recall_states(db_engine) == {"e10": "superseded", "e11": "superseded"}
    phone = phone_row(db_engine, "P1")
    assert (phone.system_recalls, phone.pending_recall_id, phone.generation) == (2, None, 3)

    # An agent's callback is not a system recall: the cap does not hold it back.
    callback = event(
        event_id="e13", plan_id="limited", occurred_at="2026-01-14T13:00:00+00:00",
        outcome_code="CALLBACK",
    )  # fmt: skip
    report = run_ingest(db_engine, [callback], custom_rules, at("2026-01-14T13:01:00+00:00"))
    assert [(d.action, d.reason) for d in report.decisions] == [("recall", "user_recall")]
    assert phone_row(db_engine, "P1").system_recalls == 2


# --- agent callbacks -----------------------------------------------------------------------------

# The helpers' events occur on Wednesday 2026-01-14 10:00 UTC; the callback is booked for
# Thursday 15:30 UTC (inside the default plan's hours, GMT).
BOOKED = "2026-01-15T15:30:00+00:00"


def callback(**changes: Any) -> dict[str, Any]:
    """An agent's CALLBACK disposition with its booked time (the shipped outcome is a callback)."""
    return event(**{"sip_code": 200, "outcome_code": "CALLBACK", "callback_at": BOOKED, **changes})


def test_a_personal_callback_is_stored_shown_and_fired_with_its_agent(
    db_engine: Engine, rules: Rules
) -> None:
    report = run_ingest(db_engine, [callback(event_id="cb", callback_agent="agent-7")], rules)

    (decision,) = report.decisions
    assert (decision.action, decision.reason, decision.rule, decision.due_at) == (
        "recall", "callback", "outcome:CALLBACK", at(BOOKED),
    )  # fmt: skip
    (recall,) = table(db_engine, Recall)
    assert (recall.due_at, recall.source, recall.reason, recall.agent) == (
        at(BOOKED), "user_outcome", "callback", "agent-7",
    )  # fmt: skip
    shown = phone_json(db_engine, "P1")
    assert shown is not None
    assert set(shown) == PHONE_KEYS
    assert shown["pending_recall"] == {
        "due_at": BOOKED,
        "source": "user_outcome",
        "rule": "outcome:CALLBACK",
        "reason": "callback",
        "agent": "agent-7",
    }
    (fired,) = fire(db_engine, ["cb"], at(BOOKED))
    assert (fired.agent, fired.to_json()["agent"]) == ("agent-7", "agent-7")

    # Without callback_agent anyone may take it: null in the phone and in the notification.
    run_ingest(db_engine, [callback(event_id="any", phone_id="P2", lead_id="L2")], rules)
    anyone = phone_json(db_engine, "P2")
    assert anyone is not None
    assert (anyone["pending_recall"]["reason"], anyone["pending_recall"]["agent"]) == (
        "callback", None,
    )  # fmt: skip
    (fired,) = fire(db_engine, ["any"], at(BOOKED))
    assert fired.to_json()["agent"] is None


@pytest.mark.parametrize("delivery", ["two_ingests", "one_batch", "late_callback"])
def test_a_system_result_before_the_callback_is_due_keeps_it(
    db_engine: Engine, rules: Rules, delivery: str
) -> None:
    booked = callback(event_id="cb", callback_agent="agent-7")
    busy = event(event_id="busy", occurred_at="2026-01-14T11:00:00+00:00")
    clock = at("2026-01-14T11:01:00+00:00")
    if delivery == "two_ingests":
        run_ingest(db_engine, [booked], rules)
        run_ingest(db_engine, [busy], rules, clock)
    elif delivery == "one_batch":
        run_ingest(db_engine, [busy, booked], rules, clock)
    else:  # the busy call first; the callback before it arrives late and winds the phone back
        run_ingest(db_engine, [busy], rules, clock)
        run_ingest(db_engine, [booked], rules, clock)

    stored = {row.event_id: row.decision for row in table(db_engine, ProcessedEvent)}
    kept = stored["busy"]
    assert (kept["action"], kept["reason"], kept["source"], kept["rule"], kept["due_at"]) == (
        "suppress", "callback_pending", "sip_code", "outcome:CALLBACK", None,
    )  # fmt: skip
    assert stored["cb"]["reason"] == "callback"
    # The callback keeps its time and its agent; the busy call counts as an attempt.
    (recall,) = table(db_engine, Recall)
    assert (recall.recall_id, recall.state, recall.due_at, recall.agent) == (
        "cb", "pending", at(BOOKED), "agent-7",
    )  # fmt: skip
    assert sorted(a.event_id for a in table(db_engine, Attempt)) == ["busy", "cb"]
    phone = phone_row(db_engine, "P1")
    assert (phone.pending_recall_id, phone.last_event_id, phone.generation) == ("cb", "busy", 2)
    assert phone.system_recalls == 0
    shown = phone_json(db_engine, "P1")
    assert shown is not None
    assert shown["pending_recall"]["agent"] == "agent-7"
    assert shown["last_decision"] == kept


def test_a_user_result_replaces_a_pending_callback_and_one_after_it_is_due_is_normal(
    db_engine: Engine, rules: Rules
) -> None:
    run_ingest(db_engine, [callback(event_id="cb")], rules)
    not_now = event(event_id="later", occurred_at="2026-01-14T12:00:00+00:00", sip_code=200,
                    outcome_code="NOTNOW")  # fmt: skip
    (decision,) = run_ingest(db_engine, [not_now], rules, at("2026-01-14T12:01:00+00:00")).decisions
    assert (decision.action, decision.reason) == ("recall", "user_recall")
    assert recall_states(db_engine) == {"cb": "superseded", "later": "pending"}

    # Another phone: its callback is due at 15:30; a busy call at 15:40, before the dispatcher
    # fired it, is decided as usual and replaces it.
    run_ingest(db_engine, [callback(event_id="cb2", phone_id="P2", lead_id="L2")], rules)
    after = event(event_id="after", phone_id="P2", lead_id="L2",
                  occurred_at="2026-01-15T15:40:00+00:00")  # fmt: skip
    (decision,) = run_ingest(db_engine, [after], rules, at("2026-01-15T15:41:00+00:00")).decisions
    assert (decision.action, decision.reason) == ("recall", "sip_recall")
    assert decision.due_at == at("2026-01-15T15:55:00+00:00")
    assert recall_states(db_engine)["cb2"] == "superseded"


def test_a_late_call_after_a_kept_callback_ends_as_the_calls_in_order(
    db_engine: Engine, rules: Rules
) -> None:
    """The phone is wound back to a callback_pending result: the callback it kept (superseded
    since by a user result) waits again, and the later calls are decided anew after the late one."""
    story = [
        ("cb", {"sip_code": 200, "outcome_code": "CALLBACK", "callback_at": BOOKED}),
        ("busy", {"occurred_at": "2026-01-14T11:00:00+00:00"}),
        ("late", {"occurred_at": "2026-01-14T11:30:00+00:00", "sip_code": 487}),
        ("user", {"occurred_at": "2026-01-14T12:00:00+00:00", "sip_code": 200,
                  "outcome_code": "NOTNOW"}),
    ]  # fmt: skip
    calls = {
        name: {key: event(event_id=f"{name}-{key}", phone_id=name, **fields)
               for key, fields in story}
        for name in ("ordered", "rewound")
    }  # fmt: skip
    clock = at("2026-01-14T12:01:00+00:00")
    for key, _ in story:
        run_ingest(db_engine, [calls["ordered"][key]], rules, clock)
    for key in ("cb", "busy", "user", "late"):
        run_ingest(db_engine, [calls["rewound"][key]], rules, clock)

    reasons = {row.event_id: row.reason for row in table(db_engine, ProcessedEvent)}
    assert [reasons[f"rewound-{key}"] for key, _ in story] == [
        "callback", "callback_pending", "callback_pending", "user_recall",
    ]  # fmt: skip
    assert recall_states(db_engine)["rewound-cb"] == "superseded"
    want = _phone_story(db_engine, "ordered", "ordered")
    assert _phone_story(db_engine, "rewound", "rewound") == want


# --- dead letters --------------------------------------------------------------------------------


def test_bad_inputs_become_dead_letters_and_good_ones_are_applied(
    db_engine: Engine, rules: Rules
) -> None:
    missing = event(event_id="bad-missing", phone_id=None)
    naive = event(event_id="bad-naive", phone_id="PX", occurred_at="2026-01-14T10:00:00")
    unknown_plan = event(event_id="bad-plan", phone_id="PY", plan_id="nope")
    not_json = '{"event_id": "bad-text", not json'
    payloads: list[object] = [
        event(event_id="g1", phone_id="P1"),
        missing,
        naive,
        unknown_plan,
        not_json,
        ["a", "list"],
        42,
        orjson.dumps(event(event_id="g2", phone_id="P2")).decode(),
    ]

    report = run_ingest(db_engine, payloads, rules)

    assert [(d.event_id, d.action) for d in report.decisions] == [
        ("g1", "recall"),
        ("g2", "recall"),
    ]
    assert report.dead_letters == 6
    assert report.counts() == {"recall": 2, "reject": 6}
    assert [row.phone_id for row in table(db_engine, Phone)] == ["P1", "P2"]

    letters = table(db_engine, DeadLetter)
    assert [(x.reason, x.event_id) for x in letters] == [
        ("invalid_event", "bad-missing"),
        ("invalid_event", "bad-naive"),
        ("unknown_plan", "bad-plan"),
        ("invalid_event", None),
        ("invalid_event", None),
        ("invalid_event", None),
    ]
    details = [letter.detail for letter in letters]
    assert details[0] == "phone_id: required"
    assert details[1] == "occurred_at: no UTC offset in '2026-01-14T10:00:00'"
    assert details[2] == "plan_id: plan 'nope' is not in the rules"
    assert details[3].startswith("event: not valid JSON")
    assert details[4] == "event: must be a JSON object, got an array"
    assert details[5] == "event: must be a JSON object, got an integer"
    assert [(x.task, x.status, x.received_at, x.replayed_at) for x in letters] == [
        ("t", "new", NOW, None)
    ] * 6
    # Payloads are kept as text: objects as their JSON, text exactly as it came.
    assert [orjson.loads(letter.payload) for letter in letters[:3]] == [
        missing,
        naive,
        unknown_plan,
    ]
    assert letters[3].payload == not_json
    assert (letters[4].payload, letters[5].payload) == ('["a","list"]', "42")


def test_json_text_of_a_non_object_is_a_dead_letter(db_engine: Engine, rules: Rules) -> None:
    report = run_ingest(db_engine, ['"just text"', "null", "[]", ""], rules)

    assert (report.decisions, report.dead_letters) == ([], 4)
    letters = table(db_engine, DeadLetter)
    assert [(x.payload, x.detail) for x in letters[:3]] == [
        ('"just text"', "event: must be a JSON object, got a string"),
        ("null", "event: must be a JSON object, got null"),
        ("[]", "event: must be a JSON object, got an array"),
    ]
    assert letters[3].payload == ""
    assert letters[3].detail.startswith("event: not valid JSON")


def test_over_long_ids_are_refused_with_a_length_reason(db_engine: Engine, rules: Rules) -> None:
    huge_id = 'id-"quoted"-' + "x" * 10_240
    huge_phone = "☎" * 10_240
    just_over = "e" * 256
    payloads = [
        event(event_id=huge_id),
        event(event_id="e2", phone_id=huge_phone),
        event(event_id=just_over),
    ]

    report = run_ingest(db_engine, payloads, rules)

    assert (report.decisions, report.dead_letters) == ([], 3)
    letters = table(db_engine, DeadLetter)
    assert [(x.reason, x.detail) for x in letters] == [
        ("invalid_event", f"event_id: longer than 255 characters ({len(huge_id)})"),
        ("invalid_event", "phone_id: longer than 255 characters (10240)"),
        ("invalid_event", "event_id: longer than 255 characters (256)"),
    ]
    # The whole payload is kept, so the sender can be fixed from the dead letter alone.
    assert orjson.loads(letters[0].payload) == payloads[0]
    assert orjson.loads(letters[1].payload)["phone_id"] == huge_phone
    for letter, full in ((letters[0], huge_id), (letters[2], just_over)):
        assert letter.event_id is None or full.startswith(letter.event_id)
    assert table(db_engine, Phone) == []


def test_ids_with_quotes_and_unicode_round_trip_exactly(db_engine: Engine, rules: Rules) -> None:
    event_id = "e\"1'; DROP TABLE events; --\\"
    phone_id = "P'\"\\ ünïcödé 日本 🙂\t%s %(x)s"
    lead_id = 'L\n"x"' + "🙂" * 200
    longest = "🙂" * 255  # 255 characters (1,020 bytes of UTF-8): still within the limit
    payloads = [
        event(event_id=event_id, phone_id=phone_id, lead_id=lead_id, call_id="c'\"🙂"),
        event(event_id=longest, phone_id=longest, lead_id=longest),
    ]

    report = run_ingest(db_engine, payloads, rules)

    assert actions(report) == ["recall", "recall"]
    assert report.dead_letters == 0
    stored = {row.event_id: row for row in table(db_engine, ProcessedEvent)}
    assert set(stored) == {event_id, longest}
    assert stored[event_id].payload == payloads[0]
    assert (stored[event_id].phone_id, stored[event_id].lead_id) == (phone_id, lead_id)
    assert set(recall_states(db_engine)) == {event_id, longest}
    shown = phone_json(db_engine, phone_id)
    assert shown is not None
    assert (shown["phone_id"], shown["lead_id"]) == (phone_id, lead_id)
    assert shown["last_decision"]["event_id"] == event_id
    assert phone_row(db_engine, longest).pending_recall_id == longest


def test_an_id_that_is_not_valid_unicode_is_a_dead_letter(db_engine: Engine, rules: Rules) -> None:
    """A lone surrogate (``"\\ud800"`` is valid JSON and Celery decodes it) cannot be stored.

    It must be refused like any malformed input, not crash the transaction with the good event.
    """
    good = event(event_id="g1", phone_id="P1")
    bad = event(event_id="e\ud800", phone_id="P2")

    report = run_ingest(db_engine, [good, bad], rules)

    assert actions(report) == ["recall"]
    assert report.dead_letters == 1
    (letter,) = table(db_engine, DeadLetter)
    assert letter.reason == "invalid_event"
    assert letter.detail.startswith("event_id:")


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"sip_code": 2**70}, f"sip_code: must be between 100 and 699, got {2**70}"),
        ({"retry_after_s": -(2**64)}, "retry_after_s: must be between 0 and 31622400, got"),
        ({"note": 2**64}, "note: cannot be stored as JSON (a lone surrogate or an integer past"),
        ({"note": "x\udfff"}, "note: cannot be stored as JSON (a lone surrogate or an integer"),
    ],
)
def test_what_json_cannot_store_is_refused_with_the_right_reason(
    db_engine: Engine, rules: Rules, changes: dict[str, Any], detail: str
) -> None:
    """Integers past 64 bits (valid JSON, decoded by Celery) read as out of range, not as bad
    Unicode; in an extra field, they and lone surrogates are refused as unstorable."""
    report = run_ingest(db_engine, [event(**changes), event(event_id="g1", phone_id="P2")], rules)

    assert actions(report) == ["recall"]
    (letter,) = table(db_engine, DeadLetter)
    assert (letter.reason, letter.event_id) == ("invalid_event", "e1")
    assert letter.detail.startswith(detail), letter.detail


def test_the_longest_plan_id_with_a_plan_level_recall_is_stored(
    db_engine: Engine, write_rules: Callable[..., Path]
) -> None:
    """The longest plan id the rules accept (64 characters) must be storable in a rule.

    The plan's own ``system_recalls`` time makes the recall's rule ``plan:<id>``.
    """
    plan_id = "campaign-" + "q" * 55
    rules = load_rules(
        write_rules(
            f'[[plans]]\nid = "{plan_id}"\ntimezone = "UTC"\n'
            "system_recalls = { SYSNOANS = { hours = 2 } }\n"
        )
    )

    report = run_ingest(db_engine, [event(plan_id=plan_id, outcome_code="SYSNOANS")], rules)

    (decision,) = report.decisions
    assert (decision.action, decision.rule) == ("recall", f"plan:{plan_id}")
    (recall,) = table(db_engine, Recall)
    assert recall.rule == f"plan:{plan_id}"


def test_a_plan_id_too_long_for_a_rule_is_refused_by_the_rules(
    write_rules: Callable[..., Path],
) -> None:
    path = write_rules(f'[[plans]]\nid = "{"q" * 65}"\n')
    with pytest.raises(
        RulesError, match=r"plans\[0\]: id: must be non-empty, at most 64 characters"
    ):
        load_rules(path)


# --- replaying dead letters ----------------------------------------------------------------------


def test_replay_takes_letters_that_pass_now_and_keeps_the_rest(
    db_engine: Engine, rules: Rules, custom_rules: Rules
) -> None:
    run_ingest(
        db_engine,
        [
            event(event_id="n1", phone_id="PN", plan_id="newplan"),
            event(event_id="o1", phone_id="PO", plan_id="other"),
            "{not json",
        ],
        rules,
    )
    later = at("2026-01-14T10:05:00+00:00")

    report, refused = replay(db_engine, custom_rules, later)

    assert [(d.event_id, d.action, d.due_at) for d in report.decisions] == [
        ("n1", "recall", DUE_486)
    ]
    assert refused == 2
    letters = table(db_engine, DeadLetter)
    assert [(x.event_id, x.status, x.replayed_at) for x in letters] == [
        ("n1", "replayed", later),
        ("o1", "new", None),
        (None, "new", None),
    ]
    assert [x.reason for x in letters[1:]] == ["unknown_plan", "invalid_event"]
    assert letters[1].detail == "plan_id: plan 'other' is not in the rules"
    assert recall_states(db_engine) == {"n1": "pending"}
    shown = phone_json(db_engine, "PN")
    assert shown is not None
    assert shown["plan_id"] == "newplan"
    assert shown["last_decision"] == report.decisions[0].to_json()

    before = snapshot(db_engine)
    report, refused = replay(db_engine, custom_rules, later + timedelta(minutes=1))
    assert (report.decisions, refused) == ([], 2)
    assert snapshot(db_engine) == before


def test_replay_refuses_what_ingestion_refused(db_engine: Engine, rules: Rules) -> None:
    """A doubly encoded event (JSON text of a JSON string) is not an event object.

    Ingestion refuses it; replaying the letter with the same rules must refuse it again rather
    than decode it one more time and take it.
    """
    double = orjson.dumps(orjson.dumps(event(event_id="d1")).decode()).decode()
    run_ingest(db_engine, [double], rules)
    (letter,) = table(db_engine, DeadLetter)
    assert letter.detail == "event: must be a JSON object, got a string"

    report, refused = replay(db_engine, rules, NOW + timedelta(minutes=1))

    assert (actions(report), refused) == ([], 1)
    assert [x.status for x in table(db_engine, DeadLetter)] == ["new"]
    assert table(db_engine, ProcessedEvent) == []


def test_replay_of_one_event_id_dead_lettered_for_two_phones(
    db_engine: Engine, rules: Rules, custom_rules: Rules
) -> None:
    """Two letters with one ``event_id`` (a sender reusing ids) must not wedge the replay.

    The letters stay "new" after a failed replay, so an integrity error here fails every later
    ``recall dead-letters replay`` too.
    """
    run_ingest(db_engine, [event(event_id="n1", phone_id="PA", plan_id="newplan")], rules)
    run_ingest(db_engine, [event(event_id="n1", phone_id="PB", plan_id="newplan")], rules)

    report, refused = replay(db_engine, custom_rules, NOW + timedelta(minutes=1))

    assert sorted(actions(report)) == ["duplicate", "recall"]
    assert refused == 0
    assert [row.event_id for row in table(db_engine, ProcessedEvent)] == ["n1"]


def test_an_event_far_ahead_of_the_clock_is_a_dead_letter_and_poisons_nothing(
    db_engine: Engine, rules: Rules
) -> None:
    # Hardening #2: a dialer's clock said 2099; trusted, every real call for PF would be late.
    future = event(
        event_id="fut-1", plan_id="manual", lead_id="L", phone_id="PF",
        occurred_at="2099-06-01T10:00:00Z", outcome_code="CALLBACK",
    )  # fmt: skip
    report = run_ingest(db_engine, [future, event(event_id="ok", phone_id="PO")], rules)

    assert report.actions == ["reject", "recall"]
    (letter,) = table(db_engine, DeadLetter)
    assert (letter.event_id, letter.reason) == ("fut-1", "invalid_event")
    assert letter.detail == (
        "occurred_at: 2099-06-01T10:00:00+00:00 is 26,800 days ahead of the clock"
        " (2026-01-14T10:01:00+00:00); the limit is RECALL_CLOCK_SKEW_S=300 s"
    )
    assert phone_json(db_engine, "PF") is None
    # A real call for PF is decided as any other.
    (decision,) = run_ingest(db_engine, [event(event_id="real", phone_id="PF")], rules).decisions
    assert (decision.action, decision.due_at) == ("recall", DUE_486)


def test_the_clock_skew_is_a_bound_on_how_far_ahead_an_event_may_be(
    db_engine: Engine, rules: Rules, monkeypatch: pytest.MonkeyPatch
) -> None:
    within = event(event_id="in", phone_id="P1", occurred_at="2026-01-14T10:06:00+00:00")
    beyond = event(event_id="out", phone_id="P2", occurred_at="2026-01-14T10:06:01+00:00")
    assert run_ingest(db_engine, [within, beyond], rules).actions == ["recall", "reject"]
    (letter,) = table(db_engine, DeadLetter)
    assert letter.detail.startswith("occurred_at: 2026-01-14T10:06:01+00:00 is 301 s ahead")

    monkeypatch.setenv("RECALL_CLOCK_SKEW_S", "0")
    reset_process_state()
    try:
        late = event(event_id="zero", phone_id="P3", occurred_at="2026-01-14T10:01:01+00:00")
        (rejected,) = run_ingest(db_engine, [late], rules).rejected
        assert rejected[2].endswith("the limit is RECALL_CLOCK_SKEW_S=0 s")
    finally:
        monkeypatch.delenv("RECALL_CLOCK_SKEW_S")
        reset_process_state()


def test_a_letter_from_the_future_is_taken_once_the_clock_has_passed_it(
    db_engine: Engine, rules: Rules
) -> None:
    ahead = event(event_id="f1", phone_id="PF", occurred_at="2026-01-14T11:00:00+00:00")
    run_ingest(db_engine, [ahead], rules)

    # Still ahead of the clock: refused again, with the clock of this replay in the reason.
    report, refused = replay(db_engine, rules, at("2026-01-14T10:30:00+00:00"))
    assert (actions(report), refused) == ([], 1)
    (letter,) = table(db_engine, DeadLetter)
    assert (letter.status, letter.reason) == ("new", "invalid_event")
    assert "ahead of the clock (2026-01-14T10:30:00+00:00)" in letter.detail

    # Within the skew of a later clock: taken, and decided as of its own time.
    report, refused = replay(db_engine, rules, at("2026-01-14T10:55:00+00:00"))
    assert (actions(report), refused) == (["recall"], 0)
    assert report.decisions[0].due_at == at("2026-01-14T11:15:00+00:00")
    assert [x.status for x in table(db_engine, DeadLetter)] == ["replayed"]


# --- dispatch: claim_due -------------------------------------------------------------------------


@pytest.fixture
def three_recalls(db_engine: Engine, rules: Rules) -> Engine:
    """Recalls A due 10:15, B due 11:00 and C due 12:00 (SIP 486, 480 and 408 at 10:00)."""
    run_ingest(
        db_engine,
        [
            event(event_id="A", phone_id="PA", sip_code=486),
            event(event_id="B", phone_id="PB", sip_code=480),
            event(event_id="C", phone_id="PC", sip_code=408),
        ],
        rules,
    )
    return db_engine


def test_claim_due_hands_over_each_due_recall_once(three_recalls: Engine, rules: Rules) -> None:
    engine = three_recalls
    first = at("2026-01-14T10:14:45+00:00")

    assert claim(engine, first) == [("A", DUE_486)]
    assert dispatched(engine) == {"A": first, "B": None, "C": None}
    assert claim(engine, first) == []
    # Due and still pending, but not yet long enough past due to count as lost.
    assert claim(engine, at("2026-01-14T10:16:00+00:00")) == []
    assert dispatched(engine)["A"] == first

    # Still pending 5 minutes after it was due: the message was lost, hand it over again.
    lost = at("2026-01-14T10:20:01+00:00")
    assert claim(engine, lost) == [("A", DUE_486)]
    assert dispatched(engine)["A"] == lost
    assert claim(engine, lost) == []

    assert [f.recall_id for f in fire(engine, ["A"], lost)] == ["A"]
    run_ingest(
        engine,
        [event(event_id="B2", phone_id="PB", sip_code=404, occurred_at="2026-01-14T10:30:00Z")],
        rules,
        at("2026-01-14T10:31:00+00:00"),
    )
    assert recall_states(engine) == {"A": "fired", "B": "superseded", "C": "pending"}

    # Hours later: the fired and the superseded recall are never claimed again.
    late = at("2026-01-14T13:00:00+00:00")
    assert claim(engine, late) == [("C", at("2026-01-14T12:00:00+00:00"))]
    assert claim(engine, late + timedelta(minutes=1)) == []
    assert dispatched(engine) == {"A": lost, "B": None, "C": late}


def test_claim_due_respects_the_horizon(three_recalls: Engine) -> None:
    now = at("2026-01-14T10:30:00+00:00")

    assert claim(three_recalls, now, horizon=timedelta(minutes=29)) == [("A", DUE_486)]
    assert claim(three_recalls, now, horizon=timedelta(minutes=30)) == [
        ("B", at("2026-01-14T11:00:00+00:00"))
    ]
    assert dispatched(three_recalls)["C"] is None


def test_claim_due_respects_the_limit_in_due_order(db_engine: Engine, rules: Rules) -> None:
    run_ingest(
        db_engine,
        [
            event(event_id=f"r{m}", phone_id=f"P{m}", occurred_at=f"2026-01-14T10:0{m}:00Z")
            for m in (4, 2, 0, 3, 1)
        ],
        rules,
        at("2026-01-14T10:05:00+00:00"),
    )
    now = at("2026-01-14T11:00:00+00:00")

    batches = [[rid for rid, _ in claim(db_engine, now, limit=2)] for _ in range(4)]

    assert batches == [["r0", "r1"], ["r2", "r3"], ["r4"], []]


# --- firing: fire_recalls ------------------------------------------------------------------------


def test_fire_recalls_makes_the_phone_eligible_once(db_engine: Engine, rules: Rules) -> None:
    (decision,) = run_ingest(db_engine, [event()], rules).decisions
    now = at("2026-01-14T10:15:00.200000+00:00")

    fired = fire(db_engine, ["e1"], now)

    assert fired == [
        Fired("e1", "P1", "L1", "default", DUE_486, now, "sip_code", "sip:486", None, "sip_recall"),
    ]
    assert fired[0].to_json() == {
        "type": "phone_eligible",
        "version": 1,
        "phone_id": "P1",
        "lead_id": "L1",
        "plan_id": "default",
        "recall_id": "e1",
        "due_at": "2026-01-14T10:15:00+00:00",
        "fired_at": "2026-01-14T10:15:00.200000+00:00",
        "source": "sip_code",
        "rule": "sip:486",
        "agent": None,
    }
    (recall,) = table(db_engine, Recall)
    assert (recall.state, recall.fired_at) == ("fired", now)
    phone = phone_row(db_engine, "P1")
    assert (phone.eligible, phone.eligible_at, phone.pending_recall_id) == (True, now, None)
    assert phone_json(db_engine, "P1") == {
        "phone_id": "P1",
        "lead_id": "L1",
        "plan_id": "default",
        "eligible": True,
        "eligible_at": "2026-01-14T10:15:00.200000+00:00",
        "pending_recall": None,
        "last_result_at": "2026-01-14T10:00:00+00:00",
        "last_decision": decision.to_json(),
    }

    before = snapshot(db_engine)
    assert fire(db_engine, ["e1"], now + timedelta(minutes=1)) == []
    assert fire(db_engine, ["e1", "e1", "no-such-recall"], now + timedelta(hours=1)) == []
    assert fire(db_engine, [], now) == []
    assert snapshot(db_engine) == before


def test_a_superseded_recall_does_not_fire(db_engine: Engine, rules: Rules) -> None:
    run_ingest(db_engine, [event(event_id="e1")], rules)
    second = event(event_id="e2", occurred_at="2026-01-14T10:05:00+00:00")
    run_ingest(db_engine, [second], rules, at("2026-01-14T10:06:00+00:00"))
    late = at("2026-01-14T11:00:00+00:00")

    before = snapshot(db_engine)
    assert fire(db_engine, ["e1"], late) == []
    assert snapshot(db_engine) == before

    fired = fire(db_engine, ["e1", "e2"], late)
    assert [f.recall_id for f in fired] == ["e2"]
    assert recall_states(db_engine) == {"e1": "superseded", "e2": "fired"}
    phone = phone_row(db_engine, "P1")
    assert (phone.eligible, phone.pending_recall_id) == (True, None)


def test_a_recall_delivered_early_is_handed_back(db_engine: Engine, rules: Rules) -> None:
    run_ingest(db_engine, [event()], rules)
    claimed_at = at("2026-01-14T10:14:45+00:00")
    assert claim(db_engine, claimed_at) == [("e1", DUE_486)]

    # Two seconds early (a skewed clock): not fired, and free for the dispatcher again.
    assert fire(db_engine, ["e1"], DUE_486 - timedelta(seconds=2)) == []
    (recall,) = table(db_engine, Recall)
    assert (recall.state, recall.dispatched_at, recall.fired_at) == ("pending", None, None)
    phone = phone_row(db_engine, "P1")
    assert (phone.eligible, phone.pending_recall_id) == (False, "e1")
    assert claim(db_engine, claimed_at) == [("e1", DUE_486)]

    # Within the tolerance: fired.
    almost = DUE_486 - timedelta(milliseconds=400)
    assert [f.recall_id for f in fire(db_engine, ["e1"], almost)] == ["e1"]
    assert phone_row(db_engine, "P1").eligible_at == almost


# --- concurrency (PostgreSQL row locks) ----------------------------------------------------------


def race(engine: Engine, *jobs: Callable[[Session], Any]) -> list[Any]:
    """Run each job in its own thread, session and transaction, all released at once."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[Session], Any]) -> None:
        try:
            with Session(engine) as session, session.begin():
                barrier.wait(timeout=30)
                results[index] = job(session)
        except BaseException as error:  # reported in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racer hung"
    assert errors == []
    return results


def ingesting(payload: dict[str, Any], rules: Rules, now: datetime) -> Callable[[Session], Any]:
    def job(session: Session) -> list[Any]:
        return ingest(session, [payload], rules, now, task="t", skew_s=SKEW_S).decisions

    return job


def test_two_workers_on_one_phone_serialise(db_engine: Engine, rules: Rules) -> None:
    require_postgresql(db_engine)
    now = at("2026-01-14T10:06:00+00:00")
    for round_ in range(6):
        phone = f"R{round_}"
        newer = event(event_id=f"{phone}-new", phone_id=phone, occurred_at="2026-01-14T10:05Z")
        older = event(event_id=f"{phone}-old", phone_id=phone, occurred_at="2026-01-14T10:00Z")
        jobs = [ingesting(newer, rules, now), ingesting(older, rules, now)]
        if round_ % 2:
            jobs.reverse()
        results = race(db_engine, *jobs)
        decisions = {d.event_id: d for found in results for d in found}
        d_new, d_old = decisions[f"{phone}-new"], decisions[f"{phone}-old"]
        # Whatever the commit order, the phone ends as in order: the older call's recall was
        # replaced by the newer's (re-decided after it when the older one committed second).
        assert (d_new.action, d_old.action) == ("recall", "recall")

        recalls = {r.recall_id: r.state for r in table(db_engine, Recall) if r.phone_id == phone}
        attempts = [a for a in table(db_engine, Attempt) if a.phone_id == phone]
        row = phone_row(db_engine, phone)
        assert len(attempts) == 2
        assert recalls == {f"{phone}-old": "superseded", f"{phone}-new": "pending"}
        assert (row.pending_recall_id, row.last_event_id) == (f"{phone}-new", f"{phone}-new")
        assert row.last_result_at == at("2026-01-14T10:05:00+00:00")
        assert row.generation == 2
        assert row.system_recalls == row.generation


def test_the_events_of_one_lead_wait_for_each_other_on_any_phone(
    db_engine: Engine, rules: Rules
) -> None:
    """Two phones of one lead are decided one batch at a time: the lead's lock is held."""
    require_postgresql(db_engine)
    run_ingest(db_engine, [event(event_id="k1", phone_id="K1", lead_id="LK")], rules)
    done = threading.Event()

    def other_phone() -> None:
        with transaction(db_engine) as session:
            ingest(session, [event(event_id="k2", phone_id="K2", lead_id="LK")], rules, NOW,
                   task="t", skew_s=SKEW_S)  # fmt: skip
        done.set()

    worker = threading.Thread(target=other_phone)
    with transaction(db_engine) as holder:
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lead_key("LK")})
        worker.start()
        deadline = time.monotonic() + 20
        while lock_waiters(db_engine) < 1:
            assert time.monotonic() < deadline, "the other phone's batch never waited for the lead"
            time.sleep(0.005)
        assert not done.is_set()
    worker.join(timeout=30)
    assert done.is_set()
    assert phone_row(db_engine, "K2").last_event_id == "k2"


def test_two_workers_on_two_phones_of_one_lead_never_exceed_its_cap(
    db_engine: Engine, custom_rules: Rules
) -> None:
    """Plan ``lead`` allows the lead 2 calls an hour: calls on two of its phones at 10:00 and
    10:01, taken by two workers at once, leave both recalls at 11:00 (when 10:00 leaves the
    hour), whichever commits first: the second sees the first's call, and moves its recall."""
    require_postgresql(db_engine)
    now = at("2026-01-14T10:02:00+00:00")
    for round_ in range(6):
        lead = f"LR{round_}"
        calls = [
            event(event_id=f"{lead}-{phone}", phone_id=f"{lead}-{phone}", lead_id=lead,
                  plan_id="lead", timezone=None, occurred_at=f"2026-01-14T10:0{minute}:00Z")
            for minute, phone in enumerate("AB")
        ]  # fmt: skip
        jobs = [ingesting(call, custom_rules, now) for call in calls]
        if round_ % 2:
            jobs.reverse()
        race(db_engine, *jobs)
        dues = {r.recall_id: r.due_at for r in table(db_engine, Recall) if r.lead_id == lead}
        assert dues == {
            f"{lead}-A": at("2026-01-14T11:00:00Z"),
            f"{lead}-B": at("2026-01-14T11:00:00Z"),
        }


def lock_waiters(engine: Engine) -> int:
    """Sessions of this database waiting for a lock (a fresh connection: stats are per snapshot)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with engine.connect() as connection:
        return int(connection.scalar(query) or 0)


def queued_race(engine: Engine, phone_id: str, *jobs: Callable[[Session], Any]) -> list[Any]:
    """Run the jobs concurrently, queued on ``phone_id``'s row lock in the order given.

    A gate transaction holds the lock until every job is waiting for it (PostgreSQL grants a
    row lock to its waiters in turn), so both commit orders can be tested, not just the likely one.
    """
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[Session], Any]) -> None:
        try:
            with Session(engine) as session, session.begin():
                results[index] = job(session)
        except BaseException as error:  # reported in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(jobs)]
    with transaction(engine) as gate:
        gate.execute(select(Phone.phone_id).where(Phone.phone_id == phone_id).with_for_update())
        for count, thread in enumerate(threads, start=1):
            thread.start()
            deadline = time.monotonic() + 20
            while lock_waiters(engine) < count:
                assert time.monotonic() < deadline, "a racer never queued for the lock"
                time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racer hung"
    assert errors == []
    return results


@pytest.mark.parametrize("first", ["fire", "ingest"])
@pytest.mark.parametrize("sip", [486, 404])
def test_firing_and_superseding_one_recall_at_once_stay_consistent(
    db_engine: Engine, rules: Rules, first: str, sip: int
) -> None:
    require_postgresql(db_engine)
    now = at("2026-01-14T10:15:01+00:00")
    run_ingest(db_engine, [event(event_id="e1")], rules)
    # 486 schedules a new recall; 404 suppresses recalls for the phone.
    later = event(event_id="e2", sip_code=sip, occurred_at="2026-01-14T10:10:00+00:00")

    def firing(session: Session) -> list[Fired]:
        return fire_recalls(session, ["e1"], now, early_tolerance=TOLERANCE)

    if first == "fire":
        fired, (decision,) = queued_race(db_engine, "P1", firing, ingesting(later, rules, now))
    else:
        (decision,), fired = queued_race(db_engine, "P1", ingesting(later, rules, now), firing)

    states = recall_states(db_engine)
    row = phone_row(db_engine, "P1")
    assert decision.action == ("recall" if sip == 486 else "suppress")
    if first == "fire":  # the recall fired; the later result then had nothing to replace
        assert [f.recall_id for f in fired] == ["e1"]
        assert states["e1"] == "fired"
        assert decision.supersedes is None
    else:  # superseded while the firing waited for the phone: it must do nothing
        assert fired == []
        assert states["e1"] == "superseded"
        assert decision.supersedes is not None
    # Either way the later result decides the phone, and no state contradicts another.
    assert (row.generation, row.last_event_id) == (2, "e2")
    assert (row.eligible, row.eligible_at) == (False, None)
    pending = [recall_id for recall_id, state in states.items() if state == "pending"]
    expected = "e2" if sip == 486 else None
    assert row.pending_recall_id == expected
    assert pending == ([expected] if expected else [])


def test_a_phone_created_while_a_batch_took_it_as_new_is_decided_with_its_history(
    db_engine: Engine, rules: Rules
) -> None:
    """A large batch takes phones it does not find as new and inserts them once, at the end.

    Here the live worker creates one of them meanwhile (its transaction still open when the
    batch looks): the batch's insert waits for it, finds the phone there, and the batch is
    decided again with that phone's history, as if it had come after.
    """
    require_postgresql(db_engine)
    batch = [
        parse_event(event(event_id=f"b{n}", phone_id=f"P{n}", occurred_at="2026-01-14T10:05:00Z"))
        for n in range(COPY_FROM_ROWS)
    ]
    results: list[Any] = []

    def apply_batch() -> None:
        with transaction(db_engine) as session:
            results.append(apply_events(session, batch, rules, NOW))

    with transaction(db_engine) as live:
        ingest(live, [event(event_id="e0", phone_id="P0")], rules, NOW, task="t", skew_s=SKEW_S)
        racer = threading.Thread(target=apply_batch)
        racer.start()
        deadline = time.monotonic() + 20
        while lock_waiters(db_engine) < 1:  # the batch's insert waits for the live worker's row
            assert time.monotonic() < deadline, "the batch never waited for the phone"
            time.sleep(0.005)
    racer.join(timeout=60)
    assert not racer.is_alive()

    (applied,) = results
    assert [decision.action for decision in applied.decisions] == ["recall"] * COPY_FROM_ROWS
    row = phone_row(db_engine, "P0")
    assert (row.generation, row.last_event_id, row.pending_recall_id) == (2, "b0", "b0")
    assert recall_states(db_engine)["e0"] == "superseded"
    assert {p.phone_id: p.generation for p in table(db_engine, Phone)} == {
        f"P{n}": 2 if n == 0 else 1 for n in range(COPY_FROM_ROWS)
    }
    assert len(table(db_engine, ProcessedEvent)) == COPY_FROM_ROWS + 1


def recall_rows(engine: Engine) -> dict[str, tuple[str, datetime, datetime | None]]:
    return {r.recall_id: (r.state, r.due_at, r.fired_at) for r in table(engine, Recall)}


def test_a_firing_queued_behind_a_late_call_reads_the_recall_it_moved(
    db_engine: Engine, custom_rules: Rules
) -> None:
    """The firing learns which recalls to fire before it gets the phone's lock; the due time it
    checks must be the one after the lock (a late call moved the recall meanwhile)."""
    require_postgresql(db_engine)
    capped = {"plan_id": "capped"}
    run_ingest(db_engine, [event(**capped)], custom_rules, at("2026-01-14T10:01:00+00:00"))
    assert recall_rows(db_engine)["e1"] == ("pending", at("2026-01-14T10:15:00+00:00"), None)
    # Calls at 09:50 and 10:00 fill the cap of 2 in an hour: 10:00's recall waits for 10:50.
    late = event(event_id="e0", occurred_at="2026-01-14T09:50:00+00:00", **capped)
    now = at("2026-01-14T10:15:01+00:00")

    def firing(session: Session) -> list[Fired]:
        return fire_recalls(session, ["e1"], now, early_tolerance=TOLERANCE)

    _, fired = queued_race(db_engine, "P1", ingesting(late, custom_rules, now), firing)

    assert fired == []
    assert recall_rows(db_engine)["e1"] == ("pending", at("2026-01-14T10:50:00+00:00"), None)
    assert phone_row(db_engine, "P1").pending_recall_id == "e1"


# --- calls that arrive out of order --------------------------------------------------------------


def test_an_older_call_is_decided_in_its_place_and_the_newer_one_again(
    db_engine: Engine, rules: Rules
) -> None:
    newer = event(event_id="e2", occurred_at="2026-01-14T10:30:00+00:00")
    run_ingest(db_engine, [newer], rules, at("2026-01-14T10:31:00+00:00"))
    assert recall_states(db_engine) == {"e2": "pending"}

    # Same instant as 09:45 UTC, written with another offset: compared as instants.
    older = event(event_id="e1", occurred_at="2026-01-14T10:45:00+01:00", sip_code=480)
    report = run_ingest(db_engine, [older], rules, at("2026-01-14T10:32:00+00:00"))

    (decision,) = report.decisions  # 480 recalls after an hour, as it would have in order
    assert (decision.action, decision.reason) == ("recall", "sip_recall")
    assert decision.due_at == at("2026-01-14T10:45:00+00:00")
    stored = {row.event_id: (row.action, row.decision) for row in table(db_engine, ProcessedEvent)}
    assert stored["e1"] == ("recall", decision.to_json())
    assert stored["e2"][0] == "recall"
    assert (
        "replaces the pending recall due 2026-01-14T10:45:00+00:00"
        in (stored["e2"][1]["explanation"])
    )
    assert recall_states(db_engine) == {"e1": "superseded", "e2": "pending"}
    assert {a.event_id for a in table(db_engine, Attempt)} == {"e1", "e2"}
    phone = phone_row(db_engine, "P1")
    assert (phone.generation, phone.system_recalls) == (2, 2)
    assert (phone.last_event_id, phone.pending_recall_id) == ("e2", "e2")
    assert phone.last_decision == stored["e2"][1]
    again = run_ingest(db_engine, [older, newer], rules, at("2026-01-14T10:33:00+00:00"))
    assert len(again.decisions) == 2  # duplicates now
    assert recall_states(db_engine) == {"e1": "superseded", "e2": "pending"}


def test_late_calls_hold_the_pending_recall_to_the_attempt_cap(
    db_engine: Engine, rules: Rules
) -> None:
    """Plan default allows 3 calls in 24 hours: three busy calls at 10:00, 10:05 and 10:10 put
    the recall at 10:00 the next day, whatever order they arrive in."""
    calls = [
        event(event_id=f"c{n}", occurred_at=f"2026-01-14T10:{minutes}:00+00:00")
        for n, minutes in enumerate(("00", "05", "10"))
    ]
    in_order_at = at("2026-01-15T10:00:00+00:00")

    late = [calls[2], calls[0], calls[1]]  # the newest first: the other two are late
    clock = at("2026-01-14T10:11:00+00:00")  # when the calls arrive, after all three
    decisions = [run_ingest(db_engine, [call], rules, clock).decisions[0] for call in late]

    assert [(d.action, d.due_at) for d in decisions] == [
        ("recall", at("2026-01-14T10:25:00+00:00")),
        ("recall", at("2026-01-14T10:15:00+00:00")),
        ("recall", at("2026-01-14T10:20:00+00:00")),
    ]
    recalls = {r.recall_id: (r.state, r.due_at, r.generation) for r in table(db_engine, Recall)}
    assert recalls == {
        "c0": ("superseded", at("2026-01-14T10:15:00+00:00"), 1),
        "c1": ("superseded", at("2026-01-14T10:20:00+00:00"), 2),
        "c2": ("pending", in_order_at, 3),
    }
    with Session(db_engine) as session:
        shown = queries.phone(session, "P1")
    assert shown is not None
    assert shown["pending_recall"]["due_at"] == in_order_at.isoformat()
    assert shown["last_decision"]["adjustments"] == ["max_attempts"]


def test_a_late_call_never_unfires_a_recall_it_would_have_replaced(
    db_engine: Engine, rules: Rules
) -> None:
    """The 10:00 call's recall fired at 10:15; a 10:10 call that arrives after it would have
    replaced it in order, but a firing was announced and cannot be taken back: the late call
    is stale (an attempt, which still holds the pending recall to the 3-in-24-hours cap)."""
    run_ingest(db_engine, [event(event_id="e1")], rules)
    fire(db_engine, ["e1"], at("2026-01-14T10:15:00+00:00"))
    newer = event(event_id="e2", occurred_at="2026-01-14T10:20:00+00:00")
    run_ingest(db_engine, [newer], rules, at("2026-01-14T10:21:00+00:00"))
    before = {row.event_id: row.decision for row in table(db_engine, ProcessedEvent)}

    late = event(event_id="e0", occurred_at="2026-01-14T10:10:00+00:00")
    (decision,) = run_ingest(db_engine, [late], rules, at("2026-01-14T10:22:00+00:00")).decisions

    assert (decision.action, decision.reason) == ("stale", "stale")
    assert decision.reschedules == at("2026-01-15T10:00:00+00:00")
    assert recall_states(db_engine) == {"e1": "fired", "e2": "pending"}
    stored = {row.event_id: row.decision for row in table(db_engine, ProcessedEvent)}
    assert {key: stored[key] for key in before} == before
    phone = phone_row(db_engine, "P1")
    assert (phone.generation, phone.pending_recall_id, phone.eligible) == (2, "e2", False)


def test_a_late_call_after_a_firing_keeps_it_and_redecides_what_followed(
    db_engine: Engine, rules: Rules
) -> None:
    """The 10:00 call's recall fired at 10:15, before the late call's time (10:20): in order it
    fired too. The call at 10:30 is decided again after the late one."""
    run_ingest(db_engine, [event(event_id="e1")], rules)
    fired_at = at("2026-01-14T10:15:00.300000+00:00")
    fire(db_engine, ["e1"], fired_at)
    e3 = event(event_id="e3", occurred_at="2026-01-14T10:30:00+00:00")
    run_ingest(db_engine, [e3], rules, at("2026-01-14T10:31:00+00:00"))

    late = event(event_id="e2", occurred_at="2026-01-14T10:20:00+00:00")
    (decision,) = run_ingest(db_engine, [late], rules, at("2026-01-14T10:32:00+00:00")).decisions

    assert (decision.action, decision.due_at) == ("recall", at("2026-01-14T10:35:00+00:00"))
    assert "replaces" not in decision.explanation  # the phone was eligible, nothing pending
    assert recall_states(db_engine) == {"e1": "fired", "e2": "superseded", "e3": "pending"}
    recalls = {r.recall_id: r for r in table(db_engine, Recall)}
    assert recalls["e1"].fired_at == fired_at
    # The late call is the third in 24 hours: the 10:30 call's recall waits for the next day.
    assert recalls["e3"].due_at == at("2026-01-15T10:00:00+00:00")
    phone = phone_row(db_engine, "P1")
    assert (phone.generation, phone.pending_recall_id, phone.eligible) == (3, "e3", False)


def _phone_story(engine: Engine, phone_id: str, prefix: str) -> dict[str, Any]:
    """Everything stored about one phone, with its event ids made relative to ``prefix``."""

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(prefix, "#")
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    def rows(model: type[Any], *skip: str) -> list[dict[str, Any]]:
        names = [a.key for a in inspect(model).column_attrs if a.key not in skip]
        found = [{name: plain(getattr(row, name)) for name in names}
                 for row in table(engine, model) if row.phone_id == phone_id]  # fmt: skip
        return sorted(found, key=lambda row: str(row))

    return {
        "events": rows(ProcessedEvent, "processed_at"),
        "attempts": rows(Attempt),
        "recalls": rows(Recall, "created_at"),
        "phone": rows(Phone, "updated_at"),
    }


@pytest.mark.parametrize("seed", range(3))
def test_any_arrival_order_ends_as_the_in_order_run(
    db_engine: Engine, rules: Rules, seed: int
) -> None:
    """Random histories on a capped plan with calling hours (busy, no answer, agent callbacks,
    a final code), delivered shuffled in random batches with redeliveries, end exactly as the
    same calls delivered in order, one by one."""
    codes = [(486, None), (480, None), (487, None), (200, "CALLBACK"), (404, None), (486, None)]
    _arrival_orders_end_as_in_order(db_engine, rules, random.Random(seed), codes)


@pytest.mark.parametrize("seed", range(3))
def test_any_arrival_order_with_booked_callbacks_ends_as_the_in_order_run(
    db_engine: Engine, rules: Rules, seed: int
) -> None:
    """The same with callbacks booked 30 minutes to a day ahead, some personal: system results
    before one is due are kept from replacing it (callback_pending) in every arrival order."""
    codes = [(486, None), (487, None), (200, "CALLBACK", 30, None), (200, "CALLBACK", 600, "a7"),
             (200, "CALLBACK", 1440, None), (200, "NOTNOW"), (404, None)]  # fmt: skip
    _arrival_orders_end_as_in_order(db_engine, rules, random.Random(seed), codes)


SPAN_S = 2 * 86_400


def _arrival_orders_end_as_in_order(
    db_engine: Engine, rules: Rules, rng: random.Random, codes: Sequence[tuple[Any, ...]]
) -> None:
    # Each code is (SIP code, outcome[, callback_at minutes after the call, callback_agent]).
    def fields(minute: int, code: int, outcome: str | None, *callback: Any) -> dict[str, Any]:
        occurred = NOW + timedelta(minutes=minute)
        found: dict[str, Any] = {"occurred_at": occurred.isoformat(), "sip_code": code,
                                 "outcome_code": outcome}  # fmt: skip
        if callback:
            found["callback_at"] = (occurred + timedelta(minutes=callback[0])).isoformat()
            found["callback_agent"] = callback[1]
        return found

    for story in range(8):
        moments = sorted(rng.sample(range(0, 36 * 60, 7), rng.randint(2, 7)))
        drawn = list(zip(moments, rng.choices(codes, k=len(moments)), strict=True))
        calls = {
            name: [
                event(event_id=f"{name}{story}-{k}", phone_id=f"{name}{story}",
                      **fields(minute, *code))
                for k, (minute, code) in enumerate(drawn)
            ]
            for name in ("ordered", "shuffled")
        }  # fmt: skip
        # The calls span 36 hours after the clock: a skew that takes them all.
        for call in calls["ordered"]:
            run_ingest(db_engine, [call], rules, skew_s=SPAN_S)
        arriving = calls["shuffled"] + rng.sample(calls["shuffled"], len(moments) // 2)
        rng.shuffle(arriving)
        while arriving:
            size = rng.randint(1, 3)
            run_ingest(db_engine, arriving[:size], rules, skew_s=SPAN_S)
            arriving = arriving[size:]
        want = _phone_story(db_engine, f"ordered{story}", "ordered")
        assert len(want["events"]) == len(moments)
        assert _phone_story(db_engine, f"shuffled{story}", "shuffled") == want


# --- an applied replay beside live workers -------------------------------------------------------


def test_a_replay_holds_its_recalls_from_the_live_dispatcher(
    db_engine: Engine, rules: Rules
) -> None:
    live_due = at("2026-01-14T10:15:00+00:00")
    run_ingest(db_engine, [event(event_id="live", phone_id="LIVE")], rules)
    history = [
        parse_event(event(event_id="old", phone_id="H1", occurred_at="2026-01-14T09:00:00+00:00")),
        parse_event(event(event_id="new", phone_id="H2", occurred_at="2026-01-14T10:00:00+00:00")),
    ]
    with transaction(db_engine) as session:
        apply_events(session, history, rules, None)
    states = {r.recall_id: r.state for r in table(db_engine, Recall)}
    assert states == {"live": "pending", "old": "held", "new": "held"}

    # The live dispatcher, an hour later, claims only the live recall.
    later = at("2026-01-14T11:00:00+00:00")
    with transaction(db_engine) as session:
        claimed = claim_due(
            session, later, horizon=timedelta(seconds=30),
            redispatch_after=timedelta(seconds=15), limit=100,
        )  # fmt: skip
    assert [recall_id for recall_id, _ in claimed] == ["live"]

    # The replay ends at 10:10: its 09:15 recall fires at its due time, its 10:15 one is
    # released to the live dispatcher, and the overdue live recall is left alone.
    with transaction(db_engine) as session:
        assert fire_due(session, at("2026-01-14T10:10:00+00:00")) == 1
    recalls = {r.recall_id: r for r in table(db_engine, Recall)}
    assert (recalls["old"].state, recalls["old"].fired_at) == ("fired", recalls["old"].due_at)
    assert recalls["new"].state == "pending"
    assert (recalls["live"].state, recalls["live"].due_at) == ("pending", live_due)


# --- the rules history (DESIGN.md section 9) -----------------------------------------------------

BUSY_AFTER = "[[sip_codes]]\ncode = 486\nrecall_after = {{ minutes = {} }}\n"


def record(engine: Engine, rules: Rules, when: datetime, source: str = "file x") -> bool:
    with transaction(engine) as session:
        return record_rules_version(session, rules, source, when)


def test_a_version_is_recorded_when_it_comes_into_force_and_again_when_it_comes_back(
    db_engine: Engine, write_rules: Callable[..., Path]
) -> None:
    a = load_rules(write_rules(BUSY_AFTER.format(20), "a.toml"))
    b = load_rules(write_rules(BUSY_AFTER.format(30), "b.toml"))
    times = [NOW + timedelta(minutes=minutes) for minutes in range(5)]

    in_turn = [a, a, b, b, a]
    recorded = [record(db_engine, rules, when) for rules, when in zip(in_turn, times, strict=True)]

    assert recorded == [True, False, True, False, True]
    rows = table(db_engine, RulesVersion)
    assert [(row.version, row.in_force_since) for row in rows] == [
        (a.version, times[0]), (b.version, times[2]), (a.version, times[4]),
    ]  # fmt: skip
    assert rows[0].rules == a.export_text()
    assert (rows[0].source, rows[0].author, rows[0].comment) == ("file x", None, None)
    with transaction(db_engine) as session:
        history = rules_history(session)
        assert [row.version for row in history] == [a.version, b.version, a.version]  # newest first
        assert find_version(session, b.version[:4]).rules == b.export_text()
        assert find_version(session, a.version.upper()).id == rows[2].id  # as last in force


def test_api_edits_keep_their_author_and_comment(db_engine: Engine, rules: Rules) -> None:
    with transaction(db_engine) as session:
        record_rules_version(session, rules, "api", NOW, author="ops", comment="Xmas hours")
    (row,) = table(db_engine, RulesVersion)
    assert (row.source, row.author, row.comment) == ("api", "ops", "Xmas hours")


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        pytest.param(
            "abc", "rules version 'abc' is ambiguous: abc123000000, abc456000000", id="ambiguous"
        ),
        pytest.param("abd", "no rules version 'abd' in the history", id="unknown"),
        pytest.param("zz%", "no rules version 'zz%' (a version is 12 hex digits)", id="not-hex"),
        pytest.param("abc1230000000", "a version is 12 hex digits", id="too-long"),
    ],
)  # fmt: skip
def test_a_version_asked_for_must_name_exactly_one(
    db_engine: Engine, asked: str, message: str
) -> None:
    with transaction(db_engine) as session:
        for version in ("abc123000000", "abc456000000", "abc123000000"):
            session.add(RulesVersion(version=version, rules="", in_force_since=NOW, source="x"))
    with transaction(db_engine) as session, pytest.raises(UnknownVersion) as raised:
        find_version(session, asked)
    assert message in str(raised.value)
    with transaction(db_engine) as session:
        assert find_version(session, "abc1").version == "abc123000000"  # one version, two rows


def test_two_writers_of_one_new_version_record_it_once(
    db_engine: Engine, write_rules: Callable[..., Path]
) -> None:
    """Two workers that load new rules at once: one row (PostgreSQL: an advisory lock)."""
    record(db_engine, load_rules(), NOW)
    rules = load_rules(write_rules(BUSY_AFTER.format(20)))

    def writer(session: Session) -> bool:
        written = record_rules_version(session, rules, "file x", NOW)
        time.sleep(0.2)  # hold the transaction open: the other writer has looked meanwhile
        return written

    assert sorted(race(db_engine, writer, writer)) == [False, True]
    assert [row.version for row in table(db_engine, RulesVersion)] == [
        load_rules().version, rules.version,
    ]  # fmt: skip


def test_no_code_updates_or_deletes_a_rules_version() -> None:
    """The history is append-only: only the store's record function writes it, by INSERT."""
    root = Path(__file__).resolve().parents[2]
    for path in [*root.glob("worker/**/*.py"), *root.glob("tasks/**/*.py")]:
        code = path.read_text(encoding="utf-8")
        for pattern in ("update(RulesVersion", "delete(RulesVersion", "UPDATE rules_versions",
                        "DELETE FROM rules_versions", "session.delete("):  # fmt: skip
            assert pattern not in code, f"{path}: {pattern}"
