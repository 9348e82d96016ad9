"""The console's edits of the rules document (worker/console/edits.py): pure, no server.

Each edit's document, written back and loaded as ``recall rules check`` loads a file, gives the
rules the form asked for; a built-in SIP code's code and active flag are refused; a form that
makes no document is one line.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from worker.console.edits import (
    EditError,
    edit_outcome,
    edit_plan,
    edit_sip_code,
    parse_export,
    proposed_text,
)
from worker.domain.rules import Duration, Rules, RulesError, rules_from_text


@pytest.fixture
def document(default_rules: Rules) -> dict[str, Any]:
    return parse_export(default_rules.export_text())


def loaded(document: dict[str, Any]) -> Rules:
    return rules_from_text(proposed_text(document), "rules.toml")


def test_a_sip_codes_recall_time(document: dict[str, Any]) -> None:
    form = {"description": "Busy", "recall": "yes", "days": "1", "hours": "", "minutes": "30"}
    rules = loaded(edit_sip_code(document, "486", form, builtin=True))
    row = rules.sip_codes[486]
    assert (row.description, row.recall, row.recall_after) == (
        "Busy",
        True,
        Duration(days=1, minutes=30),
    )
    assert row.active
    assert row.builtin


def test_no_recall_drops_the_time(document: dict[str, Any]) -> None:
    rules = loaded(edit_sip_code(document, "486", {"recall": "no", "minutes": "5"}, builtin=True))
    assert not rules.sip_codes[486].recall
    assert rules.sip_codes[486].recall_after is None


@pytest.mark.parametrize(
    ("forged", "expected"),
    [
        ({"code": "499"}, "SIP code 486 is built-in (a shipped code)"),
        ({"active": "no"}, "SIP code 486 is built-in (a shipped code)"),
        ({"days": "x"}, "recall time days: must be a whole number of at least 0, got 'x'"),
        ({"recall": "maybe"}, "recall: must be yes or no, got 'maybe'"),
    ],
)
def test_refused_forms(document: dict[str, Any], forged: dict[str, str], expected: str) -> None:
    with pytest.raises(EditError, match="^" + re.escape(expected)):
        edit_sip_code(document, "486", {"recall": "yes", **forged}, builtin=True)


def test_the_same_values_of_a_built_in_codes_locked_fields_pass(document: dict[str, Any]) -> None:
    edited = edit_sip_code(document, "486", {"code": "486", "active": "yes"}, builtin=True)
    assert loaded(edited).sip_codes[486].active


def test_a_new_code_and_a_custom_codes_active_flag(document: dict[str, Any]) -> None:
    new = edit_sip_code(
        document, None, {"code": "499", "recall": "yes", "hours": "2"}, builtin=False
    )
    assert loaded(new).sip_codes[499].recall_after == Duration(hours=2)
    with pytest.raises(EditError, match=r"^code 499: exists already"):
        edit_sip_code(new, None, {"code": "499", "recall": "no"}, builtin=False)
    retired = edit_sip_code(new, "499", {"active": "no"}, builtin=False)
    assert not loaded(retired).sip_codes[499].active
    with pytest.raises(EditError, match=r"^code: a SIP failure code is 400-699"):
        edit_sip_code(document, None, {"code": "200", "recall": "no"}, builtin=False)


def test_an_outcome(document: dict[str, Any]) -> None:
    form = {"kind": "system", "recall": "after", "hours": "3", "not_same_day": "yes"}
    outcome = loaded(edit_outcome(document, "SYSBUSY", form)).outcomes["SYSBUSY"]
    assert (outcome.recall, outcome.recall_after, outcome.not_same_day) == (
        "after",
        Duration(hours=3),
        True,
    )
    with pytest.raises(RulesError, match="'callback' is for user outcomes only"):
        loaded(edit_outcome(document, "SYSBUSY", {"recall": "callback"}))


def test_a_plans_system_recalls(document: dict[str, Any]) -> None:
    form = {
        "can_recall": "no",
        "timezone": "America/New_York",
        "sr_SYSNOANS_hours": "5",
        "calling_hours_on": "yes",
        "ch_mon": "08:00-21:00",
        "max_attempts": '[{ count = 2, per = "day" }]',
        "lead_max_attempts": "",
        "closed_dates": "2026-12-25, 2027-01-01",
        "max_recalls": "4",
    }
    plan = loaded(edit_plan(document, "eu_sales", form)).plans["eu_sales"]
    assert not plan.can_recall
    assert plan.timezone == "America/New_York"
    assert plan.system_recalls["SYSNOANS"] == Duration(hours=5)
    assert plan.calling_hours is not None
    assert plan.calling_hours.describe() == {"mon": "08:00-21:00"}
    assert [str(cap) for cap in plan.max_attempts] == ["2 attempts per day"]
    assert plan.max_recalls == 4
    assert len(plan.closed_dates) == 2
    with pytest.raises(EditError, match=r"^max attempts: not a TOML value"):
        edit_plan(document, "eu_sales", {**form, "max_attempts": "[{ count = "})
