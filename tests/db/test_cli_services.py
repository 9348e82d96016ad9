"""The database commands of ``recall`` (DESIGN.md section 7) against real databases.

``recall db upgrade``, ``recall phones show|list`` and ``recall dead-letters list|replay`` run
in-process through click's ``CliRunner`` on SQLite and PostgreSQL, after the database has been
filled by the same ingestion code the worker runs. ``recall publish`` runs in a process of its
own against a real Redis.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.helpers import (
    DECISION_KEYS,
    EVENT_DEFAULTS,
    SKEW_S,
    at,
    corrupt_gzip,
    json_of,
    one_line_error,
    reset_process_state,
    truncated_gzip,
)
from worker.cli import main
from worker.domain.engine import Decision
from worker.domain.rules import Rules, load_rules
from worker.names import CALL_RESULTS_QUEUE
from worker.replay.sample import generate
from worker.store.database import make_engine
from worker.store.ingest import ingest
from worker.store.models import Recall, RulesVersion
from worker.store.recalls import fire_recalls

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
        report = ingest(session, payloads, default_rules, NOW, task="test", skew_s=SKEW_S)
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
        ("rules", "history"),
        ("rules", "diff", "abc", "def"),
    ],
)
def test_an_unmigrated_database_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    recall = invoker(f"sqlite:///{tmp_path / 'empty.db'}", monkeypatch)

    line = one_line_error(recall(*args))

    assert "recall db upgrade" in line
    assert "migration none" in line


# --- recall publish: reading its files ----------------------------------------------------------


def publish(broker_url: str, tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``recall publish ARGS`` in a process of its own (the Celery app reads its broker once)."""
    env = {**os.environ, "RECALL_BROKER_URL": broker_url, "RECALL_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "worker", "publish", *map(str, args)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def queued_events(broker_url: str) -> list[Any]:
    """The events waiting in the call_results queue, one or a list per message."""
    client = redis.Redis.from_url(broker_url)
    events: list[Any] = []
    for raw in client.lrange(CALL_RESULTS_QUEUE, 0, -1):
        (sent, *_), _, _ = orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))
        events.extend(sent if isinstance(sent, list) else [sent])
    client.close()
    return events


def csv_lines(*event_ids: str) -> list[str]:
    """A CSV header and a row for each of ``event_ids`` (each for a phone of its own)."""
    rows = [
        ",".join(str(v) for v in event(event_id=i, phone_id=f"P-{i}").values()) for i in event_ids
    ]
    return [",".join(EVENT_DEFAULTS), *rows]


@pytest.mark.parametrize("batch", [(), ("--batch", "50")])
@pytest.mark.parametrize("damage", [corrupt_gzip, truncated_gzip])
def test_publish_of_a_damaged_gzip_file_says_which_and_what_was_published(
    broker_url: str, tmp_path: Path, damage: Callable[[bytes], bytes], batch: tuple[str, ...]
) -> None:
    # A generated history: flipped bytes in its compressed form break the deflate stream itself
    # (zlib.error); in a very repetitive one they may only fail the checksum at the end.
    events = generate(seed=19, leads=60, start=at("2026-01-12T00:00:00+00:00"), days=3)
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(damage(b"".join(orjson.dumps(item) + b"\n" for item in events)))

    done = publish(broker_url, tmp_path, path, *batch)

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {path}: cannot read: "), line
    published = len(queued_events(broker_url))
    assert line.endswith(f" ({published} events published before this)"), line
    assert published < len(events)


def test_publish_goes_on_after_a_csv_row_with_an_unterminated_quote(
    broker_url: str, tmp_path: Path
) -> None:
    lines = csv_lines(*(f"g{i}" for i in range(40)))
    lines[3] = '"q1 unterminated' + lines[3][len("g2") :]
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    done = publish(broker_url, tmp_path, path)

    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        f"not published: {path}:4: unterminated quote (the quoted cell opened on this line runs"
        " to the end of the file)\n"
    )
    assert done.stdout.startswith("published 39 events in 39 messages to ")
    assert done.stdout.endswith("; 1 unreadable row not published (listed above)\n")
    sent = {item["event_id"] for item in queued_events(broker_url)}
    assert sent == {f"g{i}" for i in range(40)} - {"g2"}


def test_publish_refuses_an_unrecognised_csv_header_before_sending_anything(
    broker_url: str, tmp_path: Path
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(orjson.dumps(event()) + b"\n")
    lines = [line.replace(",", ";") for line in csv_lines("a", "b")]
    path = tmp_path / "semi.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    done = publish(broker_url, tmp_path, good, path)

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {path}: unrecognised CSV header: found '{lines[0]}'"), line
    assert "(one column: is the separator ';'?); expected columns event_id, plan_id," in line
    assert queued_events(broker_url) == []


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
            "reason": "sip_recall",
            "agent": None,
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

    limited = recall("phones", "list", "--limit", "2", "--json")  # "showing 2 of 3" on stderr
    assert [row["phone_id"] for row in orjson.loads(limited.stdout)] == ["P1", "P2"]


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


def test_phones_list_says_when_it_shows_only_part(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    # Regression (issue 12 #16): the list stopped at --limit without a word.
    text = recall("phones", "list", "--limit", "2")
    assert text.exit_code == 0, (text.output, text.exception)
    assert [line.split()[0] for line in text.stdout.splitlines()] == ["P1", "P2"]
    assert text.stderr == "showing 2 of 3 phones (--limit)\n"

    as_json = recall("phones", "list", "--limit", "2", "--json")
    assert as_json.exit_code == 0
    assert [row["phone_id"] for row in orjson.loads(as_json.stdout)] == ["P1", "P2"]
    assert as_json.stderr == "showing 2 of 3 phones (--limit)\n"
    # All shown: nothing said, even at exactly the limit.
    assert recall("phones", "list", "--limit", "3").stderr == ""
    assert recall("phones", "list", "--waiting", "--limit", "1").stderr == ""


def test_phones_list_refuses_eligible_with_waiting(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    # Regression (issue 12 #18): --eligible was silently ignored.
    result = recall("phones", "list", "--eligible", "--waiting")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: --eligible and --waiting cannot be used together")
    assert result.stderr.count("\n") == 1


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


def test_dead_letters_list_says_when_it_shows_only_part(
    recall: Invoke, filled: dict[str, Decision]
) -> None:
    # Regression (issue 12 #16): "--limit 1" said "1 dead letters" of 2.
    text = recall("dead-letters", "list", "--limit", "1")
    assert text.exit_code == 0, (text.output, text.exception)
    assert len(text.stdout.splitlines()) == 1
    assert text.stderr == "showing 1 of 2 dead letters (--limit)\n"

    as_json = recall("dead-letters", "list", "--limit", "1", "--json")
    assert as_json.exit_code == 0
    assert len(orjson.loads(as_json.stdout)) == 1
    assert as_json.stderr == "showing 1 of 2 dead letters (--limit)\n"
    assert recall("dead-letters", "list", "--limit", "2").stderr == "2 dead letters\n"


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (("99",), "error: no dead letter with id 99 (see `recall dead-letters list --all`)"),
        (("99", "98"), "error: no dead letter with id 98, 99 (see"),
    ],
)
def test_dead_letters_replay_of_an_unknown_id_is_an_error(
    recall: Invoke, filled: dict[str, Decision], ids: tuple[str, ...], expected: str
) -> None:
    # Regression (issue 12 #18): "0 dead letters taken", exit 0.
    letters = json_of(recall("dead-letters", "list", "--json"))
    args = [arg for letter_id in ids for arg in ("--id", letter_id)]
    given = ["--id", str(letters[0]["id"])]

    assert one_line_error(recall("dead-letters", "replay", *args, *given)).startswith(expected)
    assert json_of(recall("dead-letters", "list", "--json")) == letters  # nothing taken


def test_dead_letters_replay_of_a_replayed_letter_is_an_error(
    recall: Invoke, filled: dict[str, Decision], write_rules: Callable[..., Path]
) -> None:
    rules = write_rules(NEW_PLAN_RULES)
    first = json_of(recall("dead-letters", "list", "--json"))[0]["id"]
    taken = recall("dead-letters", "replay", "--id", str(first), "--rules", str(rules))
    assert taken.stdout == "1 dead letter taken, 0 still refused\n"

    again = recall("dead-letters", "replay", "--id", str(first), "--rules", str(rules))

    one_line_error(again, f"already replayed: {first}")


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
        report = ingest(session, [ahead], default_rules, NOW, task="test", skew_s=SKEW_S)
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
    assert result.stdout == "1 dead letter taken, 1 still refused\n"


def test_dead_letters_replay_with_broken_rules_is_a_one_line_error(
    recall: Invoke, filled: dict[str, Decision], write_rules: Callable[..., Path]
) -> None:
    broken = write_rules('[[plans]]\nid = "newplan"\nmax_recalls = "many"\n', "broken.toml")

    line = one_line_error(recall("dead-letters", "replay", "--rules", str(broken)))

    assert "broken.toml" in line
    assert "max_recalls" in line
    assert len(json_of(recall("dead-letters", "list", "--json"))) == 2


# --- recall demo ---------------------------------------------------------------------------------


def test_demo_counts_a_recall_fired_in_its_last_second(
    recall: Invoke, db_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression (issue 12 #17): "0 recalls fired" for a recall fired inside the window, after
    # the last look at the database.
    from worker.cli.demo import _watch

    def fire() -> None:
        time.sleep(1.5)
        now = datetime.now(UTC)
        with Session(db_engine) as session, session.begin():
            session.add(
                Recall(recall_id="r1", phone_id="P1", lead_id="L1", plan_id="default",
                       generation=1, due_at=now, source="sip_code", rule="sip:486",
                       reason="sip_recall", state="fired", created_at=now, fired_at=now)
            )  # fmt: skip

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    firing = threading.Thread(target=fire)
    try:
        firing.start()
        _watch(worker, 2)
    finally:
        firing.join()
        worker.kill()
        worker.wait()

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fired    P1 ")
    assert lines[-1] == "0 call results decided, 1 recall fired, 0 dead letters"


def test_demo_shows_the_date_of_a_time_that_is_not_today() -> None:
    # Regression (issue 12 #17): "due 23:05:16" for a time on the next day.
    from worker.cli.demo import _local

    now = datetime(2026, 1, 14, 12, 0, tzinfo=UTC).astimezone()
    later_today = now.replace(hour=23, minute=5, second=16)
    tomorrow = later_today + timedelta(days=1)

    assert _local(later_today, now) == "23:05:16"
    assert _local(tomorrow, now) == f"{tomorrow:%a} {tomorrow.date().isoformat()} 23:05:16"


# --- recall rules history | diff ---------------------------------------------------------------

CHANGED_RULES = """
[defaults]
timezone = "Europe/Paris"

[[sip_codes]]
code = 486
recall_after = { minutes = 45 }

[[sip_codes]]
code = 499
description = "Carrier special"
recall = false

[[outcomes]]
code = "APPT"
kind = "user"
recall = "after"
recall_after = { days = 2 }

[[plans]]
id = "default"
max_recalls = 3
system_recalls = { SYSNOANS = { hours = 3 } }
"""


def test_rules_history_and_diff_through_the_command_line(
    recall: Invoke, write_rules: Callable[..., Path]
) -> None:
    assert json_of(recall("rules", "history", "--json")) == []
    empty = recall("rules", "history")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (
        0,
        "",
        "no rules version recorded yet\n",
    )

    changed = write_rules(CHANGED_RULES, "changed.toml")
    # Two commands that decide against the database record the rules they decide with.
    assert json_of(recall("dead-letters", "replay", "--json"))["taken"] == 0
    assert json_of(recall("dead-letters", "replay", "--rules", str(changed), "--json"))
    defaults, new = load_rules(), load_rules(changed)

    history = json_of(recall("rules", "history", "--json"))
    assert [list(row) for row in history] == [
        ["version", "in_force_since", "source", "author", "comment"]
    ] * 2
    assert [(row["version"], row["source"]) for row in history] == [
        (new.version, f"dead-letters: file {changed}"),
        (defaults.version, "dead-letters: shipped defaults"),
    ]  # newest first
    since = [datetime.fromisoformat(row["in_force_since"]) for row in history]
    assert since[0] >= since[1]
    assert since[0].utcoffset() == timedelta(0)
    text = recall("rules", "history")
    assert text.exit_code == 0
    assert text.stdout.splitlines() == [
        f"{row['version']}  {row['in_force_since']}  {row['source']}" for row in history
    ]

    diff = json_of(recall("rules", "diff", defaults.version[:6], new.version, "--json"))
    assert (diff["from"], diff["to"]) == (defaults.version, new.version)
    busy = {"minutes": 15}
    assert diff["changes"] == [
        {"section": "defaults", "entry": "defaults", "change": "changed", "fields": [
            {"field": "timezone", "old": "Europe/London", "new": "Europe/Paris"},
        ]},
        {"section": "sip_codes", "entry": "486", "change": "changed", "fields": [
            {"field": "recall_after", "old": busy, "new": {"minutes": 45}},
        ]},
        {"section": "sip_codes", "entry": "499", "change": "added", "fields": [
            {"field": "code", "old": None, "new": 499},
            {"field": "description", "old": None, "new": "Carrier special"},
            {"field": "active", "old": None, "new": True},
            {"field": "recall", "old": None, "new": False},
        ]},
        {"section": "outcomes", "entry": "APPT", "change": "added", "fields": [
            {"field": "code", "old": None, "new": "APPT"},
            {"field": "kind", "old": None, "new": "user"},
            {"field": "description", "old": None, "new": ""},
            {"field": "recall", "old": None, "new": "after"},
            {"field": "not_same_day", "old": None, "new": False},
            {"field": "recall_after", "old": None, "new": {"days": 2}},
        ]},
        {"section": "plans", "entry": "default", "change": "changed", "fields": [
            {"field": "max_recalls", "old": 10, "new": 3},
            # A plan's field given replaces the shipped one whole (merged field by field).
            {"field": "system_recalls.SYSDROP", "old": {"hours": 72}, "new": None},
            {"field": "system_recalls.SYSNOANS", "old": {"hours": 2}, "new": {"hours": 3}},
        ]},
    ]  # fmt: skip
    backwards = json_of(recall("rules", "diff", new.version, defaults.version, "--json"))
    assert [(c["entry"], c["change"]) for c in backwards["changes"]] == [
        ("defaults", "changed"), ("486", "changed"), ("499", "removed"), ("APPT", "removed"),
        ("default", "changed"),
    ]  # fmt: skip
    assert json_of(recall("rules", "diff", new.version, new.version, "--json"))["changes"] == []

    shown = recall("rules", "diff", defaults.version, new.version[:5])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"rules {defaults.version} -> {new.version}: 5 entries changed"
    assert lines[1:4] == [
        "defaults defaults: changed",
        '  timezone: "Europe/London" -> "Europe/Paris"',
        "sip_codes 486: changed",
    ]
    assert "  recall_after: { minutes = 15 } -> { minutes = 45 }" in lines
    assert "  recall: - -> false" in lines
    assert "  system_recalls.SYSNOANS: { hours = 2 } -> { hours = 3 }" in lines


def test_rules_diff_names_a_version_it_cannot_find(recall: Invoke, database_url: str) -> None:
    json_of(recall("dead-letters", "replay", "--json"))
    known = load_rules().version
    missing = "0" if not known.startswith("0") else "1"

    one_line_error(
        recall("rules", "diff", known, missing), f"no rules version '{missing}' in the history"
    )
    one_line_error(recall("rules", "diff", "x1", known), "no rules version 'x1'", "12 hex digits")
    engine = make_engine(database_url)
    with Session(engine) as session, session.begin():
        for version in (f"{known[:3]}000000000", f"{known[:3]}fffffffff"):
            session.add(RulesVersion(version=version, rules="", in_force_since=NOW, source="x"))
    engine.dispose()
    one_line_error(
        recall("rules", "diff", known[:3], known), f"rules version '{known[:3]}' is ambiguous"
    )
