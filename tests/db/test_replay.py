"""``recall replay`` (DESIGN.md sections 2, 4 and 7): history through the rules, simulated clock.

Most tests run the command in-process through click's ``CliRunner`` on small generated histories
(``worker.sample``) and hand-written events with exact expectations; the sort and the simulation
are also driven directly through ``worker.replay``. Every run passes ``--now`` so that nothing
depends on the clock. Applied replays run against fresh SQLite and PostgreSQL databases.
"""

from __future__ import annotations

import contextlib
import csv
import html
import itertools
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from tests.helpers import SKEW_S, corrupt_gzip, json_of, one_line_error, reset_process_state
from worker.cli import main
from worker.cli.outputs import Outputs
from worker.cli.replay import reading_line, replay_line
from worker.domain import events as event_module
from worker.domain.engine import Decision
from worker.domain.events import parse_event
from worker.domain.rules import Rules, load_rules
from worker.replay import parallel as shares
from worker.replay.report import bar_chart, nice_ticks
from worker.replay.sample import generate, iter_generate, write_csv, write_jsonl
from worker.replay.simulation import Simulation, finish
from worker.replay.sorting import share_of, sorted_events
from worker.store.database import make_engine, upgrade
from worker.store.ingest import ingest
from worker.store.models import Base, Recall, ReplayRun
from worker.store.recalls import fire_recalls

REPO = Path(__file__).resolve().parents[2]
# Nothing listens there: replay must never need the broker.
BROKER = "redis://127.0.0.1:1/0"
# Plans whose due times are plain arithmetic: UTC, no calling hours; one with caps.
RULES = """
[[plans]]
id = "flat"
timezone = "UTC"

[[plans]]
id = "capped"
timezone = "UTC"
max_attempts = [ { count = 2, within = { hours = 24 } } ]
max_recalls = 2
"""
# What-if: busy lines recalled after 30 minutes instead of 15.
SLOWER_BUSY = "[[sip_codes]]\ncode = 486\nrecall_after = { minutes = 30 }\n"
# Generated histories start on a Monday and run for three days.
START = datetime(2026, 1, 12, tzinfo=UTC)
NOW = "2026-01-20T00:00:00+00:00"
SUMMARY_KEYS = {
    "events",
    "actions",
    "reasons",
    "sources",
    "recalls_by_sip_class",
    "recall_delay_s",
    "recalls_fired",
    "recalls_pending",
    "dead_letters",
    "events_after_now",
}

#: The end of the histories read directly (as a replay without --now): the wall clock.
WALL = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No database, broker or rules from the environment; temporary files under ``tmp_path``."""
    for name in ("RECALL_RULES", "RECALL_DATABASE_URL", "RECALL_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECALL_HOME", str(tmp_path / "home"))
    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Replay's on-disk sort goes to tempfile.gettempdir(): a private one for this test, so that
    the checks for left-over files see only its own (other processes may replay beside us)."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.toml"
    path.write_text(RULES, encoding="utf-8")
    return path


@pytest.fixture
def rules(rules_file: Path) -> Rules:
    return load_rules(rules_file)


def recall(*args: str | Path) -> Result:
    """``recall ARGS`` in-process, with settings read afresh from the environment."""
    reset_process_state()
    return CliRunner().invoke(main, [str(arg) for arg in args], prog_name="recall")


def replay_json(*args: str | Path) -> dict[str, Any]:
    return json_of(recall("replay", *args, "--json"))  # type: ignore[no-any-return]


def ev(event_id: str, phone_id: str, occurred_at: str, **fields: Any) -> dict[str, Any]:
    """A hand-written event on the ``flat`` plan: a busy line (486) unless told otherwise."""
    return {
        "event_id": event_id,
        "plan_id": "flat",
        "lead_id": f"L-{phone_id}",
        "phone_id": phone_id,
        "sip_code": 486,
        "occurred_at": occurred_at,
        **fields,
    }


def t(clock: str, day: int = 14) -> str:
    """``HH:MM`` on 2026-01-``day`` (a Wednesday by default), UTC, as the events carry it."""
    return f"2026-01-{day:02d}T{clock}:00+00:00"


def write_lines(path: Path, lines: Iterable[object]) -> Path:
    """JSON Lines; a ``str`` item is written as it is (for broken lines)."""
    with path.open("wb") as out:
        for line in lines:
            out.write((line if isinstance(line, str) else orjson.dumps(line).decode()).encode())
            out.write(b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def history(seed: int, leads: int, days: int = 3) -> list[dict[str, object]]:
    return generate(seed=seed, leads=leads, start=START, days=days)


def unique_times(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """Drop every event whose ``occurred_at`` an earlier one already has (no ties to break)."""
    seen: set[object] = set()
    kept = []
    for event in events:
        if event["occurred_at"] not in seen:
            seen.add(event["occurred_at"])
            kept.append(event)
    return kept


def leftovers() -> list[str]:
    return sorted(path.name for path in Path(tempfile.gettempdir()).glob("recall-replay-*"))


def table_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for before/after comparisons."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted(
                    (tuple(row) for row in connection.execute(select(table))), key=repr
                )
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def rows_without_batch_clock(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """``table_rows`` less the columns written by the clock of the batch (its last event): not
    the same when the batches are cut elsewhere (processes, an interrupted run); nor the wall
    clock's time the replay's rules came into force."""
    batch_clock = {"processed_at", "created_at", "updated_at", "in_force_since"}
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted(
                    (
                        tuple(v for k, v in row._mapping.items() if k not in batch_clock)
                        for row in connection.execute(select(table))
                    ),
                    key=repr,
                )
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def recall_rows(url: str) -> dict[str, tuple[str, datetime, datetime | None]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(Recall.recall_id, Recall.state, Recall.due_at, Recall.fired_at)
            return {
                rid: (state, due, fired) for rid, state, due, fired in connection.execute(query)
            }
    finally:
        engine.dispose()


def use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RECALL_DATABASE_URL", url)
    monkeypatch.setenv("RECALL_BROKER_URL", BROKER)


# --- 1. event-time order, whatever the files -----------------------------------------------------


def test_file_order_and_line_order_do_not_change_the_decisions(
    tmp_path: Path, rules_file: Path
) -> None:
    events = unique_times(history(seed=11, leads=150))
    assert len(events) > 300
    leads = sorted({str(e["lead_id"]) for e in events})
    odd = {lead for index, lead in enumerate(leads) if index % 2}
    first = write_lines(tmp_path / "first.jsonl", [e for e in events if e["lead_id"] in odd])
    second = write_lines(tmp_path / "second.jsonl", [e for e in events if e["lead_id"] not in odd])
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    one = write_lines(tmp_path / "shuffled.jsonl", shuffled)

    outputs = []
    for name, files in [("ab", [first, second]), ("ba", [second, first]), ("one", [one])]:
        out = tmp_path / f"out-{name}.jsonl"
        replay_json(*files, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out)
        outputs.append(out.read_bytes())

    assert outputs[0] == outputs[1] == outputs[2]
    decided = read_jsonl(tmp_path / "out-one.jsonl")
    # In event-time order, each event once.
    by_id = {str(e["event_id"]): e for e in events}
    assert [d["event_id"] for d in decided] == [e["event_id"] for e in events]
    times = [str(by_id[d["event_id"]]["occurred_at"]) for d in decided]
    assert times == sorted(times)


def test_event_time_is_the_instant_not_the_text(tmp_path: Path, rules_file: Path) -> None:
    # 10:30 at +01:00 is 09:30 UTC: before 09:40 UTC, though it sorts after it as text.
    path = write_lines(
        tmp_path / "x.jsonl",
        [ev("late", "P", t("09:40")), ev("early", "P", "2026-01-14T10:30:00+01:00")],
    )
    out = tmp_path / "out.jsonl"

    replay_json(path, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out)

    early, late = read_jsonl(out)
    assert (early["event_id"], early["due_at"]) == ("early", t("09:45"))
    assert (late["event_id"], late["due_at"]) == ("late", t("09:55"))
    assert f"replaces the pending recall due {t('09:45')}" in late["explanation"]


def test_results_at_the_same_instant_are_taken_in_file_then_line_order(
    tmp_path: Path, rules_file: Path
) -> None:
    busy = write_lines(tmp_path / "busy.jsonl", [ev("busy", "P", t("10:00"))])
    gone = write_lines(tmp_path / "gone.jsonl", [ev("gone", "P", t("10:00"), sip_code=404)])

    def decided(*files: Path) -> list[tuple[str, str]]:
        out = tmp_path / "out.jsonl"
        replay_json(*files, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out)
        return [(d["event_id"], d["action"]) for d in read_jsonl(out)]

    assert decided(busy, gone) == [("busy", "recall"), ("gone", "suppress")]
    assert decided(gone, busy) == [("gone", "suppress"), ("busy", "recall")]
    both = tmp_path / "both.jsonl"
    both.write_bytes(gone.read_bytes() + busy.read_bytes())
    assert decided(both) == [("gone", "suppress"), ("busy", "recall")]


# --- 2. formats ----------------------------------------------------------------------------------


def test_csv_and_json_lines_plain_or_gzip_give_the_same_decisions(
    tmp_path: Path, rules_file: Path
) -> None:
    events = history(seed=12, leads=120)
    # Absent optional fields are empty CSV cells; present ones must come back as they were.
    assert {"timezone", "outcome_code", "retry_after_s"} <= set().union(*events)
    assert any("timezone" not in e for e in events)
    files = [tmp_path / name for name in ("h.jsonl", "h.jsonl.gz", "h.csv", "h.csv.gz")]
    for path in files:
        (write_csv if ".csv" in path.suffixes else write_jsonl)(events, path)

    outputs = {}
    summaries = {}
    for path in files:
        out = tmp_path / f"{path.name}.out"
        result = replay_json(path, "--dry-run", "--now", NOW, "--output", out)
        summaries[path.name] = result["summary"]
        outputs[path.name] = out.read_bytes()

    assert len(set(outputs.values())) == 1
    assert len(read_jsonl(tmp_path / "h.csv.gz.out")) == len(events)
    assert all(summary == summaries["h.jsonl"] for summary in summaries.values())
    assert summaries["h.csv"]["dead_letters"] == 0


@pytest.mark.parametrize("name", ["bom.csv", "bom.jsonl"])
def test_a_file_with_a_utf8_byte_order_mark_is_read(
    tmp_path: Path, rules_file: Path, name: str
) -> None:
    """Spreadsheet exports ("CSV UTF-8") start with a byte order mark; it is not data."""
    events = [ev("a", "X", t("10:00")), ev("b", "Y", t("10:01"))]
    plain = tmp_path / f"plain{Path(name).suffix}"
    (write_csv if name.endswith(".csv") else write_jsonl)(events, plain)
    marked = tmp_path / name
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    outputs = []
    for path in (plain, marked):
        out = tmp_path / f"{path.name}.out"
        result = replay_json(
            path, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out
        )
        assert result["rejections_sample"] == []
        outputs.append(out.read_bytes())

    assert outputs[0] == outputs[1]


# --- 3. duplicates -------------------------------------------------------------------------------


def test_repeated_events_are_duplicates_and_change_nothing(tmp_path: Path) -> None:
    events = history(seed=13, leads=100)
    repeated = events[::7]
    plain = write_jsonl(events, tmp_path / "plain.jsonl")
    assert plain == len(events)
    # The copies later in the same file, and again in a second file.
    write_jsonl([*events, *repeated], tmp_path / "with-copies.jsonl")
    write_jsonl(repeated, tmp_path / "again.jsonl")

    replay_json(tmp_path / "plain.jsonl", "--dry-run", "--now", NOW, "--output", tmp_path / "a")
    result = replay_json(
        tmp_path / "with-copies.jsonl",
        tmp_path / "again.jsonl",
        "--dry-run",
        "--now",
        NOW,
        "--output",
        tmp_path / "b",
    )

    decided = read_jsonl(tmp_path / "b")
    duplicates = [d for d in decided if d["action"] == "duplicate"]
    assert Counter(d["event_id"] for d in duplicates) == Counter(
        {str(e["event_id"]): 2 for e in repeated}
    )
    assert all(
        (d["reason"], d["due_at"], d["source"], d["rule"]) == ("duplicate", None, None, None)
        for d in duplicates
    )
    # The first copy of each event is decided exactly as without the copies.
    assert [d for d in decided if d["action"] != "duplicate"] == read_jsonl(tmp_path / "a")
    assert result["summary"]["actions"]["duplicate"] == 2 * len(repeated)
    assert result["summary"]["events"] == len(events) + 2 * len(repeated)


def test_an_event_id_sent_again_for_another_phone_is_a_duplicate(
    tmp_path: Path, rules_file: Path
) -> None:
    """The event_id is the idempotency key (DESIGN.md sections 2 and 5), whatever the phone.

    The copy for phone A comes later in event time than the first one (for phone B), but A sorts
    first by phone id: the first in event time must be the one taken.
    """
    first = ev("x1", "B", t("10:00"))
    again = ev("x1", "A", t("10:01"), sip_code=480)
    path = write_lines(tmp_path / "x.jsonl", [first, again])
    out = tmp_path / "out.jsonl"

    replay_json(path, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out)

    assert [(d["phone_id"], d["action"]) for d in read_jsonl(out)] == [
        ("B", "recall"),
        ("A", "duplicate"),
    ]


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_an_event_id_sent_again_for_a_phone_of_another_share_is_a_duplicate(
    tmp_path: Path, rules_file: Path, jobs: str
) -> None:
    # D and A (leads L-D and L-A) are replayed by different processes (share_of): the split
    # cannot see the copy, so the replay notices that an id crossed processes and runs again in one.
    assert share_of({"lead_id": "L-D"}, 2) != share_of({"lead_id": "L-A"}, 2)
    assert share_of({"lead_id": "L-D"}, 3) == share_of({"lead_id": "L-A"}, 3)
    events = [ev("x1", "D", t("10:00")), ev("x1", "A", t("10:01")), ev("y", "B", t("10:02"))]
    out = tmp_path / "out.jsonl"

    result = replay_json(
        write_lines(tmp_path / "x.jsonl", events), "--dry-run", "--now", NOW,
        "--rules", rules_file, "--output", out, "--jobs", jobs,
    )  # fmt: skip

    assert [(d["phone_id"], d["action"]) for d in read_jsonl(out)] == [
        ("D", "recall"),
        ("A", "duplicate"),
        ("B", "recall"),
    ]
    assert result["summary"]["actions"] == {"recall": 2, "duplicate": 1}


def test_a_replay_process_that_dies_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(*_: object) -> None:
        os._exit(3)  # as the kernel's out-of-memory killer would leave it: no word sent back

    monkeypatch.setattr(shares, "_run_share", die)
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "A", t("10:00"))])

    line = one_line_error(recall("replay", str(path), "--dry-run", "--now", NOW, "--jobs", "2"))

    assert line == "error: replay process died (exit code 3)"
    assert list(tmp_path.glob("recall-replay-*")) == []


def test_shares_give_exactly_the_single_process_replay(tmp_path: Path, rules_file: Path) -> None:
    """Decisions, rejections, summaries and the what-if sample, in the same order and values."""
    slower = tmp_path / "slower.toml"
    slower.write_text(SLOWER_BUSY, encoding="utf-8")
    events: list[object] = [*history(seed=31, leads=300)]
    bad = ["not json", {"event_id": "b1"}, {**ev("b2", "N", t("10:00")), "sip_code": "486"}]
    for offset, line in enumerate(bad):
        events.insert(100 * (offset + 1), line)
    path = write_lines(tmp_path / "h.jsonl", events)
    runs = {}
    for jobs in ("1", "3"):
        out, rejects = tmp_path / f"out-{jobs}.jsonl", tmp_path / f"rejects-{jobs}.jsonl"
        result = replay_json(
            path, "--now", NOW, "--compare", slower, "--output", out, "--dead-letters", rejects,
            "--jobs", jobs, "--report", tmp_path / f"report-{jobs}.html",
        )  # fmt: skip
        del result["elapsed_s"], result["events_per_s"]
        runs[jobs] = (result, out.read_bytes(), rejects.read_bytes())

    assert runs["1"] == runs["3"]
    result, decisions, rejected = runs["3"]
    assert len(decisions.splitlines()) == result["summary"]["events"] > 1000
    assert [row["line"] for row in map(orjson.loads, rejected.splitlines())] == [101, 201, 301]
    assert result["compare"]["differing_decisions"] > 0
    assert len(result["compare"]["sample"]) == 20


@pytest.fixture
def decodes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[], Counter[str]]]:
    """Every decoding of JSON text from now on (``orjson.loads``, and the event schema's decoder
    that takes a replay's plain lines straight into the schema), here and in the replay processes
    forked from here: the fixture gives a function returning the texts decoded since it was last
    called, counted."""
    log = tmp_path / "decoded.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def logging(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def logged(data: Any) -> Any:
            text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
            # One write with O_APPEND: lines from several processes never interleave.
            line = text.strip().replace("\n", " ").encode("utf-8", "surrogatepass")
            os.write(fd, line + b"\n")
            return decode(data)

        return logged

    def taken() -> Counter[str]:
        counted = Counter(log.read_bytes().decode("utf-8", "surrogatepass").splitlines())
        os.truncate(log, 0)
        return counted

    monkeypatch.setattr(orjson, "loads", logging(orjson.loads))
    monkeypatch.setattr(event_module, "_decode_closed", logging(event_module._decode_closed))
    yield taken
    os.close(fd)


def lead_of_share(share: int, shares: int) -> str:
    """A phone id whose lead (``ev``: L-phone) is replayed by process ``share`` of ``shares``."""
    return next(
        f"S{share}x{n}"
        for n in itertools.count()
        if share_of({"lead_id": f"L-S{share}x{n}"}, shares) == share
    )


@pytest.mark.parametrize("jobs", [2, 3])
def test_shares_decode_each_line_once_and_lose_none(
    tmp_path: Path, rules_file: Path, decodes: Callable[[], Counter[str]], jobs: int
) -> None:
    """The input is read once for all the processes: each JSON line is decoded as often as one
    process decodes it, and every line is decided or rejected, at its file and line, as one
    process does, with a bad line in every share, in JSON Lines and in gzipped CSV."""
    phones = [lead_of_share(share, jobs) for share in range(jobs)]
    events: list[object] = [*history(seed=32, leads=150)]
    odd: list[object] = [
        *({**ev(f"bad-{phone}", phone, t("10:00")), "sip_code": "486"} for phone in phones),
        "not json",
        "",  # blank: skipped, but counted in the line numbers
        # Not said plainly in the text: routed by the decoded record (the reader decodes it).
        '{"event_id":"twice","plan_id":"flat","lead_id":"L-T","phone_id":"T","sip_code":486,'
        '"occurred_at":"2026-01-14T10:00:00+00:00","lead_id":"L-T"}',
        '{"event_id":"escaped","plan_id":"flat","lead_id":"L-\\u00c9","phone_id":"E",'
        '"sip_code":486,"occurred_at":"2026-01-14T10:00:00+00:00"}',
        # Spaces around the colon, as Python's json module writes it.
        '{"event_id": "spaced", "plan_id": "flat", "lead_id": "L-W", "phone_id": "W",'
        ' "sip_code": 486, "occurred_at": "2026-01-14T10:00:00+00:00"}',
    ]
    for offset, line in enumerate(odd):
        events.insert(40 * (offset + 1), line)
    jsonl = write_lines(tmp_path / "one.jsonl", events)
    rows = [*history(seed=33, leads=100)]
    for offset, phone in enumerate(phones):
        rows.insert(
            30 * (offset + 1), {**ev(f"csv-bad-{phone}", phone, t("11:00")), "sip_code": "x"}
        )
    table = tmp_path / "two.csv.gz"
    write_csv(rows, table)
    texts = [line for line in jsonl.read_text(encoding="utf-8").splitlines() if line]
    runs = {}
    for run in (1, jobs):
        out, rejects = tmp_path / f"out-{run}.jsonl", tmp_path / f"rejects-{run}.jsonl"
        result = replay_json(
            jsonl, table, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", out,
            "--dead-letters", rejects, "--jobs", str(run),
        )  # fmt: skip
        del result["elapsed_s"], result["events_per_s"]
        decoded = decodes()
        runs[run] = (result, out.read_bytes(), rejects.read_bytes(), [decoded[x] for x in texts])

    assert runs[jobs][:3] == runs[1][:3]
    result, decisions, rejected, times_decoded = runs[jobs]
    # Each valid line once, straight into the schema, as in one process; twice the first line
    # (its file is checked before any work).
    odd_texts = {line if isinstance(line, str) else orjson.dumps(line).decode() for line in odd}
    plain = [text not in odd_texts for text in texts]
    expected = [2 if index == 0 else 1 for index in range(len(texts))]
    assert [n for n, p in zip(times_decoded, plain, strict=True) if p] == [
        n for n, p in zip(expected, plain, strict=True) if p
    ]
    # The others never more often than in one process: what the reader decodes to route it
    # travels decoded. (In one process each is first tried against the schema, then decoded
    # again to be worded; the reader decodes once to route, and the schema is not tried.)
    assert all(1 <= n <= m for n, m in zip(times_decoded, runs[1][3], strict=True))
    found = [(row["file"], row["line"]) for row in map(orjson.loads, rejected.splitlines())]
    assert found == [
        *((str(jsonl), 40 * (offset + 1) + 1) for offset in range(jobs + 1)),
        *((str(table), 30 * (offset + 1) + 2) for offset in range(jobs)),
    ]
    decided = {row["event_id"] for row in map(orjson.loads, decisions.splitlines())}
    assert {"twice", "escaped", "spaced"} <= decided
    assert len(decided) == result["summary"]["events"] == len(events) + len(rows) - 2 * jobs - 2


def test_an_event_the_reader_sends_to_another_share_makes_the_replay_run_in_one_process(
    tmp_path: Path, rules_file: Path
) -> None:
    """A text that misleads the reader (the key written with an escape, a lead id in a nested
    object) costs the split, never a decision: phone A's caps see all its calls."""
    assert share_of({"lead_id": "L-D"}, 2) != share_of({"lead_id": "L-A"}, 2)
    misleading = (
        '{"event_id":"a2","plan_id":"capped","lead\\u005fid":"L-A","phone_id":"A","sip_code":486,'
        '"occurred_at":"2026-01-14T10:30:00+00:00","x":{"lead_id":"L-D"}}'
    )
    first, last = (
        ev("a1", "A", t("10:00"), plan_id="capped"),
        ev("a3", "A", t("11:00"), plan_id="capped"),
    )
    outputs = {}
    for name, lines in (("all", [first, misleading, last]), ("without", [first, last])):
        for jobs in ("1", "2"):
            out = tmp_path / f"{name}-{jobs}.jsonl"
            replay_json(
                write_lines(tmp_path / f"{name}.jsonl", lines), "--dry-run", "--now", NOW,
                "--rules", rules_file, "--output", out, "--jobs", jobs,
            )  # fmt: skip
            outputs[name, jobs] = [
                (d["event_id"], d["action"], d["reason"]) for d in read_jsonl(out)
            ]

    assert outputs["all", "2"] == outputs["all", "1"]
    assert outputs["all", "1"][2] == ("a3", "suppress", "max_recalls")
    assert outputs["without", "1"][1] == ("a3", "recall", "sip_recall")  # a2 counts for a3


@pytest.mark.parametrize(
    ("how", "said"),
    [("dies", "replay process died (exit code 3)"),
     ("fails", "replay process failed: RuntimeError: no room left")],
)  # fmt: skip
def test_a_replay_process_that_stops_while_the_input_is_dealt_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, said: str
) -> None:
    """The reader, waiting for room in the pipe of a process that has gone, says why it went."""

    def stop(fd: int) -> Iterator[Any]:
        if how == "dies":
            os._exit(3)
        raise RuntimeError("no room left")

    monkeypatch.setattr(shares, "received", stop)
    # No frame waits beside a full pipe of one page: the reader finds the pipe broken.
    monkeypatch.setattr("worker.replay.reader._AHEAD_BYTES", 0)
    monkeypatch.setattr("worker.replay.reader._PIPE_BYTES", 4096)
    path = tmp_path / "h.jsonl"
    write_jsonl(history(seed=34, leads=300), path)
    assert path.stat().st_size > 50 * 4096

    line = one_line_error(recall("replay", str(path), "--dry-run", "--now", NOW, "--jobs", "2"))

    assert line == f"error: {said}"
    assert list(tmp_path.glob("recall-replay-*")) == []


def test_an_event_id_sent_again_for_another_phone_is_a_duplicate_when_applied(
    tmp_path: Path, rules_file: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, database_url)
    path = write_lines(
        tmp_path / "x.jsonl",
        [ev("x1", "B", t("10:00")), ev("x1", "A", t("10:01"), sip_code=480)],
    )
    out = tmp_path / "out.jsonl"

    replay_json(path, "--now", NOW, "--rules", rules_file, "--output", out)

    assert [(d["phone_id"], d["action"]) for d in read_jsonl(out)] == [
        ("B", "recall"),
        ("A", "duplicate"),
    ]
    phone = json_of(recall("phones", "show", "B", "--json"))
    assert phone["last_decision"]["event_id"] == "x1"


# --- 4. caps over a history ----------------------------------------------------------------------


def test_attempt_cap_and_recall_limit_over_a_phones_history(
    tmp_path: Path, rules_file: Path
) -> None:
    events = [
        ev("c1", "C", t("10:00"), plan_id="capped"),
        ev("c2", "C", t("10:30"), plan_id="capped"),
        ev("c3", "C", t("11:00", day=15), plan_id="capped"),
    ]
    path = write_lines(tmp_path / "caps.jsonl", events)
    out = tmp_path / "out.jsonl"

    result = replay_json(
        path, "--dry-run", "--rules", rules_file, "--now", t("00:00", day=16), "--output", out
    )

    decided = {d["event_id"]: d for d in read_jsonl(out)}
    first, second, third = decided["c1"], decided["c2"], decided["c3"]
    # One attempt in the window: 15 minutes, untouched.
    assert (first["action"], first["due_at"], first["adjustments"]) == ("recall", t("10:15"), [])
    # Two attempts in 24 hours: the 2-in-24h cap holds the recall until the first one leaves the
    # window, 24 hours after it (10:00 next day), not 10:45.
    assert (second["action"], second["due_at"], second["adjustments"]) == (
        "recall",
        t("10:00", day=15),
        ["max_attempts"],
    )
    assert (second["rule"], second["reason"]) == ("sip:486", "sip_recall")
    # Two system recalls already: the third busy result is suppressed by the plan.
    assert (third["action"], third["due_at"], third["reason"], third["rule"]) == (
        "suppress",
        None,
        "max_recalls",
        "plan:capped",
    )
    assert third["source"] == "sip_code"
    summary = result["summary"]
    assert summary["reasons"] == {"sip_recall": 2, "max_recalls": 1}
    # Both recalls fired (each before the next result), none left.
    assert (summary["recalls_fired"], summary["recalls_pending"]) == (2, 0)


# Every kind of cap at once, on a plan whose due times are plain arithmetic (UTC).
LEAD_RULES = """
[[plans]]
id = "lead"
timezone = "UTC"
max_attempts = [ { count = 2, per = "day" } ]
lead_max_attempts = [ { count = 3, within = { hours = 2 } } ]
closed_dates = ["2026-01-16"]
"""


def lead_ev(event_id: str, phone_id: str, lead: str, clock: str, day: int = 14) -> dict[str, Any]:
    return {**ev(event_id, phone_id, t(clock, day)), "lead_id": lead, "plan_id": "lead"}


# Batches as the worker might take them (each decided as of its latest call).
LEAD_BATCHES = [
    [lead_ev("a1", "A", "L1", "09:00"), lead_ev("d1", "D", "L2", "09:00")],
    [lead_ev("d2", "D", "L2", "09:05")],
    [lead_ev("b1", "B", "L1", "09:10")],
    [lead_ev("c1", "C", "L1", "09:20")],
    [lead_ev("a2", "A", "L1", "11:30")],
    [lead_ev("e1", "E", "L2", "23:50")],
    [lead_ev("b2", "B", "L1", "10:00", day=15), lead_ev("c2", "C", "L1", "10:00", day=15)],
    [lead_ev("a3", "A", "L1", "23:55", day=15)],
]


def test_lead_caps_decide_alike_in_the_worker_and_in_replay(
    tmp_path: Path, database_url: str
) -> None:
    rules_path = tmp_path / "lead.toml"
    rules_path.write_text(LEAD_RULES, encoding="utf-8")
    rules = load_rules(rules_path)
    history = [payload for batch in LEAD_BATCHES for payload in batch]
    path = write_lines(tmp_path / "lead.jsonl", history)
    out = tmp_path / "dry.jsonl"
    replay_json(path, "--dry-run", "--rules", rules_path, "--now", t("00:00", 18), "--output", out)
    replayed = {d["event_id"]: d for d in read_jsonl(out)}

    engine = make_engine(database_url)
    worker = {}
    try:
        for batch in LEAD_BATCHES:
            now = max(parse_event(payload).occurred_at for payload in batch)
            with Session(engine) as session, session.begin():
                # The dispatcher fires what fell due, as replay's simulated clock does.
                due = select(Recall.recall_id).where(
                    Recall.state == "pending", Recall.due_at <= now
                )
                fire_recalls(
                    session,
                    session.scalars(due).all(),
                    now,
                    early_tolerance=timedelta(0),
                    at_due_time=True,
                )
                report = ingest(session, batch, rules, now, task="t", skew_s=SKEW_S)
            worker.update((d.event_id, d.to_json()) for d in report.decisions)
    finally:
        engine.dispose()

    # Hand-worked: the lead L1's cap is 3 calls in 2 hours; A, B, C are its phones.
    due = {key: value["due_at"] for key, value in replayed.items()}
    assert due == {
        "a1": t("09:15"),
        "d1": t("09:15"),
        # D's second call of the day: the next midnight.
        "d2": t("00:00", 15),
        "b1": t("09:25"),
        # 09:00, 09:10, 09:20: the third latest end of a 2-hour window is 11:00.
        "c1": t("11:00"),
        # A's second call of the day: the next midnight.
        "a2": t("00:00", 15),
        "e1": t("00:05", 15),
        "b2": t("10:15", 15),
        "c2": t("10:15", 15),
        # 00:10 on the 16th is a closed date: the 17th.
        "a3": t("00:00", 17),
    }
    assert replayed["c1"]["adjustments"] == ["lead_max_attempts"]
    assert "moved the pending recall of phone B to" in replayed["c1"]["explanation"]
    assert replayed["a2"]["adjustments"] == ["max_attempts"]
    assert replayed["a3"]["adjustments"] == ["calling_hours"]

    assert worker == replayed


# A lead cap in New York, around the end of summer time (2026-11-01, 06:00 UTC: 01:00-02:00 is
# read twice, EDT then EST).
FALL_BACK_RULES = """
[[plans]]
id = "ny"
timezone = "America/New_York"
lead_max_attempts = [ { count = 2, within = { hours = 1, minutes = 15 } } ]
"""


def test_a_recall_moved_an_hour_on_across_the_fall_back_fires_at_its_new_time(
    tmp_path: Path,
) -> None:
    rules_path = tmp_path / "ny.toml"
    rules_path.write_text(FALL_BACK_RULES, encoding="utf-8")
    simulation = Simulation(load_rules(rules_path))

    def call(event_id: str, phone_id: str, clock: str) -> Decision:
        at = f"2026-11-01T{clock}:00+00:00"
        return simulation.take(parse_event(ev(event_id, phone_id, at, plan_id="ny", lead_id="L")))

    # A's recall is due at 05:15 UTC, 01:15 EDT. B's call at 05:10 puts the lead at its cap
    # until A's call's window ends, 06:15 UTC: 01:15 EST, the same wall-clock time an hour on.
    call("a", "A", "05:00")
    b = call("b", "B", "05:10")
    assert "moved the pending recall of phone A to" in b.explanation
    moved = simulation.phones["A"].pending
    assert moved is not None
    assert moved.due_at.astimezone(UTC) == datetime(2026, 11, 1, 6, 15, tzinfo=UTC)

    # At 05:15 UTC nothing fires: A's recall was moved (the queue still holds its old time).
    simulation.advance(datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
    assert simulation.summary.fired == 0
    assert not simulation.phones["A"].eligible

    simulation.advance(datetime(2026, 11, 1, 6, 20, tzinfo=UTC))
    assert simulation.summary.fired == 2
    fired_at = simulation.phones["A"].eligible_at
    assert fired_at is not None
    assert fired_at.astimezone(UTC) == datetime(2026, 11, 1, 6, 15, tzinfo=UTC)


def test_the_summary_and_the_report_count_the_recalls_each_adjustment_moved(
    tmp_path: Path,
) -> None:
    rules_path = tmp_path / "lead.toml"
    rules_path.write_text(LEAD_RULES, encoding="utf-8")
    path = write_lines(tmp_path / "lead.jsonl", [p for batch in LEAD_BATCHES for p in batch])
    report = tmp_path / "report.html"
    common = ("--dry-run", "--rules", rules_path, "--now", t("00:00", 18))

    result = replay_json(path, *common, "--report", report)

    # c1 (lead cap), d2 and a2 (the day cap), a3 (a closed date), as worked out above.
    moved = {"max_attempts": 2, "lead_max_attempts": 1, "calling_hours": 1}
    assert result["summary"]["recalls_by_adjustment"] == moved
    page = report.read_text(encoding="utf-8")
    (chart,) = [c for c in page.split("<svg")[1:] if "Recalls moved, by adjustment" in c]
    # In the order the engine applies them.
    assert svg_texts(chart, "label") == ["max_attempts", "lead_max_attempts", "calling_hours"]
    for name, count in moved.items():
        assert f'<td>recalls by adjustment: {name}</td><td class="n">{count}</td>' in page
    text = recall("replay", path, *common)
    assert text.exit_code == 0, (text.output, text.exception)
    assert "recalls by adjustment: lead_max_attempts" in text.output


def test_the_summary_and_the_report_show_callbacks(tmp_path: Path, rules_file: Path) -> None:
    """Callbacks booked, pending (a system result before the booked time), missing and ignored
    appear in the decisions, the summary's reasons and the report's chart of reasons."""
    callback = {"outcome_code": "CALLBACK"}
    events = [
        # Booked for 15:00; the busy line at 11:00 is suppressed: the callback stays pending.
        ev("k1", "K", t("10:00"), **callback, callback_at=t("15:00")),
        ev("k2", "K", t("11:00")),
        # No booked time: the outcome's recall_after (a day) is the fallback.
        ev("m1", "M", t("10:00"), **callback),
        # A booked time on a result that is not a callback is ignored.
        ev("n1", "N", t("10:00"), callback_at=t("18:00")),
    ]
    path = write_lines(tmp_path / "callbacks.jsonl", events)
    report = tmp_path / "report.html"
    out = tmp_path / "decisions.jsonl"
    common = ("--dry-run", "--rules", rules_file, "--now", t("00:00", 20))

    result = replay_json(path, *common, "--report", report, "--output", out)

    decided = {d["event_id"]: (d["reason"], d["due_at"], d["warnings"]) for d in read_jsonl(out)}
    assert decided == {
        "k1": ("callback", t("15:00"), []),
        "k2": ("callback_pending", None, []),
        "m1": ("user_recall", t("10:00", 15), ["callback_at_missing"]),
        "n1": ("sip_recall", t("10:15"), ["callback_at_ignored"]),
    }
    reasons = result["summary"]["reasons"]
    assert (reasons["callback"], reasons["callback_pending"]) == (1, 1)
    page = report.read_text(encoding="utf-8")
    (chart,) = [c for c in page.split("<svg")[1:] if "Decisions by reason" in c]
    assert {"callback", "callback_pending"} <= set(svg_texts(chart, "label"))


# --- 5. supersede and firing on the simulated clock ----------------------------------------------


def test_a_later_result_supersedes_the_pending_recall(tmp_path: Path, rules_file: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "X", t("10:00")), ev("b", "X", t("10:05"))])
    out = tmp_path / "out.jsonl"

    result = replay_json(
        path, "--dry-run", "--rules", rules_file, "--now", t("10:25"), "--output", out
    )

    a, b = read_jsonl(out)
    assert (a["due_at"], b["due_at"]) == (t("10:15"), t("10:20"))
    assert f"replaces the pending recall due {t('10:15')}" in b["explanation"]
    # Only b's recall fires: a's was superseded before its time.
    assert (result["summary"]["recalls_fired"], result["summary"]["recalls_pending"]) == (1, 0)

    before_b = replay_json(path, "--dry-run", "--rules", rules_file, "--now", t("10:17"))
    assert (before_b["summary"]["recalls_fired"], before_b["summary"]["recalls_pending"]) == (0, 1)


def test_a_recall_fires_at_its_due_time_before_the_next_result(rules: Rules) -> None:
    simulation = Simulation(rules)
    events = [ev("a", "Y", t("10:00")), ev("c", "Y", t("10:30"))]

    first = simulation.take(parse_event(events[0]))
    assert first.due_at == datetime(2026, 1, 14, 10, 15, tzinfo=UTC)
    assert simulation.summary.fired == 0

    second = simulation.take(parse_event(events[1]))

    # a's recall fired at 10:15, before c was decided: c replaces nothing.
    assert simulation.summary.fired == 1
    assert second.supersedes is None
    assert "replaces" not in second.explanation
    assert second.due_at == datetime(2026, 1, 14, 10, 45, tzinfo=UTC)
    assert finish(simulation, datetime(2026, 1, 14, 10, 40, tzinfo=UTC)) == 1


def test_supersede_and_firing_are_written_when_applied(
    tmp_path: Path, rules_file: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, database_url)
    path = write_lines(
        tmp_path / "x.jsonl",
        [
            ev("a", "X", t("10:00")),
            ev("a2", "Y", t("10:00")),
            ev("b", "X", t("10:05")),
            ev("c", "Y", t("10:30")),
        ],
    )
    out = tmp_path / "out.jsonl"

    result = replay_json(path, "--rules", rules_file, "--now", t("10:40"), "--output", out)

    assert result["mode"] == "applied"
    # a2 at 10:15 and b at 10:20; c (10:45) still pending.
    assert (result["summary"]["recalls_fired"], result["summary"]["recalls_pending"]) == (2, 1)
    at = {clock: datetime.fromisoformat(t(clock)) for clock in ("10:15", "10:20", "10:45")}
    assert recall_rows(database_url) == {
        "a": ("superseded", at["10:15"], None),
        "b": ("fired", at["10:20"], at["10:20"]),
        "a2": ("fired", at["10:15"], at["10:15"]),
        "c": ("pending", at["10:45"], None),
    }
    decided = {d["event_id"]: d for d in read_jsonl(out)}
    assert "replaces" in decided["b"]["explanation"]
    assert "replaces" not in decided["c"]["explanation"]

    x = json_of(recall("phones", "show", "X", "--json"))
    assert (x["eligible"], x["eligible_at"], x["pending_recall"]) == (True, t("10:20"), None)
    y = json_of(recall("phones", "show", "Y", "--json"))
    assert (y["eligible"], y["eligible_at"]) == (False, None)
    assert y["pending_recall"] == {
        "due_at": t("10:45"),
        "source": "sip_code",
        "rule": "sip:486",
        "reason": "sip_recall",
        "agent": None,
    }
    assert y["last_decision"] == decided["c"]


# --- 6. applied replay ---------------------------------------------------------------------------

HAND = [
    ev("h1", "HP", t("10:00")),
    ev("h2", "HP", t("10:30")),
    ev("s1", "HS", t("12:00"), sip_code=404),
    ev("q1", "HQ", t("23:30", day=15), sip_code=480),
]
BAD = [
    "{not json",
    {k: v for k, v in ev("m1", "HM", t("11:00")).items() if k != "phone_id"},
    ev("n1", "HN", "2026-01-14T11:00:00"),
    ev("u1", "HU", t("11:00"), plan_id="nope"),
]
APPLY_NOW = "2026-01-16T00:00:00+00:00"


def test_applied_replay_rebuilds_state_once_and_is_idempotent(
    tmp_path: Path, rules_file: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, database_url)
    generated = write_jsonl(history(seed=16, leads=60), tmp_path / "gen.jsonl")
    hand = write_lines(tmp_path / "hand.jsonl", [*HAND[:2], BAD[0], BAD[1], *HAND[2:], *BAD[2:]])
    files = (tmp_path / "gen.jsonl", hand)
    common = ("--now", APPLY_NOW, "--rules", rules_file)

    dry = replay_json(*files, "--dry-run", *common, "--output", tmp_path / "dry.jsonl")
    # A dry run writes nothing, even with a database configured.
    assert table_rows(database_url) == {name: [] for name in Base.metadata.tables}
    applied = replay_json(
        *files, *common, "--output", tmp_path / "applied.jsonl", "--dead-letters", tmp_path / "r1"
    )

    # The same decisions and the same summary as the dry run.
    assert (tmp_path / "applied.jsonl").read_bytes() == (tmp_path / "dry.jsonl").read_bytes()
    assert applied["mode"] == "applied"
    assert applied["summary"] == dry["summary"]
    assert applied["summary"]["events"] == generated + len(HAND)
    assert applied["summary"]["dead_letters"] == len(BAD)

    decided = {d["event_id"]: d for d in read_jsonl(tmp_path / "applied.jsonl")}
    hp = json_of(recall("phones", "show", "HP", "--json"))
    assert (hp["eligible"], hp["eligible_at"], hp["pending_recall"]) == (True, t("10:45"), None)
    assert hp["last_decision"] == decided["h2"]
    assert hp["last_result_at"] == t("10:30")
    hs = json_of(recall("phones", "show", "HS", "--json"))
    assert (hs["eligible"], hs["pending_recall"]) == (False, None)
    assert hs["last_decision"]["reason"] == "sip_no_recall"
    hq = json_of(recall("phones", "show", "HQ", "--json"))
    assert (hq["eligible"], hq["plan_id"], hq["lead_id"]) == (False, "flat", "L-HQ")
    assert hq["pending_recall"] == {
        "due_at": "2026-01-16T00:30:00+00:00",
        "source": "sip_code",
        "rule": "sip:480",
        "reason": "sip_recall",
        "agent": None,
    }
    assert hq["last_decision"] == decided["q1"]

    # Bad rows: in the file with file, line and reason, and in the database once.
    in_file = read_jsonl(tmp_path / "r1")
    assert [(r["file"], r["line"], r["reason"]) for r in in_file] == [
        (str(hand), 3, "invalid_event"),
        (str(hand), 4, "invalid_event"),
        (str(hand), 7, "invalid_event"),
        (str(hand), 8, "unknown_plan"),
    ]
    letters = json_of(recall("dead-letters", "list", "--json"))
    assert sorted((x["task"], x["reason"], x["detail"]) for x in letters) == sorted(
        ("replay", r["reason"], f"{r['file']}:{r['line']}: {r['detail']}") for r in in_file
    )
    assert sorted(x["payload"] for x in letters) == sorted(r["payload"] for r in in_file)
    before = table_rows(database_url)
    assert len(before["events"]) == generated + len(HAND)
    assert len(before["dead_letters"]) == len(BAD)

    again = replay_json(
        *files, *common, "--output", tmp_path / "again.jsonl", "--dead-letters", tmp_path / "r2"
    )

    assert {d["action"] for d in read_jsonl(tmp_path / "again.jsonl")} == {"duplicate"}
    assert again["summary"]["actions"] == {"duplicate": generated + len(HAND)}
    assert again["summary"]["recalls_fired"] == 0
    assert again["summary"]["recalls_pending"] == applied["summary"]["recalls_pending"]
    assert read_jsonl(tmp_path / "r2") == in_file
    assert table_rows(database_url) == before
    assert json_of(recall("phones", "show", "HP", "--json")) == hp
    assert len(json_of(recall("dead-letters", "list", "--json"))) == len(BAD)


def test_an_applied_replay_in_processes_leaves_the_one_process_database(
    tmp_path: Path, rules_file: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL takes writers in parallel: each process applies its share of the phones."""
    write_jsonl(history(seed=23, leads=400), tmp_path / "gen.jsonl")
    # An id sent again for a phone of another process: the split is refused, one process runs.
    crossing = [ev("x1", "N", t("10:00")), ev("x1", "A", t("10:01"))]
    files = (tmp_path / "gen.jsonl", write_lines(tmp_path / "hand.jsonl", [*HAND, *BAD]))
    states = []
    for jobs, extra in (("1", ()), ("2", ()), ("2", (crossing,)), ("1", (crossing,))):
        url = postgres.create_database()
        try:
            upgrade(url)
            use_database(monkeypatch, url)
            more = [write_lines(tmp_path / f"x{len(states)}.jsonl", e) for e in extra]
            out = tmp_path / f"out-{len(states)}.jsonl"
            result = replay_json(
                *files, *more, "--now", APPLY_NOW, "--rules", rules_file, "--jobs", jobs,
                "--output", out,
            )  # fmt: skip
            rows = rows_without_batch_clock(url)
            del result["elapsed_s"], result["events_per_s"]
            states.append((result, out.read_bytes(), rows))
        finally:
            reset_process_state()
            postgres.drop_database(url)

    assert states[0] == states[1]
    assert states[2] == states[3]
    assert states[2][0]["summary"]["actions"]["duplicate"] == 1
    assert len(states[0][2]["events"]) > 1000


def test_an_interrupted_applied_replay_says_how_to_finish_and_its_rerun_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression (issue 12 #4): Ctrl-C said "error: aborted" and left recalls held, which the
    # dispatcher never takes, while `recall status` said 0 pending.
    path = tmp_path / "h.jsonl"
    write_jsonl(generate(seed=4, leads=10_000, start=START, days=10), path)
    args = ("replay", path, "--now", "2026-02-01T00:00:00+00:00")
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("interrupted", "straight")}
    env = {**os.environ, "RECALL_BROKER_URL": BROKER, "RECALL_HOME": str(tmp_path / "home")}
    for url in urls.values():
        upgrade(url)
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", *map(str, args)],
        env={**env, "RECALL_DATABASE_URL": urls["interrupted"]},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as on a terminal
    )  # fmt: skip
    deadline = time.monotonic() + 120
    # Plain reads (the engine's transactions take SQLite's write lock): a first batch written.
    with contextlib.closing(sqlite3.connect(tmp_path / "interrupted.db")) as connection:
        query = "SELECT count(*) FROM recalls"
        while not connection.execute(query).fetchone()[0] and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert (stdout, stderr) == ("", "interrupted: run the same replay again to finish\n")
    use_database(monkeypatch, urls["interrupted"])
    shown = recall("status", "--json", "--timeout", "0.2")
    status = orjson.loads(shown.stdout)
    assert shown.exit_code == 1
    assert status["recalls"]["held"] > 0
    assert status["recalls"]["oldest_held_due_at"] is not None
    assert status["replays_running"] == 0
    assert any("run the same replay again" in problem for problem in status["problems"])
    text = recall("status", "--timeout", "0.2").stdout
    assert f"{status['recalls']['held']} held (oldest due " in text

    rerun = replay_json(*args[1:])
    use_database(monkeypatch, urls["straight"])
    straight = replay_json(*args[1:])

    assert rerun["summary"]["recalls_pending"] == straight["summary"]["recalls_pending"]
    assert rows_without_batch_clock(urls["interrupted"]) == rows_without_batch_clock(
        urls["straight"]
    )
    use_database(monkeypatch, urls["interrupted"])
    status = orjson.loads(recall("status", "--json", "--timeout", "0.2").stdout)
    assert (status["recalls"]["held"], status["replays_running"]) == (0, 0)
    assert not any("replay" in problem for problem in status["problems"])


def test_status_tells_a_running_replays_held_recalls_from_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held recalls are fine while their replay beats; a replay silent for a minute is gone."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    use_database(monkeypatch, url)
    now = datetime.now(UTC)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            insert(Recall),
            [{"recall_id": "h1", "phone_id": "P", "lead_id": "L", "plan_id": "flat",
              "generation": 1, "due_at": now, "source": "sip_code", "rule": "sip:486",
              "reason": "sip_recall", "state": "held", "created_at": now}],
        )  # fmt: skip
        connection.execute(
            insert(ReplayRun),
            [
                {
                    "host": "h",
                    "pid": 1,
                    "started_at": now,
                    "heartbeat_at": now - timedelta(seconds=5),
                }
            ],
        )
    running = orjson.loads(recall("status", "--json", "--timeout", "0.2").stdout)
    assert (running["recalls"]["held"], running["replays_running"]) == (1, 1)
    assert not any("held" in problem for problem in running["problems"])

    with engine.begin() as connection:
        connection.execute(update(ReplayRun).values(heartbeat_at=now - timedelta(minutes=2)))
    engine.dispose()
    gone = orjson.loads(recall("status", "--json", "--timeout", "0.2").stdout)
    assert (gone["recalls"]["held"], gone["replays_running"]) == (1, 0)
    assert any(
        problem.startswith("1 recalls held by an applied replay that is not running, last seen ")
        for problem in gone["problems"]
    )


# --- 7. bad rows ---------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_file_line_and_field(tmp_path: Path, rules_file: Path) -> None:
    jsonl = write_lines(
        tmp_path / "mixed.jsonl",
        [ev("g1", "G1", t("10:00")), BAD[0], BAD[1], ev("g2", "G2", t("10:01")), BAD[2], BAD[3]],
    )
    # A blank line is skipped but still counts for the line numbers.
    jsonl.write_bytes(jsonl.read_bytes() + b"\n" + orjson.dumps(ev("g3", "G3", t("10:02"))) + b"\n")
    rows = [
        ev("k1", "K1", t("10:03")),
        {**ev("k2", "K2", t("10:04")), "sip_code": "abc"},
        ev("k3", "K3", t("10:05"), retry_after_s=600),
    ]
    table = tmp_path / "mixed.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[2]], restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"

    result = replay_json(
        jsonl,
        table,
        "--dry-run",
        "--now",
        NOW,
        "--rules",
        rules_file,
        "--output",
        out,
        "--dead-letters",
        rejects,
    )

    found = read_jsonl(rejects)
    assert [(r["file"], r["line"], r["reason"]) for r in found] == [
        (str(jsonl), 2, "invalid_event"),
        (str(jsonl), 3, "invalid_event"),
        (str(jsonl), 5, "invalid_event"),
        (str(jsonl), 6, "unknown_plan"),
        (str(table), 3, "invalid_event"),
    ]
    details = [r["detail"] for r in found]
    assert details[0].startswith("event: not valid JSON")
    assert details[1] == "phone_id: required"
    assert details[2].startswith("occurred_at: no UTC offset")
    assert details[3] == "plan_id: plan 'nope' is not in the rules"
    assert details[4].startswith("sip_code: must be an integer")
    assert found[0]["payload"] == "{not json"
    assert orjson.loads(found[3]["payload"])["event_id"] == "u1"
    # Every good row is decided.
    assert [d["event_id"] for d in read_jsonl(out)] == ["g1", "g2", "g3", "k1", "k3"]
    assert {d["action"] for d in read_jsonl(out)} == {"recall"}
    assert result["summary"]["dead_letters"] == 5
    assert result["summary"]["events"] == 5
    assert [(r["file"], r["line"]) for r in result["rejections_sample"]] == [
        (r["file"], r["line"]) for r in found
    ]


def test_a_truncated_list_of_rejections_says_how_many_and_where_the_rest_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", [f"{{bad {number}" for number in range(7)])

    shown = recall("replay", bad, "--dry-run", "--now", NOW)
    kept = recall("replay", bad, "--dry-run", "--now", NOW, "--dead-letters", tmp_path / "d.jsonl")
    few = recall("replay", write_lines(tmp_path / "two.jsonl", BAD[:2]), "--dry-run", "--now", NOW)

    assert shown.exit_code == kept.exit_code == few.exit_code == 0
    assert len([line for line in shown.stdout.splitlines() if line.startswith("rejected ")]) == 5
    assert "showing 5 of 7 rejected rows; --dead-letters FILE writes them all" in shown.stdout
    assert "showing 5 of 7 rejected rows; all 7 are in the --dead-letters file" in kept.stdout
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 7
    assert "showing" not in few.stdout
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    upgrade(url)
    use_database(monkeypatch, url)
    applied = recall("replay", bad, "--now", NOW)
    assert applied.exit_code == 0, applied.output
    assert (
        "showing 5 of 7 rejected rows; all are in the dead letters (recall dead-letters list)"
        in (applied.stdout)
    )


# Hardening #13: replay ends at --now. a and y1 recall at 10:15, after --now (10:14): neither
# fires. b lies 2 minutes after --now, within the clock skew: taken, it supersedes a. c and d lie
# further after --now than the skew: not in the history, dead letters like any bad row.
AFTER_NOW_END = t("10:14")
AFTER_NOW = [
    ev("a", "X", t("10:00")),
    ev("y1", "Y", t("10:00")),
    ev("b", "X", t("10:16")),
    ev("c", "Y", t("10:30")),
    ev("d", "Z", "2026-06-01T10:00:00+00:00"),
    "{not json",
]


def check_after_now(result: dict[str, Any], out: Path, rejects: Path) -> None:
    summary = result["summary"]
    assert summary["events"] == 3
    assert (summary["dead_letters"], summary["events_after_now"]) == (3, 2)
    assert (summary["recalls_fired"], summary["recalls_pending"]) == (0, 2)
    assert [d["event_id"] for d in read_jsonl(out)] == ["a", "y1", "b"]
    found = read_jsonl(rejects)
    assert [(r["event_id"], r["line"], r["reason"]) for r in found] == [
        ("c", 4, "invalid_event"),
        ("d", 5, "invalid_event"),
        (None, 6, "invalid_event"),
    ]
    assert found[0]["detail"] == (
        "occurred_at: 2026-01-14T10:30:00+00:00 is 960 s ahead of the clock"
        " (2026-01-14T10:14:00+00:00); the limit is RECALL_CLOCK_SKEW_S=300 s"
    )
    assert found[1]["detail"].startswith("occurred_at: 2026-06-01T10:00:00+00:00 is 137 days ")


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("compare", [False, True])
def test_events_after_now_are_left_out_and_no_recall_fires_after_it(
    tmp_path: Path, rules_file: Path, jobs: str, compare: bool
) -> None:
    path = write_lines(tmp_path / "x.jsonl", AFTER_NOW)
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    slower = tmp_path / "slower.toml"
    slower.write_text(RULES + SLOWER_BUSY, encoding="utf-8")
    args = (
        path, "--dry-run", "--now", AFTER_NOW_END, "--rules", rules_file, "--jobs", jobs,
        *(("--compare", slower) if compare else ()),
    )  # fmt: skip

    result = replay_json(*args, "--output", out, "--dead-letters", rejects)

    check_after_now(result, out, rejects)
    if compare:
        other = result["compare"]["summary"]
        assert (other["events"], other["recalls_fired"], other["recalls_pending"]) == (3, 0, 2)
        assert (other["dead_letters"], other["events_after_now"]) == (3, 2)
    text = recall("replay", *args)
    assert text.exit_code == 0, (text.output, text.exception)
    assert re.search(r"^  of which after --now +2( +2)?$", text.stdout, re.MULTILINE), text.stdout


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_events_after_now_are_left_out_when_applied(
    tmp_path: Path,
    rules_file: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    jobs: str,
) -> None:
    use_database(monkeypatch, database_url)
    path = write_lines(tmp_path / "x.jsonl", AFTER_NOW)
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"

    result = replay_json(
        path, "--now", AFTER_NOW_END, "--rules", rules_file, "--jobs", jobs,
        "--output", out, "--dead-letters", rejects,
    )  # fmt: skip

    assert result["mode"] == "applied"
    check_after_now(result, out, rejects)
    at = {clock: datetime.fromisoformat(t(clock)) for clock in ("10:15", "10:31")}
    assert recall_rows(database_url) == {
        "a": ("superseded", at["10:15"], None),
        "y1": ("pending", at["10:15"], None),
        "b": ("pending", at["10:31"], None),
    }
    letters = json_of(recall("dead-letters", "list", "--json"))
    assert sorted((x["event_id"], x["reason"]) for x in letters if x["event_id"]) == [
        ("c", "invalid_event"),
        ("d", "invalid_event"),
    ]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_now_before_the_whole_history_leaves_every_event_out(tmp_path: Path, jobs: str) -> None:
    count = write_jsonl(history(seed=19, leads=40), tmp_path / "h.jsonl")

    result = replay_json(
        tmp_path / "h.jsonl", "--dry-run", "--now", "2020-01-01T00:00:00Z", "--jobs", jobs
    )

    summary = result["summary"]
    assert (summary["events"], summary["dead_letters"], summary["events_after_now"]) == (
        0, count, count,
    )  # fmt: skip
    assert (summary["recalls_fired"], summary["recalls_pending"]) == (0, 0)


@pytest.mark.usefixtures("private_tmp")
def test_a_file_that_cannot_be_read_is_a_one_line_error_that_leaves_nothing(
    tmp_path: Path,
) -> None:
    good = write_jsonl(history(seed=17, leads=5), tmp_path / "good.jsonl")
    assert good
    missing = tmp_path / "missing.jsonl"

    line = one_line_error(
        recall("replay", tmp_path / "good.jsonl", missing, "--dry-run", "--now", NOW)
    )

    assert str(missing) in line
    assert leftovers() == []


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.usefixtures("private_tmp")
def test_a_corrupt_gzip_file_is_a_one_line_error_naming_it(tmp_path: Path, jobs: str) -> None:
    path = tmp_path / "corrupt.jsonl.gz"
    lines = b"".join(orjson.dumps(e) + b"\n" for e in history(seed=19, leads=60))
    path.write_bytes(corrupt_gzip(lines))

    line = one_line_error(recall("replay", path, "--dry-run", "--now", NOW, "--jobs", jobs))

    assert line.startswith(f"error: {path}: cannot read: "), line
    assert "error: " not in line[len("error: ") :], line
    assert leftovers() == []


CSV_HEADER = "event_id,plan_id,lead_id,phone_id,sip_code,occurred_at"


def csv_row(event_id: str, phone_id: str, occurred_at: str, separator: str = ",") -> str:
    """One CSV line under ``CSV_HEADER``: a busy line (486) on the ``flat`` plan."""
    return separator.join([event_id, "flat", f"L-{phone_id}", phone_id, "486", occurred_at])


def minute(index: int) -> str:
    return t(f"{10 + index // 60:02d}:{index % 60:02d}")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_unterminated_quote_rejects_its_row_and_reading_goes_on(
    tmp_path: Path, rules_file: Path, jobs: str
) -> None:
    """Line 4 opens a quote nothing closes: only that row is lost, not the 37 after it."""
    rows = [csv_row(f"g{i}", f"G{i}", minute(i)) for i in range(40)]
    rows[2] = '"q1 unterminated,flat,L-Q,Q,486,' + minute(2)
    path = tmp_path / "q.csv"
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n", encoding="utf-8")
    rejects = tmp_path / "d.jsonl"

    result = replay_json(
        path, "--dry-run", "--now", NOW, "--rules", rules_file, "--dead-letters", rejects,
        "--jobs", jobs,
    )  # fmt: skip

    (found,) = read_jsonl(rejects)
    assert (found["file"], found["line"], found["reason"]) == (str(path), 4, "invalid_event")
    assert found["detail"].startswith("event: unterminated quote"), found["detail"]
    assert "end of the file" in found["detail"]
    assert found["payload"] == rows[2]
    assert result["summary"]["events"] == 39
    assert result["summary"]["dead_letters"] == 1


def test_a_quoted_cell_may_hold_line_breaks_but_a_quote_left_open_is_cut_at_its_line(
    tmp_path: Path, rules_file: Path
) -> None:
    """A note (an extra column) may span lines; a row is broken when its quote runs on past
    MAX_RECORD_LINES lines, or breaks a line in a column of the contract, or changes the count
    of cells: each broken row is rejected at its first line and reading resumes on the next."""
    lines = [
        f"{CSV_HEADER},note",
        csv_row("n1", "N1", minute(0)) + ',"called back,\r\nleft a message"',  # lines 2-3
        csv_row("n2", "N2", minute(1)) + ",",  # line 4
        '"b1,flat,L-B,B,486,' + minute(2) + ",",  # line 5: a quote left open...
        csv_row("n3", "N3", minute(3)) + ",",  # line 6
        '"b2,flat,L-B,B,486,' + minute(4) + ",",  # line 7: ...closed here, and one more opened
        *[csv_row(f"m{i}", f"M{i}", minute(5 + i)) + "," for i in range(120)],  # lines 8-127
        csv_row("n4", "N4", minute(200)) + ',"one\ntwo",extra',  # lines 128-129: 8 cells
        csv_row("n5", "N5", minute(201)) + ",",  # line 130
    ]
    lines[6 + 50] = lines[6 + 50].replace(",486,", ",abc,")  # m50, line 58: a bad sip_code
    path = tmp_path / "notes.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    rejects, out = tmp_path / "d.jsonl", tmp_path / "out.jsonl"

    result = replay_json(
        path, "--dry-run", "--now", NOW, "--rules", rules_file, "--dead-letters", rejects,
        "--output", out, "--jobs", "1",
    )  # fmt: skip

    found = {r["line"]: r["detail"] for r in read_jsonl(rejects)}
    # After a broken row, its other lines are read again as rows: line 129 is "two",extra.
    assert sorted(found) == [5, 7, 58, 128, 129]
    assert found[5].startswith("event: unterminated quote"), found[5]
    assert "line break in event_id" in found[5]
    assert found[7].startswith("event: unterminated quote"), found[7]
    assert "past 100 lines" in found[7]
    assert found[58].startswith("sip_code: must be an integer")
    assert found[128].startswith("event: unterminated quote"), found[128]
    assert "8 cells, the header has 7" in found[128]
    decided = [d["event_id"] for d in read_jsonl(out)]
    assert decided == ["n1", "n2", "n3", *[f"m{i}" for i in range(120) if i != 50], "n5"]
    assert result["summary"]["events"] == len(decided)


@pytest.mark.parametrize(
    "header",
    [
        CSV_HEADER.upper(),
        CSV_HEADER.replace(",", ", "),
        " " + CSV_HEADER.replace(",", " ,\t") + " ",
        CSV_HEADER + ",Note,OUTCOME_CODE",
    ],
)
def test_harmless_differences_in_a_csv_header_are_accepted(
    tmp_path: Path, rules_file: Path, header: str
) -> None:
    path = tmp_path / "h.csv"
    rows = [csv_row("a", "A", minute(0)), csv_row("b", "B", minute(1))]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")

    result = replay_json(path, "--dry-run", "--now", NOW, "--rules", rules_file)

    assert result["summary"]["events"] == 2
    assert result["summary"]["dead_letters"] == 0


@pytest.mark.parametrize(
    ("lines", "found", "why"),
    [
        (
            [CSV_HEADER.replace(",", ";"), csv_row("a", "A", minute(0), ";")],
            CSV_HEADER.replace(",", ";"),
            "one column: is the separator ';'?",
        ),
        (
            [csv_row("a", "A", minute(0)), csv_row("b", "B", minute(1))],
            csv_row("a", "A", minute(0)),
            "no known column: is the header line missing?",
        ),
        (
            [CSV_HEADER.replace("phone_id", "phone"), csv_row("a", "A", minute(0))],
            CSV_HEADER.replace("phone_id", "phone"),
            "missing phone_id",
        ),
        (
            [CSV_HEADER + ",Event_ID", csv_row("a", "A", minute(0)) + ",x"],
            CSV_HEADER + ",Event_ID",
            "event_id twice",
        ),
    ],
)
@pytest.mark.usefixtures("private_tmp")
def test_an_unrecognised_csv_header_is_refused_before_any_work(
    tmp_path: Path, rules_file: Path, lines: list[str], found: str, why: str
) -> None:
    good = write_lines(tmp_path / "good.jsonl", [ev("g", "G", t("09:00"))])
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    line = one_line_error(
        recall("replay", good, path, "--dry-run", "--now", NOW, "--rules", rules_file,
               "--output", out)
    )  # fmt: skip

    assert line == (
        f"error: {path}: unrecognised CSV header: found {found!r} ({why}); expected columns"
        " event_id, plan_id, lead_id, phone_id, sip_code, occurred_at (and optional"
        " outcome_code, timezone, retry_after_s, call_id, callback_at, callback_agent)"
    )
    assert not out.exists()
    assert leftovers() == []


@pytest.mark.usefixtures("private_tmp")
def test_an_unmigrated_database_is_refused_and_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}")
    write_jsonl(history(seed=18, leads=5), tmp_path / "good.jsonl")

    line = one_line_error(recall("replay", tmp_path / "good.jsonl", "--now", NOW))

    assert "recall db upgrade" in line
    assert leftovers() == []


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "X", t("10:00"))])
    broken = tmp_path / "broken.toml"
    broken.write_text('[[plans]]\nid = "flat"\nmax_recalls = "many"\n', encoding="utf-8")

    assert "--now" in one_line_error(recall("replay", path, "--dry-run", "--now", "tomorrow"))
    assert "--now" in one_line_error(
        recall("replay", path, "--dry-run", "--now", "2026-01-14T10:00:00")
    )
    line = one_line_error(recall("replay", path, "--now", NOW, "--compare", broken))
    assert "broken.toml" in line
    assert "max_recalls" in line


# --- 7b. outputs never destroy inputs -------------------------------------------------------------

OUTPUT_OPTIONS = ("--output", "--dead-letters", "--report")


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
@pytest.mark.parametrize(
    "form", ["same", "relative", "symlink", "hard link", "second input", "rules", "compare"]
)
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(
    tmp_path: Path, rules_file: Path, monkeypatch: pytest.MonkeyPatch, option: str, form: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(history(seed=30, leads=5), tmp_path / "v.jsonl")
    other = write_lines(tmp_path / "w.jsonl", [ev("a", "X", t("10:00"))])
    inputs: list[str | Path] = [tmp_path / "v.jsonl"]
    target: str | Path = tmp_path / "v.jsonl"
    if form == "relative":
        target = f"../{tmp_path.name}/v.jsonl"
    elif form == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(tmp_path / "v.jsonl")
    elif form == "hard link":
        target = tmp_path / "hard.jsonl"
        os.link(tmp_path / "v.jsonl", target)
    elif form == "second input":
        inputs = [other, "v.jsonl"]
    elif form in ("rules", "compare"):
        target = rules_file
    files = {path: path.read_bytes() for path in (tmp_path / "v.jsonl", other, rules_file)}
    extra = ("--compare", rules_file) if form == "compare" else ("--rules", rules_file)

    line = one_line_error(
        recall("replay", *inputs, "--dry-run", "--now", NOW, *extra, option, target)
    )

    assert line.startswith(f"error: {option} {target}: is the ")
    assert str(rules_file if form in ("rules", "compare") else "v.jsonl") in line
    assert {path: path.read_bytes() for path in files} == files
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


def test_two_outputs_that_are_one_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "X", t("10:00"))])
    elsewhere = f"../{tmp_path.name}/out.jsonl"

    one_line_error(
        recall("replay", path, "--dry-run", "--output", "out.jsonl", "--report", elsewhere),
        f"--report {elsewhere}: is the --output file out.jsonl",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
@pytest.mark.parametrize("bad", ["/nonexistent/dir/x.jsonl", "/proc/x/r.html", "{tmp}/file/x"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, bad: str
) -> None:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    upgrade(url)
    use_database(monkeypatch, url)
    write_jsonl(history(seed=31, leads=10), tmp_path / "h.jsonl")
    (tmp_path / "file").write_text("a file, not a directory", encoding="utf-8")
    bad = bad.format(tmp=tmp_path)
    reason = "Not a directory" if bad.startswith(str(tmp_path)) else "No such file or directory"

    started = time.monotonic()
    line = one_line_error(recall("replay", tmp_path / "h.jsonl", "--now", NOW, option, bad))

    assert line == f"error: {option} {bad}: cannot write: {reason}"
    assert table_rows(url) == {name: [] for name in Base.metadata.tables}  # nothing applied
    assert time.monotonic() - started < 5


def test_a_failed_replay_leaves_the_outputs_as_they_were(tmp_path: Path) -> None:
    write_jsonl(history(seed=32, leads=10), tmp_path / "h.jsonl")
    outputs = {tmp_path / name: b"keep me\n" for name in ("d.jsonl", "r.jsonl", "r.html")}
    for path, content in outputs.items():
        path.write_bytes(content)
    missing = tmp_path / "missing.jsonl"

    options = ["--output", "d.jsonl", "--dead-letters", "r.jsonl", "--report", "r.html"]
    paths = [option if option.startswith("--") else tmp_path / option for option in options]

    one_line_error(
        recall("replay", tmp_path / "h.jsonl", missing, "--dry-run", "--now", NOW, *paths),
        str(missing),
    )

    assert {path: path.read_bytes() for path in outputs} == outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["h.jsonl", *(path.name for path in outputs)]
    )


def test_outputs_replace_their_targets_when_the_replay_succeeds(
    tmp_path: Path, rules_file: Path
) -> None:
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "X", t("10:00")), "{not json"])
    real = tmp_path / "decisions.jsonl"
    real.write_text("old\n", encoding="utf-8")
    real.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    rejects = tmp_path / "rejects.jsonl"

    replay_json(path, "--dry-run", "--now", NOW, "--rules", rules_file, "--output", link,
                "--dead-letters", rejects, "--report", os.devnull)  # fmt: skip

    assert link.is_symlink()
    assert [d["event_id"] for d in read_jsonl(real)] == ["a"]
    assert real.stat().st_mode & 0o777 == 0o640
    assert [r["line"] for r in read_jsonl(rejects)] == [2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_interrupted_command_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("good\n", encoding="utf-8")

    def interrupted() -> None:
        with Outputs([]) as outputs:
            written = outputs.add("--output", target)
            assert written is not None
            assert written.parent == tmp_path
            assert written.name.endswith(".out.jsonl")
            written.write_text("half", encoding="utf-8")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()

    assert target.read_text(encoding="utf-8") == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# --- 8. what-if ----------------------------------------------------------------------------------


def test_compare_shows_what_a_rules_change_would_do(tmp_path: Path, rules_file: Path) -> None:
    slower = tmp_path / "slower.toml"
    slower.write_text(RULES + SLOWER_BUSY, encoding="utf-8")
    same = tmp_path / "same.toml"
    same.write_text(RULES, encoding="utf-8")
    path = write_lines(
        tmp_path / "x.jsonl",
        [ev("a", "X", t("10:00")), ev("n", "N", t("10:00"), sip_code=480)],
    )
    common = ("--now", NOW, "--rules", rules_file)

    result = replay_json(path, *common, "--compare", slower)

    assert result["mode"] == "dry-run"
    compare = result["compare"]
    assert compare["differing_decisions"] == 1
    assert compare["sample"] == [
        {
            "event_id": "a",
            "phone_id": "X",
            "rules": {
                "action": "recall",
                "due_at": t("10:15"),
                "reason": "sip_recall",
                "rule": "sip:486",
                "adjustments": [],
            },
            "compare": {
                "action": "recall",
                "due_at": t("10:30"),
                "reason": "sip_recall",
                "rule": "sip:486",
                "adjustments": [],
            },
        }
    ]
    assert compare["rules"].endswith(str(slower))
    assert result["rules"].endswith(str(rules_file))
    assert result["summary"]["recall_delay_s"]["median"] == 15 * 60
    assert compare["summary"]["recall_delay_s"]["median"] == 30 * 60

    unchanged = replay_json(path, *common, "--compare", same)
    assert (unchanged["compare"]["differing_decisions"], unchanged["compare"]["sample"]) == (0, [])
    assert unchanged["compare"]["summary"] == unchanged["summary"]


def test_every_replayed_decision_names_the_version_of_its_rules(
    tmp_path: Path, rules_file: Path
) -> None:
    """Dry, with --compare and --output: each side's decisions carry its own rules' version."""
    slower = tmp_path / "slower.toml"
    slower.write_text(SLOWER_BUSY, encoding="utf-8")
    path = write_lines(
        tmp_path / "x.jsonl",
        [ev("a", "X", t("10:00")), ev("a", "X", t("10:00")), ev("b", "X", t("09:00"))],
    )
    base, other = load_rules(rules_file).version, load_rules(slower).version
    assert base != other
    for jobs in ("1", "2"):
        out = tmp_path / f"out-{jobs}.jsonl"
        result = replay_json(
            path, "--now", NOW, "--rules", rules_file, "--compare", slower, "--output", out,
            "--jobs", jobs,
        )  # fmt: skip
        assert (result["rules_version"], result["compare"]["rules_version"]) == (base, other)
        decided = read_jsonl(out)
        # A recall, a duplicate, a late call (decided in its place): every one names its rules.
        assert [d["action"] for d in decided] == ["recall", "recall", "duplicate"]
        assert [list(d)[-1] for d in decided] == ["rules_version"] * 3
        assert {d["rules_version"] for d in decided} == {base}
    text = recall("replay", path, "--now", NOW, "--rules", rules_file, "--compare", slower)
    assert f"(version {base})" in text.stdout.splitlines()[0]
    assert f"(version {other})" in text.stdout.splitlines()[1]


def test_an_applied_replay_records_its_rules_and_its_decisions_name_them(
    tmp_path: Path, rules_file: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, database_url)
    path = write_lines(tmp_path / "x.jsonl", [ev("a", "X", t("10:00")), ev("b", "Y", t("10:00"))])
    version = load_rules(rules_file).version

    out = tmp_path / "out.jsonl"
    assert (
        replay_json(path, "--rules", rules_file, "--now", t("10:05"), "--output", out)[
            "rules_version"
        ]
        == version
    )
    assert {d["rules_version"] for d in read_jsonl(out)} == {version}
    assert json_of(recall("phones", "show", "X", "--json"))["last_decision"]["rules_version"] == (
        version
    )
    # Taken again, everything is a duplicate: the history does not grow either.
    replay_json(path, "--rules", rules_file, "--now", t("10:05"))
    (row,) = json_of(recall("rules", "history", "--json"))
    assert (row["version"], row["source"]) == (version, f"replay: file {rules_file}")
    assert (row["author"], row["comment"]) == (None, None)


def test_compare_over_a_history_samples_the_differences(tmp_path: Path) -> None:
    slower = tmp_path / "slower.toml"
    slower.write_text(SLOWER_BUSY, encoding="utf-8")
    same = tmp_path / "same.toml"
    same.write_text("# nothing changed\n", encoding="utf-8")
    count = write_jsonl(history(seed=18, leads=200), tmp_path / "h.jsonl")
    assert count > 500

    result = replay_json(tmp_path / "h.jsonl", "--now", NOW, "--compare", slower)

    compare = result["compare"]
    assert compare["differing_decisions"] > 0
    assert 0 < len(compare["sample"]) <= min(20, compare["differing_decisions"])
    for item in compare["sample"]:
        first, second = item["rules"], item["compare"]
        assert any(first[key] != second[key] for key in ("action", "due_at", "reason", "rule"))
        if first["action"] == second["action"] == "recall":
            assert None not in (first["due_at"], second["due_at"])
    assert any(
        item["rules"]["rule"] == "sip:486"
        and None not in (item["rules"]["due_at"], item["compare"]["due_at"])
        and item["compare"]["due_at"] > item["rules"]["due_at"]
        for item in compare["sample"]
    )

    unchanged = replay_json(tmp_path / "h.jsonl", "--now", NOW, "--compare", same)
    assert unchanged["compare"]["differing_decisions"] == 0
    assert unchanged["compare"]["summary"] == unchanged["summary"]


def test_compare_never_writes_to_the_database(
    tmp_path: Path, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    upgrade(url)
    use_database(monkeypatch, url)
    slower = tmp_path / "slower.toml"
    slower.write_text(SLOWER_BUSY, encoding="utf-8")
    write_jsonl(history(seed=19, leads=30), tmp_path / "h.jsonl")
    bad = write_lines(tmp_path / "bad.jsonl", BAD)

    result = replay_json(tmp_path / "h.jsonl", bad, "--now", NOW, "--compare", slower)

    assert result["summary"]["dead_letters"] == len(BAD)
    assert table_rows(url) == {name: [] for name in Base.metadata.tables}


def test_a_dry_run_touches_no_database(tmp_path: Path) -> None:
    write_jsonl(history(seed=20, leads=20), tmp_path / "h.jsonl")
    bad = write_lines(tmp_path / "bad.jsonl", BAD)

    result = replay_json(tmp_path / "h.jsonl", bad, "--dry-run", "--now", NOW)

    assert result["mode"] == "dry-run"
    # With nothing configured the embedded database would live under RECALL_HOME.
    home = tmp_path / "home"
    assert not home.exists() or list(home.iterdir()) == []


# --- 9. the report -------------------------------------------------------------------------------

CHART_TITLES = ("Decisions by reason", "Recall delay", "per hour of day")


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    for needle in ("http://", "https://", "<script src", "<link", "@import"):
        assert needle not in lowered


def bar_colours(page: str) -> set[str]:
    return set(re.findall(r'<rect[^>]*fill="([^"]+)"', page))


def test_the_report_is_one_self_contained_html_file(tmp_path: Path) -> None:
    write_jsonl(history(seed=21, leads=80), tmp_path / "h.jsonl")
    report = tmp_path / "report.html"

    result = replay_json(tmp_path / "h.jsonl", "--dry-run", "--now", NOW, "--report", report)

    page = report.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert page.count("<svg") >= 3
    for title in CHART_TITLES:
        assert title in page
    assert_self_contained(page)
    assert f"{result['summary']['events']:,} events" in page
    assert len(bar_colours(page)) == 1
    assert "Decisions that differ" not in page


def test_the_report_with_compare_shows_both_rule_sets(tmp_path: Path, rules_file: Path) -> None:
    slower = tmp_path / "whatif.toml"
    slower.write_text(SLOWER_BUSY, encoding="utf-8")
    write_jsonl(history(seed=22, leads=80), tmp_path / "h.jsonl")
    report = tmp_path / "report.html"

    result = replay_json(
        tmp_path / "h.jsonl",
        "--now",
        NOW,
        "--rules",
        rules_file,
        "--compare",
        slower,
        "--report",
        report,
    )

    page = report.read_text(encoding="utf-8")
    for title in CHART_TITLES:
        assert title in page
    assert_self_contained(page)
    assert html.escape(result["rules"]) in page
    assert html.escape(result["compare"]["rules"]) in page
    assert result["rules"].endswith("base.toml")
    assert result["compare"]["rules"].endswith("whatif.toml")
    assert f"Decisions that differ: {result['compare']['differing_decisions']:,}" in page
    assert len(bar_colours(page)) == 2
    first = result["compare"]["sample"][0]
    assert first["event_id"] in page


@pytest.mark.parametrize(
    ("peak", "ticks"),
    [
        (0, [0, 1]),
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (7, [0, 2, 4, 6, 8]),
        (107, [0, 50, 100, 150]),
        (429, [0, 100, 200, 300, 400, 500]),
        (20_000, [0, 5_000, 10_000, 15_000, 20_000]),
        (1_234_567, [0, 500_000, 1_000_000, 1_500_000]),
    ],
)
def test_chart_ticks_are_round_integers(peak: int, ticks: list[int]) -> None:
    assert nice_ticks(peak) == ticks


def svg_texts(page: str, kind: str) -> list[str]:
    """The text of every ``<text class="kind">`` of the report, unescaped."""
    return [
        html.unescape(text)
        for text in re.findall(rf'<text class="{kind}"[^>]*>([^<]*)</text>', page)
    ]


def test_the_report_has_round_ticks_full_labels_axis_titles_and_the_rejected_rows(
    tmp_path: Path, rules_file: Path
) -> None:
    # Three calls: small counts, where evenly spaced ticks used to read 0,1,2,2,3.
    events = [ev("a", "A", t("10:00")), ev("b", "B", t("10:01")), ev("c", "C", t("10:02"))]
    events += [ev("d", "D", t("10:03"), sip_code=404)]
    good = write_lines(tmp_path / "h.jsonl", events)
    bad = write_lines(tmp_path / "bad.jsonl", [f"{{broken {number}" for number in range(7)])
    report = tmp_path / "report.html"

    replay_json(good, bad, "--dry-run", "--now", NOW, "--rules", rules_file, "--report", report)

    page = report.read_text(encoding="utf-8")
    charts = page.split("<svg")[1:]
    assert len(charts) == 3
    for chart in charts:
        ticks = [int(text.replace(",", "")) for text in svg_texts(chart, "tick")]
        steps = {b - a for a, b in itertools.pairwise(ticks)}
        assert ticks[0] == 0
        assert len(steps) == 1
        assert steps.pop() in (1, 2, 5, 10, 20, 50)
        assert len(svg_texts(chart, "axis-title")) == 2
    first = charts[0]
    assert [int(tick) for tick in svg_texts(first, "tick")] == [0, 1, 2, 3]
    assert svg_texts(first, "axis-title") == ["reason", "decisions"]
    assert sorted(svg_texts(first, "label")) == ["sip_no_recall", "sip_recall"]
    assert "Rejected rows: the first 5 of 7" in page
    assert page.count("invalid_event") >= 5
    assert "bad.jsonl:1" in page
    assert html.escape("event: not valid JSON") in page


def test_chart_labels_too_wide_to_lie_flat_are_slanted_whole_inside_the_drawing() -> None:
    labels = ["stem_outcome_final", *(f"a_rather_long_reason_{n}" for n in range(11))]

    chart = bar_chart("Reasons", labels, [[3.0] * 12, [429.0] * 12], "reason", "decisions")

    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', chart)
    assert box is not None
    height = float(box.group(2))
    slanted = re.findall(
        r'<text class="label" x="([\d.]+)" y="([\d.]+)"[^>]*rotate\(-45[^>]*>([^<]*)</text>', chart
    )
    assert [label for _, _, label in slanted] == labels
    for x, y, label in slanted:  # 45 degrees, at most 6.5 px a character
        reach = len(label) * 6.5 * 0.7072
        assert float(x) - reach >= 0
        assert float(y) + reach <= height - 14  # the axis title goes below
    assert svg_texts(chart, "tick") == ["0", "100", "200", "300", "400", "500"]
    assert svg_texts(chart, "axis-title") == ["reason", "decisions"]


def test_the_report_with_compare_highlights_the_figures_that_differ(
    tmp_path: Path, rules_file: Path
) -> None:
    slower = tmp_path / "slower.toml"
    slower.write_text(RULES + SLOWER_BUSY, encoding="utf-8")
    path = write_lines(
        tmp_path / "x.jsonl",
        [ev("a", "X", t("10:00")), ev("n", "N", t("10:00"), sip_code=480), "{broken"],
    )
    report = tmp_path / "r.html"

    result = replay_json(
        path, "--now", NOW, "--rules", rules_file, "--compare", slower, "--report", report
    )

    page = report.read_text(encoding="utf-8")
    found = re.findall(r'<tr( class="differs")?><td>([^<]+)</td>', page)
    rows = {label: marked for marked, label in found}
    assert rows["recall delay median (min)"] == ' class="differs"'
    assert rows["events"] == ""
    assert rows["actions: recall"] == ""
    assert rows["dead letters"] == ""
    assert result["summary"]["dead_letters"] == result["compare"]["summary"]["dead_letters"] == 1
    assert ".differs" in page


# --- 10. the summary -----------------------------------------------------------------------------


def test_json_summary_counts_an_exact_history(tmp_path: Path, rules_file: Path) -> None:
    events = [ev(f"b{i}", f"B{i}", t("10:00")) for i in range(3)]  # 486: 15 min
    events += [ev(f"u{i}", f"U{i}", t("10:00"), sip_code=480) for i in range(17)]  # 480: 1 h
    events += [ev("s", "S", t("10:00"), sip_code=404), ev("b0", "B0", t("10:00"))]
    path = write_lines(tmp_path / "x.jsonl", [*events, "{broken"])

    result = replay_json(path, "--dry-run", "--rules", rules_file, "--now", t("10:30"))

    summary = result["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert {key: summary[key] for key in SUMMARY_KEYS} == {
        "events": 22,
        "actions": {"recall": 20, "suppress": 1, "duplicate": 1},
        "reasons": {"sip_recall": 20, "sip_no_recall": 1, "duplicate": 1},
        "sources": {"sip_code": 21},
        "recalls_by_sip_class": {"4xx": 20},
        "recall_delay_s": {"median": 3600.0, "p95": 3600.0},
        "recalls_fired": 3,
        "recalls_pending": 17,
        "dead_letters": 1,
        "events_after_now": 0,
    }
    assert result["mode"] == "dry-run"
    assert [r["line"] for r in result["rejections_sample"]] == [23]

    text = recall("replay", path, "--dry-run", "--rules", rules_file, "--now", t("10:30"))
    assert text.exit_code == 0, (text.output, text.exception)
    for label, value in [("events", 22), ("recalls fired", 3), ("dead letters", 1)]:
        assert re.search(rf"^{label} +{value}$", text.stdout, re.MULTILINE), text.stdout


def test_json_summary_keys_over_a_generated_history(tmp_path: Path) -> None:
    events = history(seed=23, leads=150)
    write_jsonl(events, tmp_path / "h.jsonl")

    summary = replay_json(tmp_path / "h.jsonl", "--dry-run", "--now", NOW)["summary"]

    assert set(summary) >= SUMMARY_KEYS
    assert summary["events"] == len(events)
    assert sum(summary["actions"].values()) == len(events)
    assert sum(summary["reasons"].values()) == len(events)
    recalls = summary["actions"]["recall"]
    assert sum(summary["recalls_by_sip_class"].values()) == recalls
    assert set(summary["recalls_by_sip_class"]) <= {"2xx", "4xx", "5xx", "6xx"}
    delay = summary["recall_delay_s"]
    assert 0 < delay["median"] <= delay["p95"]
    # Every recall either fired, was superseded, or is still pending at the end.
    assert 0 < summary["recalls_fired"] <= recalls
    assert summary["recalls_fired"] + summary["recalls_pending"] <= recalls
    assert summary["dead_letters"] == 0


# --- 11. bounded memory --------------------------------------------------------------------------


@pytest.mark.usefixtures("private_tmp")
def test_the_on_disk_sort_gives_the_in_memory_order_and_cleans_up(
    tmp_path: Path, rules: Rules
) -> None:
    events = history(seed=24, leads=4600, days=7)
    assert 18_000 < len(events) < 24_000
    # Two files, lines shuffled, so that the sort and its tie-breaks (file, then line) do work.
    shuffled = events[:]
    random.Random(5).shuffle(shuffled)
    half = len(shuffled) // 2
    files = [tmp_path / "one.jsonl", tmp_path / "two.jsonl.gz"]
    write_jsonl(shuffled[:half], files[0])
    write_jsonl(shuffled[half:], files[1])
    rejected: list[object] = []

    with sorted_events(files, rules, rejected.append, now=WALL, skew_s=SKEW_S) as in_memory:
        count = in_memory.count
        expected = [event.to_json() for event in in_memory]
    assert leftovers() == []

    with sorted_events(
        files, rules, rejected.append, chunk=1000, now=WALL, skew_s=SKEW_S
    ) as chunked:
        # While the merge is pending the full runs are on disk.
        [directory] = leftovers()
        spilled = len(list((Path(tempfile.gettempdir()) / directory).iterdir()))
        assert spilled == len(events) // 1000
        merged = [event.to_json() for event in chunked]
        chunked_count = chunked.count

    assert count == chunked_count == len(events)
    assert rejected == []
    assert merged == expected
    assert leftovers() == []
    # The generator writes UTC times with one offset: as text they sort like instants.
    times = [e["occurred_at"] for e in expected]
    assert times == sorted(times)

    # Abandoned half-way, closing still removes its files.
    with sorted_events(
        files, rules, rejected.append, chunk=1000, now=WALL, skew_s=SKEW_S
    ) as abandoned:
        assert next(iter(abandoned)).to_json() == expected[0]
    assert leftovers() == []


def test_the_simulation_keeps_recalls_in_step_with_phones(rules: Rules, tmp_path: Path) -> None:
    write_jsonl(history(seed=25, leads=4600, days=7), tmp_path / "h.jsonl")
    events = sorted_events([tmp_path / "h.jsonl"], rules, lambda _: None, now=WALL, skew_s=SKEW_S)
    simulation = Simulation(rules)
    largest = 0
    taken = 0
    for event in events:
        simulation.take(event)
        taken += 1
        largest = max(largest, simulation.waiting)
        assert simulation.waiting <= 2 * len(simulation.phones) + 10
    assert taken > 18_000
    assert largest <= 2 * len(simulation.phones)
    # At the end of time every recall still current fires; the queue empties.
    assert finish(simulation, START + timedelta(days=60)) == 0
    assert simulation.waiting == 0
    assert simulation.summary.fired > 0


# A replay in a child process that reports its own peak RSS (KiB): the parent's
# RUSAGE_CHILDREN would include every earlier child of the test session.
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.write(done.stderr.decode())
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stdout.write(done.stdout.decode())
"""


def _write_weeks(path: Path, weeks: int, leads: int) -> int:
    """``weeks`` consecutive weeks of calls to the same leads and phones (ids do not collide)."""
    return write_jsonl(
        itertools.chain.from_iterable(
            iter_generate(seed=n + 1, leads=leads, start=START + timedelta(days=7 * n), days=7)
            for n in range(weeks)
        ),
        path,
    )


def test_replay_memory_does_not_grow_with_the_number_of_events(tmp_path: Path) -> None:
    """Peak RSS of ``recall replay --dry-run`` on ~50,000 and ~200,000 events, above a replay of
    one event (the interpreter and the modules a dry replay imports).

    The big input is four weeks of calls to the small one's leads and phones: replay keeps state
    per phone (DESIGN.md section 4), so four times the events must not cost four times the memory.
    """
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small_count = _write_weeks(small, 1, leads=11_500)
    big_count = _write_weeks(big, 4, leads=11_500)
    assert 45_000 < small_count < 55_000
    assert big_count > 3.8 * small_count
    now = (START + timedelta(days=40)).isoformat()
    env = {"PATH": "/usr/bin:/bin", "RECALL_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}

    def start(path: Path) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "worker", "replay", str(path), "--dry-run", "--now", now]
        return subprocess.Popen(
            [sys.executable, "-c", _MEASURE, *command, "--json"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    one = write_jsonl(itertools.islice(iter_generate(seed=1, leads=1, start=START, days=1), 1),
                      tmp_path / "one.jsonl")  # fmt: skip
    started = time.monotonic()
    runs = [start(small), start(big), start(tmp_path / "one.jsonl")]  # the measures are per child
    peaks = []
    for run, count in zip(runs, (small_count, big_count, one), strict=True):
        out, err = run.communicate(timeout=120)
        head, _, body = out.decode().partition("\n")
        code, peak = (int(part) for part in head.split())
        assert (run.returncode, code) == (0, 0), err.decode()
        assert orjson.loads(body)["summary"]["events"] == count
        peaks.append(peak)
    elapsed = time.monotonic() - started

    # What the events cost above the interpreter: linear growth would give about 4 here; the
    # phones' state and one sorted chunk give about 2.3 (27 MB above a 28 MB interpreter at
    # 50,000 events, 62 MB at 200,000). Three is what the earlier bound, 1.6 times the whole
    # process, allowed when a dry replay still imported SQLAlchemy (a 67 MB interpreter).
    base = peaks[2]
    ratio = (peaks[1] - base) / (peaks[0] - base)
    assert ratio < 3.0, (peaks, ratio, elapsed)
    assert list(tmp_path.glob("recall-replay-*")) == []


@pytest.mark.usefixtures("private_tmp")
def test_many_runs_are_merged_in_passes(
    tmp_path: Path, rules: Rules, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More runs than files it may hold open at once: merged in passes, same order, no leftovers."""
    events = history(seed=31, leads=300, days=3)
    random.Random(2).shuffle(events)
    path = tmp_path / "h.jsonl"
    write_jsonl(events, path)
    with sorted_events([path], rules, lambda _: None, now=WALL, skew_s=SKEW_S) as in_memory:
        expected = [event.event_id for event in in_memory]
    monkeypatch.setattr("worker.replay.sorting.MAX_OPEN_RUNS", 3)
    with sorted_events([path], rules, lambda _: None, chunk=50, now=WALL, skew_s=SKEW_S) as chunked:
        assert len(events) // 50 > 9  # at least three passes of three
        merged = [event.event_id for event in chunked]
    assert merged == expected
    assert leftovers() == []


@pytest.mark.usefixtures("private_tmp")
def test_a_spilled_run_gives_back_each_event_as_it_was_read(rules: Rules, tmp_path: Path) -> None:
    """Extra fields, microseconds, callbacks and every UTC offset survive a spill, and an offset
    with seconds (Python reads one; msgspec writes offsets to the minute) too."""
    base = {"plan_id": "default", "lead_id": "L1", "sip_code": 486}
    lines = [
        {**base, "event_id": "a", "phone_id": "p1", "occurred_at": "2026-03-02T09:00:00Z"},
        {**base, "event_id": "b", "phone_id": "p2", "occurred_at": "2026-03-02T10:00:00.25-03:30",
         "crm_ref": "X-1", "tags": ["vip", 2]},
        {**base, "event_id": "c", "phone_id": "p3", "occurred_at": "2026-03-02T15:45:00+05:45",
         "outcome_code": "CALLBACK", "callback_at": "2026-03-03T09:00:00+01:00",
         "callback_agent": "agent-7", "retry_after_s": 30, "timezone": "Asia/Kathmandu"},
        {**base, "event_id": "d", "phone_id": "p4", "occurred_at": "2026-03-02T11:00:00+00:00"},
    ]  # fmt: skip
    odd = {**base, "event_id": "e", "phone_id": "p5", "occurred_at": "2026-03-02T12:00:00+00:01:15"}
    # With runs of two, the first two runs are spilled and the last event merged from memory.
    for batch, text_runs in ((lines, 0), ([odd, *lines], 1)):
        path = write_lines(tmp_path / "spill.jsonl", batch)
        expected = {raw["event_id"]: parse_event(raw) for raw in batch}
        with sorted_events([path], rules, lambda _: None, chunk=2, now=WALL, skew_s=SKEW_S) as run:
            [directory] = leftovers()
            names = [p.name for p in (Path(tempfile.gettempdir()) / directory).iterdir()]
            got = {event.event_id: event for event in run}
        # Runs of whole-minute offsets are msgspec's JSON; the run with the odd offset text rows.
        assert len(names) == 2
        assert sum(name.endswith(".rows.jsonl") for name in names) == text_runs
        assert got == expected
        for event_id, event in got.items():
            assert event.to_json() == expected[event_id].to_json()
            assert event.occurred_at.utcoffset() == expected[event_id].occurred_at.utcoffset()
            assert type(event.extra) is type(expected[event_id].extra)  # read-only, as read
        assert dict(got["b"].extra) == {"crm_ref": "X-1", "tags": ["vip", 2]}


# --- 12. progress on a terminal ------------------------------------------------------------------


def test_the_progress_lines_say_what_is_read_then_what_is_left() -> None:
    assert reading_line(1_234_567, 2.0) == "reading 1,234,567 lines  617,284 lines/s"
    assert reading_line(0, 0.0) == "reading 0 lines  0 lines/s"
    assert (
        replay_line(25_000, 100_000, 5.0)
        == "replayed 25,000/100,000 (25%)  5,000 events/s  15s left"
    )
    assert replay_line(1_000, 200_000, 10.0).endswith("100 events/s  33m 10s left")
    assert replay_line(1_000, 10_000_000, 10.0).endswith("27h 46m left")
    assert replay_line(0, 10, 1.0) == "replayed 0/10 (0%)  0 events/s  ? left"
    assert replay_line(10, 10, 1.0).endswith("(100%)  10 events/s  0s left")


def _stderr_on_a_terminal(command: list[str]) -> str:
    """What ``command`` writes to stderr when that is a terminal (a pseudo-terminal here)."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, cwd=REPO)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65_536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, seen
    return seen.decode()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_replay_on_a_terminal_shows_reading_then_the_time_left(tmp_path: Path, jobs: str) -> None:
    # Large enough to see updates (a line every 0.5 s); however quick the reading, its line shows
    # once, with every line read, before the replaying starts.
    path = tmp_path / "h.jsonl"
    write_jsonl(itertools.islice(iter_generate(seed=40, leads=30_000, start=START, days=3),
                                 100_000), path)  # fmt: skip

    shown = _stderr_on_a_terminal(
        [sys.executable, "-m", "worker", "replay", str(path), "--dry-run", "--now", NOW,
         "--jobs", jobs]
    )  # fmt: skip

    updates = [line.strip() for line in shown.split("\r") if line.strip()]
    assert updates, shown
    assert re.fullmatch(r"reading [\d,]+ lines  [\d,]+ lines/s", updates[0]), updates
    replaying = [line for line in updates if line.startswith("replayed")]
    assert replaying, updates
    for line in replaying:
        assert re.fullmatch(
            r"replayed [\d,]+/100,000 \(\d+%\)  [\d,]+ events/s  (\d+[hms] ?)+(\d+[ms])? left", line
        ), line
    assert updates.index(replaying[0]) > 0


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_quick_replay_on_a_terminal_still_shows_the_lines_read(tmp_path: Path, jobs: str) -> None:
    path = tmp_path / "h.jsonl"
    generated = iter_generate(seed=41, leads=600, start=START, days=1)
    write_jsonl(itertools.islice(generated, 1_234), path)

    shown = _stderr_on_a_terminal(
        [sys.executable, "-m", "worker", "replay", str(path), "--dry-run", "--now", NOW,
         "--jobs", jobs]
    )  # fmt: skip

    updates = [line.strip() for line in shown.split("\r") if line.strip()]
    assert re.fullmatch(r"reading 1,234 lines  [\d,]+ lines/s", updates[0]), updates


# --- agent callbacks -----------------------------------------------------------------------------

# On plan "flat" (UTC, always open): a personal callback booked at 10:00 for 15:30; a busy call at
# 11:00 before it is due keeps it (callback_pending); another phone's callback without a time
# falls back to a day later; the callback fires at 15:30 before the 16:00 busy call, which is
# then decided as usual.
CALLBACK_STORY = [
    ev("k1", "KP", t("10:00"), sip_code=200, outcome_code="CALLBACK", callback_at=t("15:30"),
       callback_agent="agent-7"),
    ev("k2", "KP", t("11:00")),
    ev("k3", "KP", t("16:00")),
    ev("m1", "MP", t("10:00"), sip_code=200, outcome_code="CALLBACK"),
    ev("n1", "NP", t("10:00"), sip_code=200, outcome_code="CALLBACK", callback_at=t("18:00"),
       callback_agent="agent-9"),
    ev("n2", "NP", t("12:00"), outcome_code="SYSANSMACH", sip_code=200),
]  # fmt: skip
CALLBACK_NOW = t("17:00")


def _check_callback_story(decided: dict[str, dict[str, Any]]) -> None:
    kinds = {key: (d["action"], d["reason"], d["due_at"]) for key, d in decided.items()}
    assert kinds == {
        "k1": ("recall", "callback", t("15:30")),
        "k2": ("suppress", "callback_pending", None),
        "k3": ("recall", "sip_recall", t("16:15")),
        "m1": ("recall", "user_recall", t("10:00", day=15)),
        "n1": ("recall", "callback", t("18:00")),
        "n2": ("suppress", "callback_pending", None),
    }
    assert decided["m1"]["warnings"] == ["callback_at_missing"]
    assert "replaces" not in decided["k3"]["explanation"]  # the callback fired at 15:30 first


def test_callbacks_replay_dry_and_applied_alike(
    tmp_path: Path, rules_file: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_database(monkeypatch, database_url)
    path = write_lines(tmp_path / "k.jsonl", CALLBACK_STORY)
    common = ("--rules", rules_file, "--now", CALLBACK_NOW)

    dry = replay_json(path, "--dry-run", *common, "--output", tmp_path / "dry.jsonl")
    applied = replay_json(path, *common, "--output", tmp_path / "applied.jsonl")

    assert (tmp_path / "applied.jsonl").read_bytes() == (tmp_path / "dry.jsonl").read_bytes()
    assert applied["summary"] == dry["summary"]
    assert dry["summary"]["reasons"]["callback_pending"] == 2
    _check_callback_story({d["event_id"]: d for d in read_jsonl(tmp_path / "dry.jsonl")})
    # k1 fired at 15:30, k3 (16:15) too; n1's personal callback is still pending, kept by n2.
    kp = json_of(recall("phones", "show", "KP", "--json"))
    assert (kp["eligible"], kp["eligible_at"]) == (True, t("16:15"))
    np_ = json_of(recall("phones", "show", "NP", "--json"))
    assert np_["pending_recall"] == {
        "due_at": t("18:00"),
        "source": "user_outcome",
        "rule": "outcome:CALLBACK",
        "reason": "callback",
        "agent": "agent-9",
    }
    assert np_["last_decision"]["reason"] == "callback_pending"
    states = recall_rows(database_url)
    assert {key: states[key][0] for key in ("k1", "k3", "m1", "n1")} == {
        "k1": "fired", "k3": "fired", "m1": "pending", "n1": "pending",
    }  # fmt: skip


def test_callback_columns_in_csv_and_through_the_on_disk_sort(
    tmp_path: Path, rules: Rules, rules_file: Path
) -> None:
    columns = [*CSV_HEADER.split(","), "outcome_code", "callback_at", "callback_agent"]
    path = tmp_path / "k.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(CALLBACK_STORY)
    out = tmp_path / "csv.jsonl"
    replay_json(path, "--dry-run", "--rules", rules_file, "--now", CALLBACK_NOW, "--output", out)
    _check_callback_story({d["event_id"]: d for d in read_jsonl(out)})

    # A spilled run keeps the callback fields.
    jsonl = write_lines(tmp_path / "k.jsonl", CALLBACK_STORY)
    with sorted_events([jsonl], rules, lambda _: None, chunk=2, now=WALL, skew_s=SKEW_S) as spilled:
        merged = {event.event_id: event for event in spilled}
    assert merged["k1"].callback_at == datetime.fromisoformat(t("15:30"))
    assert (merged["k1"].callback_agent, merged["m1"].callback_at) == ("agent-7", None)
    assert merged["n1"].to_json() == parse_event(CALLBACK_STORY[4]).to_json()
