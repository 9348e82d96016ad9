"""The database commands of ``recall`` (DESIGN.md section 7) against real databases.

``recall db upgrade``, ``recall phones show|list`` and ``recall dead-letters list|replay`` run
in-process through click's ``CliRunner`` on SQLite and PostgreSQL, after the database has been
filled by the same ingestion code the worker runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.helpers import (
    DECISION_KEYS,
    EVENT_DEFAULTS,
    at,
    json_of,
    one_line_error,
    reset_process_state,
)
from worker.cli import main
from worker.engine import Decision
from worker.pipeline import ingest
from worker.rules import Rules
from worker.store import fire_recalls

# Nothing listens there: these commands must never need the broker.
BROKER = "redis://127.0.0.1:1/0"
NOW = at("2026-01-14T10:01:00+00:00")
FIRED_AT = at("2026-01-14T10:15:00+00:00")
#: The contract's phone keys (DESIGN.md section 7), in the order ``phones show`` prints them.
PHONE_KEYS_IN_ORDER = (
    "phone_id",
    "lead_id",
    "plan_id",
    "eligible",
    "eligible_at",
    "pending_recall",
    "last_result_at",
    "last_decision",
)
PHONE_KEYS = set(PHONE_KEYS_IN_ORDER)
LETTER_KEYS = {"id", "received_at", "task", "event_id", "reason", "detail", "status", "payload"}
NEW_PLAN_RULES = '[[plans]]\nid = "newplan"\ntimezone = "UTC"\n'


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("RECALL_RULES", raising=False)
    monkeypatch.delenv("RECALL_DATABASE_URL", raising=False)
    monkeypatch.setenv("RECALL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECALL_BROKER_URL", BROKER)
    reset_process_state()
    yield
    reset_process_state()


def event(**changes: Any) -> dict[str, Any]:
    return {**EVENT_DEFAULTS, **changes}


Invoke = Callable[..., Result]


def invoker(url: str, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("RECALL_DATABASE_URL", url)
    env = {"RECALL_DATABASE_URL": url, "RECALL_BROKER_URL": BROKER}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, prog_name="recall")

    return invoke


@pytest.fixture
def recall(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run ``recall ...`` against the test database."""
    return invoker(database_url, monkeypatch)


@pytest.fixture
def filled(db_engine: Engine, default_rules: Rules) -> dict[str, Decision]:
    """P1 waits for a recall, P2 is suppressed, P3 is eligible; two dead letters.

    Returns the decisions by phone id.
    """
    payloads: list[object] = [
        event(event_id="e1", phone_id="P1"),
        event(event_id="e2", phone_id="P2", lead_id="L2", sip_code=404),
        event(event_id="e3", phone_id="P3", lead_id="L3"),
        event(event_id="n1", phone_id="PN", plan_id="newplan"),
        "{not json",
    ]
    with Session(db_engine) as session, session.begin():
        report = ingest(session, payloads, default_rules, NOW, task="test")
    with Session(db_engine) as session, session.begin():
        fired = fire_recalls(session, ["e3"], FIRED_AT, early_tolerance=timedelta(0))
    assert [f.recall_id for f in fired] == ["e3"]
    return {decision.phone_id: decision for decision in report.decisions}


# --- recall db upgrade ---------------------------------------------------------------------------


def test_db_upgrade_migrates_a_new_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    recall = invoker(url, monkeypatch)

    result = recall("db", "upgrade")

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith(f"database {url} is at migration ")
    assert json_of(recall("phones", "list", "--json")) == []
    assert json_of(recall("dead-letters", "list", "--json")) == []
    # Safe to run again.
    again = recall("db", "upgrade")
    assert (again.exit_code, again.stdout) == (0, result.stdout)


def test_db_upgrade_is_safe_on_a_migrated_database(recall: Invoke, database_url: str) -> None:
    result = recall("db", "upgrade")

    assert result.exit_code == 0, (result.output, result.exception)
    assert "is at migration " in result.stdout
    assert json_of(recall("phones", "list", "--json")) == []


@pytest.mark.parametrize(
    "args",
    [
        ("phones", "show", "P1"),
        ("phones", "list"),
        ("phones", "list", "--waiting", "--json"),
        ("dead-letters", "list"),
        ("dead-letters", "replay"),
    ],
)
def test_an_unmigrated_database_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    recall = invoker(f"sqlite:///{tmp_path / 'empty.db'}", monkeypatch)

    line = one_line_error(recall(*args))

    assert "recall db upgrade" in line
    assert "migration none" in line


# --- recall phones -------------------------------------------------------------------------------


def test_phones_show_json_is_the_contract_shape(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    waiting = json_of(recall("phones", "show", "P1", "--json"))

    assert waiting == {
        "phone_id": "P1",
        "lead_id": "L1",
        "plan_id": "default",
        "eligible": False,
        "eligible_at": None,
        "pending_recall": {
            "due_at": "2026-01-14T10:15:00+00:00",
            "source": "sip_code",
            "rule": "sip:486",
        },
        "last_result_at": "2026-01-14T10:00:00+00:00",
        "last_decision": filled["P1"].to_json(),
    }
    assert set(waiting["last_decision"]) == DECISION_KEYS

    eligible = json_of(recall("phones", "show", "P3", "--json"))
    assert set(eligible) == PHONE_KEYS
    assert (eligible["eligible"], eligible["eligible_at"]) == (True, "2026-01-14T10:15:00+00:00")
    assert eligible["pending_recall"] is None
    assert eligible["last_decision"] == filled["P3"].to_json()

    suppressed = json_of(recall("phones", "show", "P2", "--json"))
    assert (suppressed["eligible"], suppressed["pending_recall"]) == (False, None)
    assert suppressed["last_decision"]["reason"] == "sip_no_recall"


def test_phones_show_prints_one_field_a_line(recall: Invoke, filled: dict[str, Decision]) -> None:
    result = recall("phones", "show", "P1")

    assert result.exit_code == 0, (result.output, result.exception)
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert list(fields) == list(PHONE_KEYS_IN_ORDER)
    assert fields["phone_id"] == "P1"
    assert fields["eligible_at"] == "-"
    assert fields["pending_recall"] == "due 2026-01-14T10:15:00+00:00 by sip:486 (sip_code)"
    assert fields["last_decision"].startswith("recall (sip_recall): SIP 486 Busy Here")


@pytest.mark.parametrize("as_json", [False, True])
def test_phones_show_an_unknown_phone_is_a_one_line_error(
    recall: Invoke, filled: dict[str, Decision], as_json: bool
) -> None:
    args = ("phones", "show", "NOPE", *(("--json",) if as_json else ()))

    assert one_line_error(recall(*args)) == "error: no phone 'NOPE'"


def test_phones_list_filters_waiting_and_eligible(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    everything = json_of(recall("phones", "list", "--json"))
    assert [row["phone_id"] for row in everything] == ["P1", "P2", "P3"]
    assert all(set(row) == PHONE_KEYS for row in everything)
    shown = json_of(recall("phones", "show", "P1", "--json"))
    assert everything[0] == shown

    waiting = json_of(recall("phones", "list", "--waiting", "--json"))
    assert [row["phone_id"] for row in waiting] == ["P1"]
    assert waiting[0]["pending_recall"] is not None

    eligible = json_of(recall("phones", "list", "--eligible", "--json"))
    assert [row["phone_id"] for row in eligible] == ["P3"]
    assert eligible[0]["eligible"] is True

    limited = json_of(recall("phones", "list", "--limit", "2", "--json"))
    assert [row["phone_id"] for row in limited] == ["P1", "P2"]


def test_phones_list_text_shows_each_phones_state(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    result = recall("phones", "list")

    assert result.exit_code == 0, (result.output, result.exception)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        ["P1", "default", "waiting", "2026-01-14T10:15:00+00:00"],
        ["P2", "default", "-"],
        ["P3", "default", "eligible", "2026-01-14T10:15:00+00:00"],
    ]
    waiting = recall("phones", "list", "--waiting")
    assert [line.split()[0] for line in waiting.stdout.splitlines()] == ["P1"]
    eligible = recall("phones", "list", "--eligible")
    assert [line.split()[0] for line in eligible.stdout.splitlines()] == ["P3"]


# --- recall dead-letters -------------------------------------------------------------------------


def test_dead_letters_list(recall: Invoke, filled: dict[str, Decision]) -> None:
    letters = json_of(recall("dead-letters", "list", "--json"))

    assert all(set(letter) == LETTER_KEYS for letter in letters)
    assert [(x["event_id"], x["reason"], x["status"], x["task"]) for x in letters] == [
        ("n1", "unknown_plan", "new", "test"),
        (None, "invalid_event", "new", "test"),
    ]
    assert letters[0]["detail"] == "plan_id: plan 'newplan' is not in the rules"
    assert orjson.loads(letters[0]["payload"]) == event(
        event_id="n1", phone_id="PN", plan_id="newplan"
    )
    assert letters[1]["payload"] == "{not json"
    assert letters[1]["detail"].startswith("event: not valid JSON")
    assert {letter["received_at"] for letter in letters} == {"2026-01-14T10:01:00+00:00"}

    text = recall("dead-letters", "list")
    assert text.exit_code == 0, (text.output, text.exception)
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    first_id = str(letters[0]["id"])
    assert lines[0].split()[:3] == [first_id, "2026-01-14T10:01:00+00:00", "unknown_plan"]
    assert lines[0].endswith("plan_id: plan 'newplan' is not in the rules")
    assert text.stderr == "2 dead letters\n"


def test_dead_letters_replay_after_a_rules_fix(
    recall: Invoke, filled: dict[str, Decision], write_rules: Callable[..., Path]
) -> None:
    # With the same rules nothing passes, and nothing changes.
    unchanged = json_of(recall("dead-letters", "replay", "--json"))
    assert (unchanged["taken"], unchanged["still_refused"]) == (0, 2)
    assert "PN" not in [row["phone_id"] for row in json_of(recall("phones", "list", "--json"))]

    rules = write_rules(NEW_PLAN_RULES)
    replayed = json_of(recall("dead-letters", "replay", "--rules", str(rules), "--json"))

    assert (replayed["taken"], replayed["still_refused"]) == (1, 1)
    assert replayed["actions"]["recall"] == 1
    phone = json_of(recall("phones", "show", "PN", "--json"))
    assert (phone["plan_id"], phone["last_decision"]["action"]) == ("newplan", "recall")
    assert phone["pending_recall"] is not None
    remaining = json_of(recall("dead-letters", "list", "--json"))
    assert [letter["payload"] for letter in remaining] == ["{not json"]
    everything = json_of(recall("dead-letters", "list", "--all", "--json"))
    assert [letter["status"] for letter in everything] == ["replayed", "new"]

    # Replaying again takes nothing more.
    text = recall("dead-letters", "replay", "--rules", str(rules))
    assert text.exit_code == 0, (text.output, text.exception)
    assert text.stdout == "0 dead letters taken, 1 still refused\n"


def test_dead_letters_replay_takes_a_letter_once_the_clock_has_passed_it(
    recall: Invoke, db_engine: Engine, default_rules: Rules
) -> None:
    # Hardening #2: ingested when the clock read NOW, an event dated a day later was refused;
    # `recall dead-letters replay` judges against the wall clock, long past that day.
    ahead = event(event_id="f1", phone_id="PF", occurred_at="2026-01-15T10:00:00+00:00")
    with Session(db_engine) as session, session.begin():
        report = ingest(session, [ahead], default_rules, NOW, task="test")
    assert report.actions == ["reject"]
    (letter,) = json_of(recall("dead-letters", "list", "--json"))
    assert (letter["event_id"], letter["reason"]) == ("f1", "invalid_event")
    assert letter["detail"].startswith("occurred_at: 2026-01-15T10:00:00+00:00 is 23.9 hours ahead")

    replayed = json_of(recall("dead-letters", "replay", "--json"))

    assert (replayed["taken"], replayed["still_refused"]) == (1, 0)
    phone = json_of(recall("phones", "show", "PF", "--json"))
    assert phone["last_result_at"] == "2026-01-15T10:00:00+00:00"


def test_dead_letters_replay_reads_rules_from_the_environment(
    recall: Invoke,
    filled: dict[str, Decision],
    write_rules: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECALL_RULES", str(write_rules(NEW_PLAN_RULES)))

    result = recall("dead-letters", "replay")

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == "1 dead letters taken, 1 still refused\n"


def test_dead_letters_replay_with_broken_rules_is_a_one_line_error(
    recall: Invoke, filled: dict[str, Decision], write_rules: Callable[..., Path]
) -> None:
    broken = write_rules('[[plans]]\nid = "newplan"\nmax_recalls = "many"\n', "broken.toml")

    line = one_line_error(recall("dead-letters", "replay", "--rules", str(broken)))

    assert "broken.toml" in line
    assert "max_recalls" in line
    assert len(json_of(recall("dead-letters", "list", "--json"))) == 2
