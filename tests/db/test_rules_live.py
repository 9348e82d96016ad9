"""The rules in force (DESIGN.md section 9): the newest version in the history decides.

Edits through the API (``put_rules``), the workers taking them within seconds, the rules file
still recorded when it changes (and not when a worker restarts with it unchanged), ``recall
status`` saying which rules decide, and the preview of a change over the stored call results.
On SQLite and PostgreSQL; the tasks are called directly, and a real worker takes an edit.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from config.settings import get_settings
from tasks.ingest import process_call_result, process_call_results
from tests.db.test_replay import RULES as REPLAY_RULES
from tests.db.test_replay import SLOWER_BUSY
from tests.helpers import SKEW_S, json_of, one_line_error, reset_process_state
from tests.workers import WorkerProcess, decision_of
from worker.cli import main
from worker.client import RecallClient
from worker.domain.rules import (
    DEFAULT_RULES_PATH,
    RulesError,
    load_rules,
    rules_from_export,
    rules_from_text,
)
from worker.replay.preview import preview_rules
from worker.replay.sample import generate, write_jsonl
from worker.runtime import rules_cache
from worker.store.database import get_engine, make_engine, session_scope
from worker.store.ingest import ingest
from worker.store.models import ProcessedEvent, RulesVersion
from worker.store.rules_versions import (
    in_force,
    put_rules,
    record_rules_version,
    rules_of,
    source_of,
)

BROKER = "redis://127.0.0.1:1/0"  # nothing listens: these tests never need the broker
KEEP = rules_cache.KEEP_VERSIONS
BUSY = "[[sip_codes]]\ncode = 486\nrecall_after = {{ minutes = {} }}\n"
NOW = datetime(2026, 1, 20, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("RECALL_RULES", "RECALL_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECALL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECALL_BROKER_URL", BROKER)
    reset_process_state()
    yield
    reset_process_state()


def rows(engine: Engine) -> list[RulesVersion]:
    with Session(engine) as session:
        return list(session.scalars(select(RulesVersion).order_by(RulesVersion.id)))


def edit(engine: Engine, text: str, **fields: Any) -> Any:
    with session_scope(engine) as session:
        return put_rules(
            session, text, author=fields.get("author", "ops"),
            comment=fields.get("comment", "change"), now=fields.get("now", datetime.now(UTC)),
            via=fields.get("via", "api"),
        )  # fmt: skip


# --- a version's stored text --------------------------------------------------------------------


def test_a_stored_version_loads_back_to_the_same_rules(write_rules: Callable[..., Path]) -> None:
    text = BUSY.format(25) + "[[sip_codes]]\ncode = 499\nrecall = false\n"
    for rules in (load_rules(), load_rules(write_rules(text))):
        again = rules_from_export(rules.export_text(), "stored")
        assert again.version == rules.version
        assert again.export_text() == rules.export_text()
        assert again.to_toml_data() == rules.to_toml_data()
        # Built-in as the shipped defaults say, though the text was loaded whole.
        assert {c: r.builtin for c, r in again.sip_codes.items()} == {
            c: r.builtin for c, r in rules.sip_codes.items()
        }
    added = rules_from_export(load_rules(write_rules(text)).export_text(), "stored")
    assert (added.sip_codes[499].builtin, added.sip_codes[486].builtin) == (False, True)
    assert added.sources == ("stored",)


def test_a_stored_version_is_loaded_once_per_database_and_a_few_are_kept(
    db_engine: Engine, database_url: str
) -> None:
    stored = [edit(db_engine, BUSY.format(minutes)) for minutes in range(10, 11 + KEEP)]
    first = rules_cache.stored_rules(db_engine, stored[0])
    assert first.version == stored[0].version
    assert rules_cache.stored_rules(db_engine, stored[0]) is first  # kept: not loaded again
    other = make_engine(database_url)  # another engine: its own versions
    try:
        assert rules_cache.stored_rules(other, stored[0]) is not first
    finally:
        other.dispose()
    for row in stored[1:]:  # KEEP more versions: the first is no longer kept
        assert rules_cache.stored_rules(db_engine, row).version == row.version
    again = rules_cache.stored_rules(db_engine, stored[0])
    assert again is not first
    assert again.version == first.version
    assert len(rows(db_engine)) == KEEP + 1  # read only: nothing recorded


# --- edits through the API: put_rules -----------------------------------------------------------


def test_an_edit_comes_into_force_with_its_author_and_comment(db_engine: Engine) -> None:
    when = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    row = edit(db_engine, BUSY.format(40), author="alice", comment="busy lines later", now=when)

    expected = rules_from_text(BUSY.format(40), "rules.toml")
    assert (row.version, row.source, row.author, row.comment) == (
        expected.version, "api", "alice", "busy lines later",
    )  # fmt: skip
    assert row.in_force_since == when
    assert row.rules == expected.export_text()
    (stored,) = rows(db_engine)
    assert (stored.id, stored.source, stored.author, stored.comment) == (
        row.id, "api", "alice", "busy lines later",
    )  # fmt: skip
    with session_scope(db_engine) as session:
        assert in_force(session) == row
        assert rules_of(row).version == row.version

    by_console = edit(db_engine, BUSY.format(50), author="bob", via="console")
    assert (by_console.source, by_console.author) == ("console", "bob")
    with pytest.raises(ValueError, match="via must be one of api, console"):
        edit(db_engine, BUSY.format(60), via="file")


def test_an_edit_of_the_version_in_force_records_nothing(db_engine: Engine) -> None:
    first = edit(db_engine, BUSY.format(40), author="alice")
    # The same rules written otherwise (a comment, another order): the same version.
    again = edit(db_engine, "# again\n" + BUSY.format(40), author="bob", comment="no-op")
    assert again == first
    assert len(rows(db_engine)) == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[[plans]\n", id="not-toml"),
        pytest.param('[[plans]]\nid = "x"\ntimezone = "Mars/Olympus"\n', id="time-zone"),
        pytest.param("[[sip_codes]]\ncode = 486\nactive = false\n", id="built-in-active"),
        pytest.param("[[outcomes]]\ncode = 'NEW'\nkind = 'user'\n", id="missing-field"),
        pytest.param("[oops]\n", id="unknown-section"),
    ],
)
def test_a_broken_edit_is_refused_with_the_line_rules_check_prints(
    db_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    with pytest.raises(RulesError) as raised:
        edit(db_engine, text)
    assert rows(db_engine) == []

    (tmp_path / "rules.toml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    checked = CliRunner().invoke(main, ["rules", "check", "--rules", "rules.toml"])
    line = one_line_error(checked)
    assert line == f"error: {raised.value}"


def test_a_replays_rules_are_never_in_force(
    db_engine: Engine, write_rules: Callable[..., Path]
) -> None:
    mine = load_rules(write_rules(BUSY.format(20)))
    replayed = load_rules(write_rules(BUSY.format(90), "other.toml"))
    with session_scope(db_engine) as session:
        record_rules_version(session, mine, source_of(mine), NOW)
        record_rules_version(session, replayed, source_of(replayed, "replay"), NOW)
        row = in_force(session)
        assert row is not None
        assert (row.version, row.source) == (mine.version, source_of(mine))
    # An edit to the version a replay recorded last is a new version in force.
    edited = edit(db_engine, BUSY.format(90))
    assert edited.version == replayed.version
    assert [r.source for r in rows(db_engine)] == [
        source_of(mine), source_of(replayed, "replay"), "api",
    ]  # fmt: skip


# --- the worker's tasks take the version in force -----------------------------------------------


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[str]:
    monkeypatch.setenv("RECALL_DATABASE_URL", database_url)
    monkeypatch.setenv("RECALL_BROKER_URL", BROKER)
    reset_process_state()
    yield database_url
    reset_process_state()


def start_process(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """As a worker process starting with ``path`` as RECALL_RULES: nothing known yet."""
    monkeypatch.setenv("RECALL_RULES", str(path))
    get_settings.cache_clear()
    monkeypatch.setattr(rules_cache, "_cache", rules_cache._RulesCache())
    monkeypatch.setattr(rules_cache, "_seen", weakref.WeakKeyDictionary())


def call(event_id: str) -> dict[str, Any]:
    occurred = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    return {
        "event_id": event_id, "plan_id": "default", "lead_id": f"L-{event_id}",
        "phone_id": f"P-{event_id}", "sip_code": 486, "occurred_at": occurred.isoformat(),
    }  # fmt: skip


def decided_by(event_id: str) -> str:
    with Session(get_engine()) as session:
        decision = session.scalar(
            select(ProcessedEvent.decision).where(ProcessedEvent.event_id == event_id)
        )
    assert decision is not None
    return str(decision["rules_version"])


def rewrite(path: Path, text: str) -> None:
    """A changed rules file, with an mtime of its own, seen at the worker's next check."""
    path.write_text(text, encoding="utf-8")
    stamp = path.stat().st_mtime + 10
    os.utime(path, (stamp, stamp))
    rules_cache._cache._checked = 0.0


def test_the_tasks_take_an_edit_at_their_next_poll(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    path = write_rules(BUSY.format(20))
    start_process(monkeypatch, path)
    assert process_call_results([call("a1")]) == {"recall": 1}
    file_version = load_rules(path).version
    assert decided_by("a1") == file_version

    edited = edit(get_engine(), BUSY.format(40), author="alice")
    # Between polls the process decides with what it knows: no query at all.
    monkeypatch.setattr(rules_cache, "POLL_S", 3600.0)
    process_call_result(call("a2"))
    assert decided_by("a2") == file_version
    # At its next poll it takes the edit, and stamps it on its decisions.
    monkeypatch.setattr(rules_cache, "POLL_S", 0.0)
    process_call_results([call("a3"), call("a4")])
    process_call_result(call("a5"))
    assert {decided_by(e) for e in ("a3", "a4", "a5")} == {edited.version}
    with Session(get_engine()) as session:
        due = session.scalar(select(ProcessedEvent.decision).where(ProcessedEvent.event_id == "a5"))
    assert due is not None
    assert "40m" in due["explanation"]
    assert [(r.version, r.source) for r in rows(get_engine())] == [
        (file_version, f"file {path}"), (edited.version, "api"),
    ]  # fmt: skip


def test_a_file_changed_after_an_edit_comes_into_force(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    path = write_rules(BUSY.format(20))
    start_process(monkeypatch, path)
    monkeypatch.setattr(rules_cache, "POLL_S", 0.0)
    process_call_results([call("b1")])
    edited = edit(get_engine(), BUSY.format(40))
    process_call_results([call("b2")])
    assert decided_by("b2") == edited.version

    rewrite(path, BUSY.format(30))
    process_call_results([call("b3")])
    changed = load_rules(path).version
    assert decided_by("b3") == changed
    assert [(r.version, r.source) for r in rows(get_engine())][1:] == [
        (edited.version, "api"), (changed, f"file {path}"),
    ]  # fmt: skip

    # Back to what was first recorded from the file: a change too, recorded again.
    rewrite(path, BUSY.format(20))
    process_call_results([call("b4")])
    assert decided_by("b4") == decided_by("b1")
    assert len(rows(get_engine())) == 4


def test_a_restart_with_an_unchanged_file_keeps_the_edit(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    path = write_rules(BUSY.format(20))
    start_process(monkeypatch, path)
    process_call_results([call("c1")])
    edited = edit(get_engine(), BUSY.format(40))

    start_process(monkeypatch, path)  # a restart is not a file change
    process_call_results([call("c2")])
    assert decided_by("c2") == edited.version
    assert len(rows(get_engine())) == 2

    # The file changed while the worker was down: at start it is a change, recorded.
    path.write_text(BUSY.format(35), encoding="utf-8")
    start_process(monkeypatch, path)
    process_call_results([call("c3")])
    assert decided_by("c3") == load_rules(path).version
    assert rows(get_engine())[-1].source == f"file {path}"


def test_an_edit_before_any_worker_stays_in_force_when_workers_start(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    """A file never recorded is no change: the first workers do not undo an earlier edit."""
    path = write_rules(BUSY.format(20))
    edited = edit(get_engine(), BUSY.format(40), author="alice")

    start_process(monkeypatch, path)
    monkeypatch.setattr(rules_cache, "POLL_S", 0.0)
    process_call_results([call("f1")])

    assert decided_by("f1") == edited.version
    assert [r.source for r in rows(get_engine())] == ["api"]
    # The file changing afterwards is a change, and comes into force.
    rewrite(path, BUSY.format(30))
    process_call_results([call("f2")])
    assert decided_by("f2") == load_rules(path).version


def test_a_broken_file_is_refused_and_the_version_in_force_stays(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    write_rules: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_rules(BUSY.format(20))
    start_process(monkeypatch, path)
    monkeypatch.setattr(rules_cache, "POLL_S", 0.0)
    process_call_results([call("d1")])
    edited = edit(get_engine(), BUSY.format(40))

    rewrite(path, '[[plans]]\nid = "x"\ntimezone = "Mars/Olympus"\n')
    with caplog.at_level(logging.ERROR, logger="worker.runtime.rules_cache"):
        process_call_results([call("d2")])
    assert decided_by("d2") == edited.version
    assert "rules not reloaded, keeping the last good rules:" in caplog.text
    assert "unknown time zone 'Mars/Olympus'" in caplog.text
    assert len(rows(get_engine())) == 2


def test_a_process_started_with_a_broken_file_decides_with_the_version_in_force(
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    write_rules: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pool process replaced while the file is broken: it has no good file, the history has."""
    path = write_rules(BUSY.format(20))
    start_process(monkeypatch, path)
    process_call_results([call("f1")])
    edited = edit(get_engine(), BUSY.format(40))

    path.write_text("[[plans]\n", encoding="utf-8")
    start_process(monkeypatch, path)
    with caplog.at_level(logging.ERROR, logger="worker.runtime.rules_cache"):
        process_call_results([call("f2")])
        process_call_result(call("f3"))
    assert decided_by("f2") == decided_by("f3") == edited.version
    assert caplog.text.count("rules file refused: ") == 1  # read again only when it changes
    assert f"{path}: not valid TOML" in caplog.text
    assert len(rows(get_engine())) == 2

    # Fixed: a change of the file, recorded and in force.
    rewrite(path, BUSY.format(30))
    monkeypatch.setattr(rules_cache, "POLL_S", 0.0)
    process_call_results([call("f4")])
    assert decided_by("f4") == load_rules(path).version


# --- a running worker ---------------------------------------------------------------------------


def test_a_running_worker_takes_an_edit_within_seconds(
    database_url: str,
    broker_url: str,
    tmp_path: Path,
    write_rules: Callable[..., Path],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    path = write_rules(BUSY.format(20))
    env = {
        "RECALL_BROKER_URL": broker_url, "RECALL_DATABASE_URL": database_url,
        "RECALL_RULES": str(path), "RECALL_HOME": str(tmp_path / "home"),
        "RECALL_METRICS_PORT": "0",
    }  # fmt: skip
    worker = worker_process(env, "--concurrency", "1", name="live")
    client = RecallClient(broker_url)
    engine = make_engine(database_url)

    def decided(event_id: str) -> dict[str, Any]:
        return decision_of(client, engine, call(event_id), worker)

    try:
        assert decided("w1")["rules_version"] == load_rules(path).version
        edited = edit(engine, BUSY.format(40), author="alice", comment="later")
        edited_at = time.monotonic()
        number = 2
        while (decision := decided(f"w{number}"))["rules_version"] != edited.version:
            assert time.monotonic() - edited_at < 10, worker.text()[-3000:]
            number += 1
            time.sleep(0.2)
        taken_s = time.monotonic() - edited_at
        assert "40m" in decision["explanation"]
        assert taken_s < rules_cache.POLL_S + 3
        history = rows(engine)
        assert [(r.source, r.author, r.comment) for r in history][-1] == ("api", "alice", "later")
        assert "rules in force: version " + edited.version in worker.text()
    finally:
        client.app.close()
        engine.dispose()
    print(f"\nan edit reached a running worker's decisions {taken_s:.1f}s after its commit")


# --- recall status: which rules decide ----------------------------------------------------------


def test_status_says_which_rules_decide_and_when_the_file_differs(
    database: str, monkeypatch: pytest.MonkeyPatch, write_rules: Callable[..., Path]
) -> None:
    path = write_rules(BUSY.format(20))
    env = {"RECALL_DATABASE_URL": database, "RECALL_BROKER_URL": BROKER, "RECALL_RULES": str(path)}

    def status(*args: str) -> Result:
        return CliRunner().invoke(main, ["status", "--timeout", "0.2", *args], env=env)

    empty = orjson.loads(status("--json").stdout)["rules_in_force"]
    assert (empty["version"], empty["file"], empty["file_differs"]) == (None, str(path), False)
    assert "rules in force  none recorded yet" in status().stdout

    start_process(monkeypatch, path)
    process_call_results([call("s1")])
    same = orjson.loads(status("--json").stdout)["rules_in_force"]
    file_version = load_rules(path).version
    assert (same["version"], same["source"], same["file_version"], same["file_differs"]) == (
        file_version, f"file {path}", file_version, False,
    )  # fmt: skip
    assert "RECALL_RULES file" not in status().stdout

    when = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    edited = edit(get_engine(), BUSY.format(40), author="alice", comment="later", now=when)
    state = orjson.loads(status("--json").stdout)["rules_in_force"]
    assert state == {
        "version": edited.version, "source": "api", "author": "alice", "comment": "later",
        "in_force_since": when.isoformat(), "file": str(path), "file_version": file_version,
        "file_differs": True, "file_error": None,
    }  # fmt: skip
    lines = status().stdout.splitlines()
    at = lines.index(
        f"rules in force  {edited.version} since {when.isoformat()}, from api by alice (later)"
    )
    assert lines[at + 1] == (
        f"                RECALL_RULES file {path} is version {file_version}, not the version in"
        f" force {edited.version} (an edit through the API or the console is newer; the version"
        " in force decides)"
    )
    # Without RECALL_RULES: the shipped defaults are what differs.
    del env["RECALL_RULES"]
    monkeypatch.delenv("RECALL_RULES")
    get_settings.cache_clear()
    state = orjson.loads(status("--json").stdout)["rules_in_force"]
    assert (state["file"], state["file_version"]) == (None, load_rules().version)
    assert "the shipped defaults are version " in status().stdout
    assert str(DEFAULT_RULES_PATH) in status().stdout  # the existing "rules" line


# --- the preview ----------------------------------------------------------------------------------


@pytest.fixture
def stored(db_engine: Engine, tmp_path: Path) -> dict[str, Any]:
    """Ten days of generated calls taken by the store under the replay tests' rules, in force."""
    base = tmp_path / "base.toml"
    base.write_text(REPLAY_RULES, encoding="utf-8")
    rules = load_rules(base)
    events = generate(seed=7, leads=150, start=NOW - timedelta(days=10), days=10)
    with session_scope(db_engine) as session:
        record_rules_version(session, rules, source_of(rules), NOW)
        for start in range(0, len(events), 500):
            ingest(session, events[start : start + 500], rules, NOW, task="test", skew_s=SKEW_S)
    proposed = tmp_path / "slower.toml"
    proposed.write_text(REPLAY_RULES + SLOWER_BUSY, encoding="utf-8")
    return {"base": base, "proposed": proposed, "rules": rules, "events": events}


def replay_of(
    stored: dict[str, Any], tmp_path: Path, days: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """``recall replay --compare --json`` of the stored events of the window, in a file."""
    since = NOW - timedelta(days=days)
    window = [e for e in stored["events"] if since <= datetime.fromisoformat(e["occurred_at"])]
    history = tmp_path / f"window-{days}.jsonl"
    write_jsonl(window, history)
    monkeypatch.delenv("RECALL_DATABASE_URL", raising=False)
    result = CliRunner().invoke(
        main,
        ["replay", str(history), "--rules", str(stored["base"]), "--compare",
         str(stored["proposed"]), "--now", NOW.isoformat(), "--jobs", "1", "--json"],
        env={"RECALL_BROKER_URL": BROKER},
    )  # fmt: skip
    data = json_of(result)
    assert data["summary"]["events"] == len(window)
    return dict(data)


def without_sources(result: dict[str, Any]) -> dict[str, Any]:
    compare = {k: v for k, v in result["compare"].items() if k != "rules"}
    return {"rules_version": result["rules_version"], "summary": result["summary"],
            "compare": compare}  # fmt: skip


@pytest.mark.parametrize("days", [10, 3])
def test_the_preview_is_the_replays_what_if_over_the_stored_events(
    db_engine: Engine,
    stored: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    days: int,
) -> None:
    proposed = load_rules(stored["proposed"])
    with session_scope(db_engine) as session:
        row = in_force(session)
        assert row is not None
        preview = preview_rules(session, proposed, rules_of(row), days=days, now=NOW)
    replayed = replay_of(stored, tmp_path, days, monkeypatch)

    assert without_sources(preview) == without_sources(replayed)
    assert preview["compare"]["differing_decisions"] > 0
    assert (preview["mode"], preview["days"], preview["until"]) == (
        "preview",
        days,
        NOW.isoformat(),
    )
    assert preview["since"] == (NOW - timedelta(days=days)).isoformat()
    if days == 3:  # the window: older events are left out
        assert 0 < preview["summary"]["events"] < len(stored["events"])


def test_rules_preview_on_the_command_line(
    database_url: str,
    stored: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"RECALL_DATABASE_URL": database_url, "RECALL_BROKER_URL": BROKER}

    def recall(*args: str) -> Result:
        monkeypatch.setenv("RECALL_DATABASE_URL", database_url)
        return CliRunner().invoke(main, ["rules", "preview", *args], env=env)

    at_now = ("--now", NOW.isoformat())
    data = json_of(recall(str(stored["proposed"]), "--days", "3", *at_now, "--json"))
    assert without_sources(data) == without_sources(replay_of(stored, tmp_path, 3, monkeypatch))
    text = recall(str(stored["proposed"]), "--days", "3", *at_now)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"preview of {stored['proposed']} against the version in force ")
    assert f"decisions that differ: {data['compare']['differing_decisions']}" in lines
    assert json_of(recall(str(stored["proposed"]), *at_now, "--json"))["days"] == 7

    for days in ("0", "367"):
        usage = recall(str(stored["proposed"]), "--days", days)
        assert usage.exit_code == 2  # a usage error, as click's everywhere
        assert usage.stderr.startswith(f"error: Invalid value for '--days': {days} is not in")
        assert usage.stderr.count("\n") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[[plans]\n", encoding="utf-8")
    one_line_error(recall(str(broken)), f"{broken}: not valid TOML")
    one_line_error(recall(str(tmp_path / "missing.toml")), "no such rules file")


def test_rules_preview_before_any_version_compares_with_the_rules_file(
    database_url: str, tmp_path: Path, write_rules: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the API's preview: the rules the workers will put in force when they start."""
    proposed = tmp_path / "p.toml"
    proposed.write_text(BUSY.format(40), encoding="utf-8")
    env = {"RECALL_DATABASE_URL": database_url, "RECALL_BROKER_URL": BROKER}
    at_now = ["--now", NOW.isoformat()]

    def recall(*args: str, rules: Path | None = None) -> Result:
        if rules is not None:
            monkeypatch.setenv("RECALL_RULES", str(rules))
        reset_process_state()  # the settings are read once per process
        return CliRunner().invoke(main, ["rules", "preview", *args], env=env)

    shipped = recall(str(proposed), *at_now)
    assert shipped.exit_code == 0, shipped.output
    assert shipped.stdout.splitlines()[0] == (
        f"preview of {proposed} against the shipped default rules (no version in force yet),"
        f" over the call results of {(NOW - timedelta(days=7)).isoformat()} to"
        f" {NOW.isoformat()}"
    )
    mine = write_rules(BUSY.format(20), "mine.toml")
    data = json_of(recall(str(proposed), *at_now, "--json", rules=mine))
    assert (data["summary"]["events"], data["compare"]["differing_decisions"]) == (0, 0)
    assert data["rules_version"] == load_rules(mine).version
    assert data["compare"]["rules_version"] == load_rules(proposed).version
    broken = write_rules("[[plans]\n", "broken.toml")
    one_line_error(recall(str(proposed), rules=broken), f"{broken}: not valid TOML")
