"""The tasks called directly: no worker and no eager mode, each task's body runs in this process
against a real database (SQLite and PostgreSQL), as Celery's testing guide suggests for units."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.ingest import process_call_result, process_call_results
from tests.helpers import reset_process_state
from worker.store.database import get_engine
from worker.store.models import DeadLetter, ProcessedEvent, Recall


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[str]:
    monkeypatch.setenv("RECALL_DATABASE_URL", database_url)
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
