"""The tasks called directly: no worker and no eager mode, each task's body runs in this process
against a real database (SQLite and PostgreSQL), as Celery's testing guide suggests for units."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import get_settings
from tasks.ingest import process_call_result, process_call_results
from tasks.recalls import dispatch_due, mark_eligible
from tests.helpers import reset_process_state
from worker.app import app
from worker.domain.rules import Rules, load_rules
from worker.names import FIRE_TASK, RECALLS_QUEUE
from worker.runtime import rules_cache
from worker.store.database import get_engine
from worker.store.models import DeadLetter, Phone, ProcessedEvent, Recall, RulesVersion
from worker.store.rules_versions import record_rules_version

# The tasks decide on the real clock: the default plan opened all day, every day, so that a recall
# is due when the test says, whatever the hour or the weekday the suite runs at.
WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALWAYS_OPEN = (
    '[[plans]]\nid = "default"\ntimezone = "UTC"\ncalling_hours = { '
    + ", ".join(f'{day} = "00:00-24:00"' for day in WEEK)
    + " }\n"
)


@pytest.fixture
def database(
    monkeypatch: pytest.MonkeyPatch, database_url: str, write_rules: Callable[..., Path]
) -> Iterator[str]:
    monkeypatch.setenv("RECALL_DATABASE_URL", database_url)
    monkeypatch.setenv("RECALL_RULES", str(write_rules(ALWAYS_OPEN, "always-open.toml")))
    monkeypatch.setattr(rules_cache, "_cache", rules_cache._RulesCache())
    monkeypatch.setenv("RECALL_BROKER_URL", "redis://127.0.0.1:1/0")  # never used here
    reset_process_state()
    yield database_url
    reset_process_state()


def event(event_id: str, phone_id: str, **fields: Any) -> dict[str, Any]:
    # An hour ago: well inside the clock skew, and already a real past call.
    occurred = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    return {
        "event_id": event_id, "plan_id": "default", "lead_id": f"L-{phone_id}",
        "phone_id": phone_id, "sip_code": 486, "occurred_at": occurred.isoformat(), **fields,
    }  # fmt: skip


def rows(model: type[Any]) -> list[Any]:
    with Session(get_engine()) as session:
        return list(session.scalars(select(model)))


def test_the_batch_task_stores_good_events_and_dead_letters_the_bad(database: str) -> None:
    counts = process_call_results([event("t1", "P1"), event("t2", "P2"), {"event_id": "t3"}])

    assert counts == {"recall": 2, "reject": 1}
    assert sorted(row.event_id for row in rows(ProcessedEvent)) == ["t1", "t2"]
    assert sorted(row.recall_id for row in rows(Recall)) == ["t1", "t2"]
    (letter,) = rows(DeadLetter)
    assert (letter.task, letter.reason, letter.event_id) == (
        "recall.process_call_results", "invalid_event", "t3",
    )  # fmt: skip

    # At-least-once delivery: the same message again changes nothing.
    assert process_call_results([event("t1", "P1"), event("t2", "P2")]) == {"duplicate": 2}
    assert len(rows(Recall)) == 2


def test_the_single_task_takes_one_event_and_refuses_other_arguments(database: str) -> None:
    assert process_call_result(event("s1", "P9")) == {"recall": 1}
    assert process_call_result(event("s1", "P9")) == {"duplicate": 1}
    assert process_call_result(event("s2", "P9"), event("s3", "P9")) == {"reject": 1}

    assert [row.event_id for row in rows(ProcessedEvent)] == ["s1"]
    (letter,) = rows(DeadLetter)
    assert letter.task == "recall.process_call_result"
    assert letter.detail.startswith("arguments: expected one event, got 2 positional")


def test_the_batch_task_refuses_what_is_not_a_list(database: str) -> None:
    assert process_call_results(event("x1", "P1")) == {"reject": 1}
    (letter,) = rows(DeadLetter)
    assert letter.detail == "arguments: expected one list of events"
    assert rows(ProcessedEvent) == []


@pytest.fixture
def with_broker(database: str, broker_url: str) -> Iterator[str]:
    """The app sends to the suite's real Redis: the recall tasks publish as they run."""
    previous = app.conf.broker_url
    app.conf.broker_url = broker_url
    # The app builds its broker connection pools once; forget them so they are built anew for
    # this broker (Celery's own ``app.close`` drops only the first).
    app._pool = None
    app.amqp._producer_pool = None
    yield broker_url
    app.conf.broker_url = previous
    app._pool = None
    app.amqp._producer_pool = None


def messages(broker_url: str, queue: str) -> list[Any]:
    """The messages waiting on ``queue``: task messages as (args, headers), others as bodies."""
    client = redis.Redis.from_url(broker_url)
    try:
        found = []
        for raw in reversed(client.lrange(queue, 0, -1)):  # kombu pushes on the left
            message = orjson.loads(raw)
            body = orjson.loads(base64.b64decode(message["body"]))
            task = message["headers"].get("task")
            found.append((task, body[0], message["headers"]) if task else body)
        return found
    finally:
        client.close()


def test_the_dispatcher_hands_due_recalls_to_mark_eligible_once(with_broker: str) -> None:
    # Busy an hour ago: the 15-minute recalls are due now.
    assert process_call_results([event("d1", "P1"), event("d2", "P2")]) == {"recall": 2}

    assert dispatch_due() == 2
    (sent,) = messages(with_broker, RECALLS_QUEUE)
    task, (recall_ids,), headers = sent
    assert task == FIRE_TASK
    assert sorted(recall_ids) == ["d1", "d2"]
    assert headers["eta"] is not None
    assert all(row.dispatched_at is not None for row in rows(Recall))
    # Handed over already, and not yet overdue for a second try: nothing more to send.
    assert dispatch_due() == 0
    assert len(messages(with_broker, RECALLS_QUEUE)) == 1


def test_mark_eligible_fires_current_recalls_once_and_notifies_the_dialer(
    with_broker: str,
) -> None:
    process_call_results([event("f1", "P1"), event("f2", "P2")])

    assert mark_eligible(["f1", "f2", "no-such-recall"]) == 2
    phones = {row.phone_id: row for row in rows(Phone)}
    assert [phones["P1"].eligible, phones["P2"].eligible] == [True, True]
    assert {row.state for row in rows(Recall)} == {"fired"}
    notices = messages(with_broker, get_settings().notify_queue)
    assert sorted(notice["phone_id"] for notice in notices) == ["P1", "P2"]
    # Firing is idempotent: a redelivered message changes nothing and announces nothing.
    assert mark_eligible(["f1", "f2"]) == 0
    assert len(messages(with_broker, get_settings().notify_queue)) == 2


def test_mark_eligible_leaves_a_superseded_recall_alone(with_broker: str) -> None:
    process_call_results([event("g1", "P1")])
    later = event("g2", "P1")
    later["occurred_at"] = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    process_call_results([later])  # replaces g1's recall

    assert mark_eligible(["g1"]) == 0
    assert not rows(Phone)[0].eligible
    assert messages(with_broker, get_settings().notify_queue) == []
    assert mark_eligible(["g2"]) == 1


def test_the_notification_of_a_personal_callback_names_its_agent(with_broker: str) -> None:
    # Booked for a minute ago (the call an hour ago): due at once, fired by mark_eligible.
    booked = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    callback = {"sip_code": 200, "outcome_code": "CALLBACK", "callback_at": booked}
    process_call_results(
        [event("k1", "P1", **callback, callback_agent="agent-7"), event("k2", "P2", **callback)]
    )
    assert {row.recall_id: row.agent for row in rows(Recall)} == {"k1": "agent-7", "k2": None}

    assert mark_eligible(["k1", "k2"]) == 2
    notices = messages(with_broker, get_settings().notify_queue)
    assert {notice["phone_id"]: notice["agent"] for notice in notices} == {
        "P1": "agent-7",
        "P2": None,
    }
    assert {notice["rule"] for notice in notices} == {"outcome:CALLBACK"}


# --- the rules history: the worker records the rules it decides with ----------------------------


def use_rules(monkeypatch: pytest.MonkeyPatch, path: Path) -> Rules:
    """Point the worker at ``path``, as a changed RECALL_RULES file would once reloaded."""
    monkeypatch.setenv("RECALL_RULES", str(path))
    get_settings.cache_clear()
    monkeypatch.setattr(rules_cache, "_cache", rules_cache._RulesCache())
    return load_rules(path)


def test_the_worker_records_each_version_before_deciding_with_it(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    busy = "[[sip_codes]]\ncode = 486\nrecall_after = {{ minutes = {} }}\n"
    a = use_rules(monkeypatch, write_rules(busy.format(20), "a.toml"))
    process_call_results([event("v1", "P1")])
    process_call_result(event("v2", "P2"))  # the same rules: nothing more to record
    b = use_rules(monkeypatch, write_rules(busy.format(30), "b.toml"))
    process_call_result(event("v3", "P3"))
    process_call_results([event("v4", "P4"), event("v5", "P5")])
    # A decision already stored keeps its version when its event comes again.
    assert process_call_results([event("v1", "P1")]) == {"duplicate": 1}
    a_again = use_rules(monkeypatch, write_rules(busy.format(20), "a-again.toml"))
    process_call_results([event("v6", "P6")])

    history = rows(RulesVersion)
    assert [row.version for row in history] == [a.version, b.version, a.version]
    assert [row.source for row in history] == [
        f"file {rules.sources[-1]}" for rules in (a, b, a_again)
    ]
    assert history[1].rules == b.export_text()
    assert history[0].in_force_since <= history[1].in_force_since <= history[2].in_force_since
    stored = {row.event_id: row.decision["rules_version"] for row in rows(ProcessedEvent)}
    assert stored == {
        "v1": a.version, "v2": a.version, "v3": b.version, "v4": b.version, "v5": b.version,
        "v6": a.version,
    }  # fmt: skip
    assert len(rows(RulesVersion)) == 3


def test_a_process_that_recorded_its_rules_records_them_again_once_others_were(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    """An applied replay with other rules recorded them: the worker's come back within a minute."""
    mine = use_rules(monkeypatch, write_rules("", "mine.toml"))
    process_call_results([event("w1", "P1")])
    other = load_rules(write_rules("[[sip_codes]]\ncode = 486\nrecall_after = { hours = 1 }\n"))
    with Session(get_engine()) as session, session.begin():
        record_rules_version(session, other, "replay: file x", datetime.now(UTC))
    process_call_results([event("w2", "P2")])
    assert [row.version for row in rows(RulesVersion)] == [mine.version, other.version]
    monkeypatch.setattr(rules_cache, "RECHECK_S", 0.0)
    process_call_results([event("w3", "P3")])
    assert [row.version for row in rows(RulesVersion)] == [
        mine.version,
        other.version,
        mine.version,
    ]


def test_the_tasks_count_a_leads_calls_on_every_phone_across_messages(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    """Lead caps through the worker's own tasks: a single message, then a list, one lead."""
    use_rules(
        monkeypatch,
        write_rules(
            '[[plans]]\nid = "leadcap"\ntimezone = "UTC"\n'
            "lead_max_attempts = [ { count = 2, within = { hours = 3 } } ]\n"
        ),
    )
    first_call = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    second_call = first_call + timedelta(minutes=10)
    lead = {"plan_id": "leadcap", "lead_id": "L-shared"}
    assert process_call_result(event("c1", "A1", **lead, occurred_at=first_call.isoformat())) == {
        "recall": 1
    }
    assert process_call_results(
        [event("c2", "A2", **lead, occurred_at=second_call.isoformat())]
    ) == {"recall": 1}

    # Two calls of the lead in three hours: a third waits until the first leaves the window.
    allowed = first_call + timedelta(hours=3)
    decisions = {row.event_id: row.decision for row in rows(ProcessedEvent)}
    assert decisions["c2"]["adjustments"] == ["lead_max_attempts"]
    assert datetime.fromisoformat(decisions["c2"]["due_at"]) == allowed
    # The lead's other phone was waiting for an earlier recall: the second call moved it too.
    recalls = {row.recall_id: row.due_at for row in rows(Recall)}
    assert recalls == {"c1": allowed, "c2": allowed}
