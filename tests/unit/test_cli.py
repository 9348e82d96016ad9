"""Tests for the ``recall`` command line (DESIGN.md section 7) through click's CliRunner."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner, Result

from tests.helpers import DECISION_KEYS, json_of, one_line_error, reset_process_state
from tests.unit.test_engine import DST_DECISIONS, sunday_rules
from worker.cli import main
from worker.domain.events import event_from_csv_row, parse_event
from worker.domain.rules import DEFAULT_RULES_PATH, Rules, load_rules
from worker.replay.sources import iter_records

# Monday 2026-03-30 10:00 BST (09:00 UTC), inside the default plan's calling hours.
EVENT: dict[str, Any] = {
    "event_id": "e1",
    "plan_id": "default",
    "lead_id": "L1",
    "phone_id": "L1-P1",
    "sip_code": 486,
    "occurred_at": "2026-03-30T10:00:00+01:00",
}
NOW = "2026-03-30T09:00:00+00:00"
OPERATOR_RULES = "[[sip_codes]]\ncode = 486\nrecall_after = { minutes = 45 }\n"


@pytest.fixture(autouse=True)
def _no_rules_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECALL_RULES", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(main, list(args), prog_name="recall", **kwargs)


def event_json(**changes: Any) -> str:
    return orjson.dumps(EVENT | changes).decode()


@pytest.fixture
def event_file(tmp_path: Path) -> Path:
    path = tmp_path / "event.json"
    path.write_text(event_json(), encoding="utf-8")
    return path


@pytest.fixture
def operator_rules(tmp_path: Path) -> Path:
    path = tmp_path / "operator.toml"
    path.write_text(OPERATOR_RULES, encoding="utf-8")
    return path


@pytest.fixture
def broken_rules(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('[[sip_codes]]\ncode = 486\nrecall = "yes"\n', encoding="utf-8")
    return path


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    assert result.stderr == ""


def same_rules(a: Rules, b: Rules) -> bool:
    return (a.default_timezone, a.sip_codes, a.sip_classes, a.outcomes, a.plans) == (
        b.default_timezone,
        b.sip_codes,
        b.sip_classes,
        b.outcomes,
        b.plans,
    )


# --- help -----------------------------------------------------------------------------------


def test_top_level_help_lists_commands(runner: CliRunner) -> None:
    result = run(runner, "--help")
    assert_ok(result)
    assert result.stdout.startswith("Usage: recall [OPTIONS] COMMAND")
    for command in ("decide", "rules", "sample"):
        assert command in result.stdout
    assert "RECALL_RULES" in result.stdout


def test_short_help_option(runner: CliRunner) -> None:
    result = run(runner, "-h")
    assert_ok(result)
    assert "Usage: recall" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ("decide",), ("[FILE|-]", "--now", "--rules", "--json", "RECALL_RULES"), id="decide"
        ),
        pytest.param(("rules",), ("check", "show", "export", "history", "diff"), id="rules"),
        pytest.param(("rules", "check"), ("--rules", "--json"), id="rules-check"),
        pytest.param(("rules", "show"), ("--rules", "--json"), id="rules-show"),
        pytest.param(("rules", "export"), ("--rules", "--output"), id="rules-export"),
        pytest.param(("rules", "history"), ("--json", "newest first"), id="rules-history"),
        pytest.param(("rules", "diff"), ("OLD NEW", "--json", "prefix"), id="rules-diff"),
        pytest.param(
            ("sample",),
            ("--output", "--leads", "--days", "--seed", "--start", "--callbacks"),
            id="sample",
        ),
    ],
)
def test_command_help(runner: CliRunner, args: tuple[str, ...], expected: tuple[str, ...]) -> None:
    result = run(runner, *args, "--help")
    assert_ok(result)
    assert result.stdout.startswith(f"Usage: recall {' '.join(args)}")
    for part in expected:
        assert part in result.stdout, part


@pytest.mark.parametrize("args", [(), ("rules",), ("phones",), ("dead-letters",), ("db",)])
def test_a_group_alone_prints_its_help(runner: CliRunner, args: tuple[str, ...]) -> None:
    # Regression (issue 12 #18): the help came behind "error:", with exit 2.
    result = run(runner, *args)
    assert_ok(result)
    assert result.stdout == run(runner, *args, "--help").stdout
    assert result.stdout.startswith(f"Usage: {' '.join(('recall', *args))} [OPTIONS] COMMAND")
    assert result.stderr == ""


def test_version(runner: CliRunner) -> None:
    result = run(runner, "--version")
    assert_ok(result)
    assert result.stdout.startswith("recall, version ")


# --- recall decide --------------------------------------------------------------------------


def test_decide_json_contract(runner: CliRunner, event_file: Path) -> None:
    data = json_of(run(runner, "decide", str(event_file), "--json", "--now", NOW))
    assert set(data) == DECISION_KEYS
    assert data == {
        "event_id": "e1",
        "phone_id": "L1-P1",
        "action": "recall",
        "due_at": "2026-03-30T09:15:00+00:00",
        "source": "sip_code",
        "rule": "sip:486",
        "reason": "sip_recall",
        "adjustments": [],
        "warnings": [],
        "explanation": data["explanation"],
        "rules_version": load_rules().version,
    }
    assert list(data)[-1] == "rules_version"
    assert "486" in data["explanation"]


def test_decide_json_moves_into_calling_hours(runner: CliRunner) -> None:
    # Sunday 29 March 2026 (the day UK clocks go forward): the default plan is closed on
    # Sundays, so 486's recall moves to Monday 08:00 BST = 07:00 UTC.
    event = event_json(occurred_at="2026-03-29T12:00:00+01:00")
    now = "2026-03-29T11:00:00+00:00"
    data = json_of(run(runner, "decide", "-", "--json", "--now", now, input=event))
    assert data["action"] == "recall"
    assert data["due_at"] == "2026-03-30T07:00:00+00:00"
    assert data["adjustments"] == ["calling_hours"]


def test_decide_json_retry_after_and_outcome(runner: CliRunner) -> None:
    event = event_json(retry_after_s=3600, outcome_code="NOSUCH")
    data = json_of(run(runner, "decide", "--json", "--now", NOW, input=event))
    assert data["due_at"] == "2026-03-30T10:00:00+00:00"
    assert data["adjustments"] == ["retry_after"]
    assert data["warnings"] == ["unknown_outcome:NOSUCH"]


@pytest.mark.parametrize(
    ("changes", "reason", "rule"),
    [
        pytest.param({"sip_code": 404}, "sip_no_recall", "sip:404", id="sip-final"),
        pytest.param({"outcome_code": "DNC"}, "user_final", "outcome:DNC", id="user-final"),
        pytest.param(
            {"outcome_code": "SYSOI"}, "system_outcome_final", "outcome:SYSOI", id="sysoi"
        ),
        pytest.param({"plan_id": "manual"}, "plan_can_recall_off", "plan:manual", id="manual-plan"),
        pytest.param({"sip_code": 699}, "sip_no_recall", "sip:6xx", id="6xx-fallback"),
    ],
)
def test_decide_json_suppress(
    runner: CliRunner, changes: dict[str, Any], reason: str, rule: str
) -> None:
    event = event_json(**changes)
    data = json_of(run(runner, "decide", "--json", "--now", NOW, input=event))
    assert data["action"] == "suppress"
    assert data["due_at"] is None
    assert (data["reason"], data["rule"]) == (reason, rule)


def test_decide_json_no_failure(runner: CliRunner) -> None:
    data = json_of(run(runner, "decide", "--json", "--now", NOW, input=event_json(sip_code=200)))
    assert (data["action"], data["reason"], data["due_at"]) == ("suppress", "no_failure", None)


def test_decide_stdin_dash_equals_file(runner: CliRunner, event_file: Path) -> None:
    from_file = run(runner, "decide", str(event_file), "--json", "--now", NOW)
    from_stdin = run(runner, "decide", "-", "--json", "--now", NOW, input=event_file.read_bytes())
    default_stdin = run(runner, "decide", "--json", "--now", NOW, input=event_file.read_text())
    assert json_of(from_file) == json_of(from_stdin) == json_of(default_stdin)


def test_decide_human_output(runner: CliRunner, event_file: Path) -> None:
    result = run(runner, "decide", str(event_file), "--now", NOW)
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "action    recall at 2026-03-30T09:15:00+00:00 (Mon 2026-03-30 10:15 BST)"
    assert lines[1] == "rule      sip:486 (source sip_code, reason sip_recall)"
    assert lines[-2] == f"rules     version {load_rules().version}"
    assert lines[-1].startswith("why       ")


def test_decide_human_output_for_suppress(runner: CliRunner) -> None:
    result = run(runner, "decide", "--now", NOW, input=event_json(sip_code=404))
    assert_ok(result)
    assert result.stdout.splitlines()[0] == "action    suppress"


def test_decide_now_already_due(runner: CliRunner, event_file: Path) -> None:
    # decided two hours after the call: the 15-minute recall is already due, so it is due now
    later = "2026-03-30T11:00:00+00:00"
    data = json_of(run(runner, "decide", str(event_file), "--json", "--now", later))
    assert data["due_at"] == later


def test_decide_now_with_other_offset(runner: CliRunner, event_file: Path) -> None:
    later = "2026-03-30T13:00:00+02:00"
    data = json_of(run(runner, "decide", str(event_file), "--json", "--now", later))
    assert data["due_at"] == "2026-03-30T11:00:00+00:00"


def test_decide_without_now_decides_as_of_the_event(runner: CliRunner, event_file: Path) -> None:
    # DESIGN.md section 7: as of the event's own occurred_at, whenever it runs: the same answer
    # as --now at that instant, never "already due when decided".
    data = json_of(run(runner, "decide", str(event_file), "--json"))
    assert data["action"] == "recall"
    assert data["due_at"] is not None
    occurred = orjson.loads(event_file.read_bytes())["occurred_at"]
    at_its_time = json_of(run(runner, "decide", str(event_file), "--json", "--now", occurred))
    assert data == at_its_time
    assert "already due" not in data["explanation"]


def test_decide_with_rules_option(
    runner: CliRunner, event_file: Path, operator_rules: Path
) -> None:
    result = run(
        runner, "decide", str(event_file), "--json", "--now", NOW, "--rules", str(operator_rules)
    )
    assert json_of(result)["due_at"] == "2026-03-30T09:45:00+00:00"


def test_decide_with_recall_rules_env(
    runner: CliRunner, event_file: Path, operator_rules: Path
) -> None:
    env = {"RECALL_RULES": str(operator_rules)}
    result = run(runner, "decide", str(event_file), "--json", "--now", NOW, env=env)
    assert json_of(result)["due_at"] == "2026-03-30T09:45:00+00:00"


def test_rules_option_wins_over_env(
    runner: CliRunner, event_file: Path, operator_rules: Path, broken_rules: Path
) -> None:
    env = {"RECALL_RULES": str(broken_rules)}
    args = ("decide", str(event_file), "--json", "--now", NOW, "--rules", str(operator_rules))
    assert json_of(run(runner, *args, env=env))["due_at"] == "2026-03-30T09:45:00+00:00"


@pytest.mark.parametrize(
    ("payload", "parts"),
    [
        pytest.param("{", ("invalid event", "event: not valid JSON"), id="not-json"),
        pytest.param("", ("invalid event",), id="empty"),
        pytest.param("[]", ("invalid event", "event: must be a JSON object"), id="array"),
        pytest.param(event_json(sip_code="486"), ("invalid event", "sip_code: "), id="sip-string"),
        pytest.param(event_json(occurred_at="2026-03-30T10:00:00"), ("occurred_at: ",), id="naive"),
        pytest.param(
            orjson.dumps({k: v for k, v in EVENT.items() if k != "phone_id"}).decode(),
            ("phone_id: required",),
            id="missing-phone",
        ),
        pytest.param(event_json(timezone="Mars/Olympus"), ("timezone: ",), id="bad-zone"),
        pytest.param(
            event_json(outcome_code="CALLBACK", callback_at="2026-03-31T15:30:00"),
            ("invalid event", "callback_at: no UTC offset"),
            id="naive-callback-at",
        ),
    ],
)
def test_decide_invalid_event(runner: CliRunner, payload: str, parts: tuple[str, ...]) -> None:
    one_line_error(run(runner, "decide", "--json", "--now", NOW, input=payload), *parts)


def test_decide_invalid_event_from_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(event_json(sip_code=700), encoding="utf-8")
    one_line_error(run(runner, "decide", str(path)), "invalid event", "sip_code: ")


def test_decide_unknown_plan(runner: CliRunner) -> None:
    result = run(runner, "decide", "--json", "--now", NOW, input=event_json(plan_id="nope"))
    one_line_error(result, "unknown_plan", "nope")


def test_decide_plan_from_operator_rules(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "plans.toml"
    rules.write_text('[[plans]]\nid = "nope"\n', encoding="utf-8")
    args = ("decide", "--json", "--now", NOW, "--rules", str(rules))
    data = json_of(run(runner, *args, input=event_json(plan_id="nope")))
    assert data["due_at"] == "2026-03-30T09:15:00+00:00"


def test_decide_broken_rules(runner: CliRunner, event_file: Path, broken_rules: Path) -> None:
    result = run(runner, "decide", str(event_file), "--rules", str(broken_rules))
    one_line_error(result, str(broken_rules), "sip_codes[0] (code 486)", "recall")


def test_decide_broken_rules_from_env(
    runner: CliRunner, event_file: Path, broken_rules: Path
) -> None:
    result = run(runner, "decide", str(event_file), env={"RECALL_RULES": str(broken_rules)})
    one_line_error(result, str(broken_rules))


def test_decide_missing_rules_file(runner: CliRunner, event_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run(runner, "decide", str(event_file), "--rules", str(missing))
    one_line_error(result, str(missing), "no such rules file")


@pytest.mark.parametrize(
    ("now", "part"),
    [
        pytest.param("yesterday", "not an ISO-8601", id="garbage"),
        pytest.param("2026-03-30T09:00:00", "no UTC offset", id="no-offset"),
        pytest.param("2026-03-30", "no UTC offset", id="date-only"),
        pytest.param("", "not an ISO-8601", id="empty"),
    ],
)
def test_decide_bad_now(runner: CliRunner, event_file: Path, now: str, part: str) -> None:
    result = run(runner, "decide", str(event_file), "--now", now)
    one_line_error(result, "--now", part)


@pytest.mark.parametrize(
    ("occurred_at", "now"),
    [
        pytest.param("9999-12-31T23:55:00+00:00", NOW, id="recall-after-year-9999"),
        pytest.param("0001-01-01T00:10:00+01:00", NOW, id="before-year-1-in-utc"),
        pytest.param("2026-03-30T10:00:00+01:00", "9999-12-31T23:59:00+00:00", id="now-year-9999"),
    ],
)
def test_decide_extreme_timestamps_fail_cleanly(
    runner: CliRunner, occurred_at: str, now: str
) -> None:
    # Both timestamps are valid ISO-8601 with an offset, so they pass validation, but the
    # date arithmetic leaves datetime's range. Bad input must still give exit 1 with a
    # one-line "error:" and no traceback (DESIGN.md section 7), not an OverflowError.
    result = run(
        runner, "decide", "--json", "--now", now, input=event_json(occurred_at=occurred_at)
    )
    one_line_error(result)


def test_decide_refuses_an_event_ahead_of_its_clock(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hardening #2: judged against --now (without it, the event is decided as of its own time).
    ahead = event_json(occurred_at="2026-03-30T09:05:01+00:00")
    line = one_line_error(run(runner, "decide", "--json", "--now", NOW, input=ahead))
    assert line == (
        "error: invalid_event: occurred_at: 2026-03-30T09:05:01+00:00 is 301 s ahead of the clock"
        " (2026-03-30T09:00:00+00:00); the limit is RECALL_CLOCK_SKEW_S=300 s"
    )
    within = event_json(occurred_at="2026-03-30T09:05:00+00:00")
    assert json_of(run(runner, "decide", "--json", "--now", NOW, input=within))["action"] == (
        "recall"
    )
    far = event_json(occurred_at="2099-06-01T10:00:00Z")
    one_line_error(
        run(runner, "decide", "--now", NOW, input=far), "invalid_event: occurred_at: 2099-06-01"
    )
    # Without --now an event is decided as of its own time: never ahead of that clock.
    assert json_of(run(runner, "decide", "--json", input=far))["action"] == "recall"
    monkeypatch.setenv("RECALL_CLOCK_SKEW_S", "3600")
    reset_process_state()
    try:
        wider = run(runner, "decide", "--json", "--now", NOW, input=ahead)
        assert json_of(wider)["action"] == "recall"
    finally:
        monkeypatch.delenv("RECALL_CLOCK_SKEW_S")
        reset_process_state()


@pytest.mark.parametrize(("zone", "window", "occurred_at", "due_at", "shown"), DST_DECISIONS)
def test_decide_calling_hours_on_dst_days(
    runner: CliRunner,
    tmp_path: Path,
    zone: str,
    window: str,
    occurred_at: str,
    due_at: str,
    shown: str,
) -> None:
    # Hardening #5.
    rules = tmp_path / "rules.toml"
    rules.write_text(sunday_rules(zone, window), encoding="utf-8")
    event = event_json(plan_id="p", occurred_at=occurred_at)
    args = ("decide", "--rules", str(rules), "--now", occurred_at)
    data = json_of(run(runner, *args, "--json", input=event))
    assert (data["due_at"], data["adjustments"]) == (due_at, ["calling_hours"])
    text = run(runner, *args, input=event)
    assert text.exit_code == 0, text.output
    assert f"action    recall at {due_at} ({shown})" in text.stdout


def test_decide_missing_event_file_is_an_error(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "decide", str(tmp_path / "absent.json"))
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "absent.json" in result.stderr
    assert "Traceback" not in result.output


# --- recall rules ---------------------------------------------------------------------------


def test_rules_check_defaults(runner: CliRunner) -> None:
    result = run(runner, "rules", "check")
    assert_ok(result)
    defaults = load_rules()
    assert result.stdout.startswith(f"rules OK ({DEFAULT_RULES_PATH}): ")
    assert f"{len(defaults.sip_codes)} SIP codes" in result.stdout
    assert "default, us_tcpa, eu_sales, manual" in result.stdout
    assert result.stdout.rstrip().endswith(f"; version {defaults.version}")


def test_rules_check_json(runner: CliRunner, operator_rules: Path) -> None:
    result = run(runner, "rules", "check", "--json", "--rules", str(operator_rules))
    data = json_of(result)
    defaults = load_rules()
    assert data == {
        "ok": True,
        "sources": [str(DEFAULT_RULES_PATH), str(operator_rules)],
        "sip_codes": len(defaults.sip_codes),
        "sip_classes": 3,
        "outcomes": len(defaults.outcomes),
        "plans": len(defaults.plans),
        "version": load_rules(operator_rules).version,
    }


def test_rules_check_operator_file(runner: CliRunner, operator_rules: Path) -> None:
    result = run(runner, "rules", "check", "--rules", str(operator_rules))
    assert_ok(result)
    assert str(operator_rules) in result.stdout


def test_rules_check_env(runner: CliRunner, operator_rules: Path) -> None:
    result = run(runner, "rules", "check", env={"RECALL_RULES": str(operator_rules)})
    assert_ok(result)
    assert str(operator_rules) in result.stdout


def test_rules_check_broken(runner: CliRunner, broken_rules: Path) -> None:
    result = run(runner, "rules", "check", "--rules", str(broken_rules))
    one_line_error(result, str(broken_rules), "sip_codes[0] (code 486)", "recall")


def test_rules_check_broken_toml(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[[plans]\nid = 1\n", encoding="utf-8")
    one_line_error(run(runner, "rules", "check", "--rules", str(path)), "not valid TOML")


def test_rules_show_text(runner: CliRunner, operator_rules: Path) -> None:
    result = run(runner, "rules", "show", "--rules", str(operator_rules))
    assert_ok(result)
    text = result.stdout
    assert "default timezone: Europe/London" in text
    assert f"version: {load_rules(operator_rules).version}" in text.splitlines()
    assert "SIP codes" in text
    assert "Outcomes" in text
    for plan in ("default", "us_tcpa", "eu_sales", "manual"):
        assert f"Plan {plan}" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("486 "))
    assert "after 45m" in row
    assert "Busy Here" in row


V2_RULES = """
[[outcomes]]
code = "SYSANSMACH"
not_same_day = false

[[outcomes]]
code = "LATER"
kind = "user"
recall = "after"
recall_after = { hours = 1 }
not_same_day = true

[[plans]]
id = "holidays"
max_attempts = [ { count = 3, within = { hours = 24 } }, { count = 2, per = "day" } ]
lead_max_attempts = [ { count = 5, per = "day" } ]
closed_dates = ["2026-12-26", "2026-12-25"]
"""


def test_rules_show_and_export_the_caps_closed_dates_and_not_same_day(
    runner: CliRunner, tmp_path: Path
) -> None:
    operator = tmp_path / "v2.toml"
    operator.write_text(V2_RULES, encoding="utf-8")
    shown = run(runner, "rules", "show", "--rules", str(operator))
    assert_ok(shown)
    lines = shown.stdout.splitlines()
    assert "  max_attempts:   3 attempts in 24h, 2 attempts per day" in lines
    assert "  lead_max_attempts: 5 attempts per day" in lines
    assert "  closed_dates:   2026-12-25, 2026-12-26" in lines
    later = next(line for line in lines if line.strip().startswith("LATER "))
    assert later.endswith("[not same day]")
    machine = next(line for line in lines if line.strip().startswith("SYSANSMACH "))
    assert "[not same day]" not in machine

    exported = run(runner, "rules", "export", "--rules", str(operator))
    assert_ok(exported)
    path = tmp_path / "exported.toml"
    path.write_text(exported.stdout, encoding="utf-8")
    assert same_rules(load_rules(path), load_rules(operator))
    plan = json_of(run(runner, "rules", "show", "--json", "--rules", str(operator)))["plans"]
    holidays = next(row for row in plan if row["id"] == "holidays")
    assert holidays["max_attempts"][1] == {"count": 2, "per": "day"}
    assert holidays["closed_dates"] == ["2026-12-25", "2026-12-26"]


def test_rules_show_json(runner: CliRunner, operator_rules: Path) -> None:
    data = json_of(run(runner, "rules", "show", "--json", "--rules", str(operator_rules)))
    assert data == load_rules(operator_rules).to_toml_data()
    busy = next(row for row in data["sip_codes"] if row["code"] == 486)
    assert busy["recall_after"] == {"minutes": 45}


def test_rules_show_broken(runner: CliRunner, broken_rules: Path) -> None:
    one_line_error(run(runner, "rules", "show", "--rules", str(broken_rules)))
    one_line_error(run(runner, "rules", "show", "--json", "--rules", str(broken_rules)))


@pytest.mark.parametrize("with_operator_file", [False, True], ids=["defaults", "operator"])
def test_rules_export_then_check(
    runner: CliRunner, tmp_path: Path, operator_rules: Path, with_operator_file: bool
) -> None:
    extra = ("--rules", str(operator_rules)) if with_operator_file else ()
    exported = run(runner, "rules", "export", *extra)
    assert_ok(exported)
    assert exported.stdout.startswith("# Effective recall rules")
    path = tmp_path / "exported.toml"
    path.write_text(exported.stdout, encoding="utf-8")
    checked = run(runner, "rules", "check", "--rules", str(path))
    assert_ok(checked)
    assert checked.stdout.startswith("rules OK")
    original = load_rules(operator_rules if with_operator_file else None)
    assert same_rules(load_rules(path), original)


@pytest.mark.parametrize("with_operator_file", [False, True], ids=["defaults", "operator"])
def test_the_rules_version_is_the_sha256_of_the_export(
    runner: CliRunner, operator_rules: Path, with_operator_file: bool
) -> None:
    extra = ("--rules", str(operator_rules)) if with_operator_file else ()
    exported = run(runner, "rules", "export", *extra)
    assert_ok(exported)
    version = hashlib.sha256(exported.stdout_bytes).hexdigest()[:12]
    assert json_of(run(runner, "rules", "check", "--json", *extra))["version"] == version
    assert load_rules(operator_rules if with_operator_file else None).version == version


def test_rules_export_to_file(runner: CliRunner, tmp_path: Path, operator_rules: Path) -> None:
    path = tmp_path / "out.toml"
    result = run(runner, "rules", "export", "-o", str(path), "--rules", str(operator_rules))
    assert_ok(result)
    assert result.stdout == ""
    assert path.read_text(encoding="utf-8").startswith("# Effective recall rules")
    assert same_rules(load_rules(path), load_rules(operator_rules))
    long_form = tmp_path / "out2.toml"
    assert_ok(run(runner, "rules", "export", "--output", str(long_form)))
    assert same_rules(load_rules(long_form), load_rules())


def test_rules_export_broken(runner: CliRunner, tmp_path: Path, broken_rules: Path) -> None:
    path = tmp_path / "never.toml"
    result = run(runner, "rules", "export", "-o", str(path), "--rules", str(broken_rules))
    one_line_error(result, str(broken_rules))
    assert not path.exists()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("/nonexistent/dir/x.toml", "No such file or directory"),
        ("/proc/nope/x.toml", "No such file or directory"),
    ],
)
def test_rules_export_to_a_path_that_cannot_be_written(
    runner: CliRunner, bad: str, reason: str
) -> None:
    one_line_error(run(runner, "rules", "export", "-o", bad), f"-o {bad}: cannot write: {reason}")


def test_rules_export_never_overwrites_the_rules_it_reads(
    runner: CliRunner, tmp_path: Path, operator_rules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(operator_rules)
    for target in (operator_rules, link):
        result = run(runner, "rules", "export", "-o", str(target), "--rules", str(operator_rules))
        one_line_error(result, f"-o {target}: is the --rules file {operator_rules}")
    monkeypatch.setenv("RECALL_RULES", str(operator_rules))
    one_line_error(run(runner, "rules", "export", "-o", str(link)), "is the --rules file")
    assert operator_rules.read_text(encoding="utf-8") == OPERATOR_RULES


# --- recall sample --------------------------------------------------------------------------


def test_sample_jsonl(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    result = run(runner, "sample", "-o", str(path), "--leads", "5", "--days", "2")
    assert_ok(result)
    lines = path.read_bytes().splitlines()
    assert lines
    assert result.stdout == f"wrote {len(lines)} events to {path}\n"
    plans = load_rules().plans
    events = [parse_event(orjson.loads(line)) for line in lines]
    assert len({event.event_id for event in events}) == len(events)
    assert {event.lead_id for event in events} <= {f"L{i}" for i in range(1, 6)}
    assert all(event.plan_id in plans for event in events)
    times = [event.occurred_at for event in events]
    assert times == sorted(times)


def test_sample_csv(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    result = run(runner, "sample", "-o", str(path), "--leads", "5", "--days", "2")
    assert_ok(result)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert result.stdout == f"wrote {len(rows)} events to {path}\n"
    events = [parse_event(event_from_csv_row(row)) for row in rows]
    assert all(event.plan_id in load_rules().plans for event in events)


def test_sample_csv_and_jsonl_hold_the_same_events(runner: CliRunner, tmp_path: Path) -> None:
    jsonl, csv_path = tmp_path / "a.jsonl", tmp_path / "a.csv"
    assert_ok(run(runner, "sample", "-o", str(jsonl), "--leads", "5", "--days", "2"))
    assert_ok(run(runner, "sample", "-o", str(csv_path), "--leads", "5", "--days", "2"))
    from_json = [parse_event(orjson.loads(line)) for line in jsonl.read_bytes().splitlines()]
    with csv_path.open(newline="", encoding="utf-8") as handle:
        from_csv = [parse_event(event_from_csv_row(row)) for row in csv.DictReader(handle)]
    assert from_json == from_csv


def test_sample_with_callbacks_in_csv_and_jsonl(runner: CliRunner, tmp_path: Path) -> None:
    jsonl, csv_path = tmp_path / "a.jsonl", tmp_path / "a.csv"
    sizes = ("--leads", "200", "--days", "3", "--callbacks")
    assert_ok(run(runner, "sample", "-o", str(jsonl), *sizes))
    assert_ok(run(runner, "sample", "-o", str(csv_path), *sizes))
    from_json = [parse_event(orjson.loads(line)) for line in jsonl.read_bytes().splitlines()]
    with csv_path.open(newline="", encoding="utf-8") as handle:
        from_csv = [parse_event(event_from_csv_row(row)) for row in csv.DictReader(handle)]
    assert from_json == from_csv
    assert any(event.callback_at is not None for event in from_json)
    assert any(event.callback_agent is not None for event in from_json)


def test_sample_events_decide(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    assert_ok(run(runner, "sample", "-o", str(path), "--leads", "5", "--days", "2", "--seed", "3"))
    line = path.read_bytes().splitlines()[0]
    data = json_of(run(runner, "decide", "--json", "--now", NOW, input=line))
    assert data["action"] in ("recall", "suppress")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("/nonexistent/dir/x.jsonl", "No such file or directory"),
        ("/proc/nope/x.csv.gz", "No such file or directory"),
    ],
)
def test_sample_to_a_path_that_cannot_be_written(runner: CliRunner, bad: str, reason: str) -> None:
    one_line_error(run(runner, "sample", "-o", bad), f"-o {bad}: cannot write: {reason}")


@pytest.mark.parametrize("name", ["x.jsonl.gz", "x.csv.gz", "x.csv"])
def test_sample_replaces_a_file_whole(runner: CliRunner, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"old")
    assert_ok(run(runner, "sample", "-o", str(path), "--leads", "2", "--days", "1"))
    reread = list(iter_records(path))
    assert reread
    assert all(isinstance(raw, dict) and raw.get("event_id") for _, raw in reread)
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--start", "2026-03-23T00:00:00"), id="naive-start"),
        pytest.param(("--start", "soon"), id="garbage-start"),
    ],
)
def test_sample_bad_start(runner: CliRunner, tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run(runner, "sample", "-o", str(tmp_path / "x.jsonl"), *args)
    one_line_error(result, "--start")


# --- the installed console script -----------------------------------------------------------


def test_installed_console_script_decides(tmp_path: Path) -> None:
    script = shutil.which("recall", path=str(Path(sys.executable).parent)) or shutil.which("recall")
    assert script is not None, "the recall console script is not installed"
    env = {key: value for key, value in os.environ.items() if key != "RECALL_RULES"}
    completed = subprocess.run(
        [script, "decide", "--json", "--now", NOW],
        input=event_json().encode(),
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stderr == b""
    data = orjson.loads(completed.stdout)
    assert set(data) == DECISION_KEYS
    assert data["due_at"] == "2026-03-30T09:15:00+00:00"


# ``main`` as a process: how ``recall`` ran before ``run`` (the reference for ``run``'s ending).
MAIN_ALONE = "import sys; from worker.cli import main; main(prog_name='recall')"


def recall_process(*args: str, cwd: Path, entry: str = "run") -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` (``run``), ``main`` alone, or Python code given as ``entry``,
    with ARGS, as its own process."""
    env = {key: value for key, value in os.environ.items() if key != "RECALL_RULES"}
    root = str(Path(__file__).resolve().parents[2])  # this checkout's worker, wherever run from
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    command = (
        ["-m", "worker"] if entry == "run" else ["-c", MAIN_ALONE if entry == "main" else entry]
    )
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in summary.items() if key not in {"elapsed_s", "events_per_s"}
    }


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_dry_replay_process_ends_at_once_with_what_main_gives(
    runner: CliRunner, tmp_path: Path, jobs: str
) -> None:
    """A dry replay ends with os._exit (worker.ending): its output and status are main's."""
    history = tmp_path / "history.jsonl"
    assert_ok(run(runner, "sample", "-o", str(history), "--leads", "20", "--days", "3"))
    args = ["replay", str(history), "--dry-run", "--now", "2026-03-27T00:00:00Z", "--json"]
    args += ["--jobs", jobs]

    alone = recall_process(*args, "--output", str(tmp_path / "main.jsonl"), cwd=tmp_path,
                           entry="main")  # fmt: skip
    done = recall_process(*args, "--output", str(tmp_path / "run.jsonl"), cwd=tmp_path)

    assert (done.returncode, done.stderr) == (alone.returncode, alone.stderr) == (0, "")
    assert without_timing(orjson.loads(done.stdout)) == without_timing(orjson.loads(alone.stdout))
    assert (tmp_path / "run.jsonl").read_bytes() == (tmp_path / "main.jsonl").read_bytes()
    # Nothing left behind: the output files were renamed into place before the process ended.
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "history.jsonl",
        "main.jsonl",
        "run.jsonl",
    ]


# ``run`` with an object that says when the interpreter's teardown frees it.
RUN_WITH_NOISY = (
    "import sys; from worker.cli import run\n"
    "class Noisy:\n    def __del__(self):\n        print('torn down')\n"
    "kept = Noisy(); sys.argv = ['recall', *sys.argv[1:]]; run()"
)


@pytest.mark.parametrize(
    ("args", "torn_down"),
    [
        pytest.param(("--dry-run",), False, id="dry"),
        pytest.param(("--dry-run", "--jobs", "2"), False, id="dry-jobs"),
        pytest.param(("--dry-run", "--now", "soon"), True, id="failed"),
        pytest.param(("--help",), True, id="help"),
    ],
)
def test_only_a_finished_dry_replay_skips_the_teardown(
    event_file: Path, tmp_path: Path, args: tuple[str, ...], torn_down: bool
) -> None:
    done = recall_process(
        "replay", str(event_file), "--now", NOW, *args, cwd=tmp_path, entry=RUN_WITH_NOISY
    )

    assert ("torn down" in done.stdout.splitlines()) is torn_down, (done.stdout, done.stderr)
    assert done.returncode == (1 if "soon" in args else 0), done.stderr


def test_ending_at_once_runs_the_exit_handlers_but_frees_nothing(tmp_path: Path) -> None:
    probe = (
        "import atexit; from worker import ending\n"
        "class Noisy:\n    def __del__(self):\n        print('freed')\n"
        "atexit.register(print, 'exit handler')\n"
        "ending.hold(Noisy())\n"  # freed: the process was not said to end at once
        "ending.ends_at_once(); ending.hold(Noisy())\n"  # freed: no command said it will finish
        "ending.start_holding(); ending.hold(Noisy()); ending.finished()\n"
        "print('finished', ending.is_finished(), end=' ')\n"
        "ending.exit_at_once(3)"
    )
    done = recall_process(cwd=tmp_path, entry=probe)

    assert (done.returncode, done.stdout, done.stderr) == (
        3,
        "freed\nfreed\nfinished True exit handler\n",
        "",
    )


@pytest.mark.parametrize(
    ("args", "status"),
    [
        pytest.param(("replay",), 2, id="missing-file"),
        pytest.param(("replay", "--jobs", "0", "x.jsonl"), 2, id="bad-jobs"),
        pytest.param(("replay", "missing.jsonl", "--dry-run"), 1, id="command-error"),
        pytest.param(("replay", "--help"), 0, id="help"),
        pytest.param(("--version",), 0, id="version"),
        pytest.param((), 0, id="no-command"),
    ],
)
def test_the_process_exits_as_main_does(tmp_path: Path, args: tuple[str, ...], status: int) -> None:
    """Usage errors (2), command errors (1), help and version: the same through ``run``."""
    alone = recall_process(*args, cwd=tmp_path, entry="main")

    done = recall_process(*args, cwd=tmp_path)

    assert (done.returncode, done.stdout, done.stderr) == (status, alone.stdout, alone.stderr)
    assert alone.returncode == status


def test_the_readme_decide_example_prints_what_the_readme_shows() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```sh\n$ echo '", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    payload, invocation = command.split("' | ", 1)
    assert invocation == "recall decide"

    script = shutil.which("recall", path=str(Path(sys.executable).parent)) or shutil.which("recall")
    assert script is not None, "the recall console script is not installed"
    done = subprocess.run(
        [script, "decide"], input=payload, capture_output=True, text=True, check=False
    )

    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == shown

    # The JSON form shown after it is that decision with --json.
    example = orjson.loads(readme.split(block, 1)[1].split("```json\n", 1)[1].split("```", 1)[0])
    as_json = subprocess.run(
        [script, "decide", "--json"], input=payload, capture_output=True, text=True, check=False
    )
    assert orjson.loads(as_json.stdout) == example
    assert list(example)[-1] == "rules_version"


def test_each_lazy_command_is_listed_with_its_own_help() -> None:
    """The group lists commands from a table, without loading them: the table must not drift."""
    context = click.Context(main)
    for name, (_, shown) in main.lazy_commands.items():
        command = main.get_command(context, name)
        assert command is not None, name
        assert command.get_short_help_str(limit=10**6) == shown, name


def test_decide_help_and_dry_replays_load_neither_sqlalchemy_nor_celery(event_file: Path) -> None:
    probe = (
        "import sys; from worker.cli import main; sys.argv = ['recall', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'celery', 'alembic', 'kombu') if m in sys.modules))"
    )
    dry_replay = ["replay", str(event_file), "--dry-run", "--now", NOW, "--json"]
    for args in (
        ["--help"],
        ["decide", str(event_file)],
        ["rules", "check"],
        ["replay", "--help"],
        [*dry_replay, "--jobs", "1"],
        [*dry_replay, "--jobs", "2"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
        )
        assert done.stdout.splitlines()[-1] == "[]", args
