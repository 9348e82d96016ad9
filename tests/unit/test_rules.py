"""Tests for worker.rules: the shipped defaults, merging an operator file, refusals, round trip."""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from datetime import date
from pathlib import Path

import pytest
import tomli_w

from worker.domain.rules import (
    DEFAULT_RULES_PATH,
    EXPORT_HEADER,
    AttemptCap,
    CallingHours,
    Duration,
    Rules,
    RulesError,
    SipRule,
    load_rules,
)

SYSTEM_OUTCOMES = (
    "SYSANSMACH",
    "SYSBUSY",
    "SYSNOANS",
    "SYSDROP",
    "MAXTO",
    "NOCARRIER",
    "NOCPA",
    "SYSOI",
)
# DESIGN.md section 1: the registered codes the shipped table must cover, by name.
NAMED_SIP_CODES = (
    404,
    408,
    410,
    480,
    484,
    486,
    487,
    488,
    500,
    502,
    503,
    504,
    600,
    603,
    604,
    606,
    607,
    608,
)


@pytest.fixture(scope="module")
def defaults() -> Rules:
    return load_rules()


@pytest.fixture
def write_rules(tmp_path: Path):
    """Write an operator rules file and return its path."""

    def write(text: str, name: str = "rules.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


# --- the shipped defaults -------------------------------------------------------------------


def test_defaults_contain_every_sip_row_of_the_file(defaults: Rules) -> None:
    data = tomllib.loads(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    listed = [row["code"] for row in data["sip_codes"]]
    numeric = [code for code in listed if isinstance(code, int)]
    assert len(numeric) > 40
    assert sorted(defaults.sip_codes) == sorted(numeric)
    for code in numeric:
        row = defaults.sip_codes[code]
        assert row.code == code
        assert row.active is True
        assert row.builtin is True
        assert row.description, code
        assert (row.recall_after is not None) == row.recall, code
    assert set(NAMED_SIP_CODES) <= set(defaults.sip_codes)
    assert all(400 <= code <= 699 for code in defaults.sip_codes)


def test_defaults_class_fallbacks(defaults: Rules) -> None:
    assert set(defaults.sip_classes) == {4, 5, 6}
    assert [row.code for row in defaults.sip_classes.values()] == ["4xx", "5xx", "6xx"]
    assert all(row.active and row.builtin for row in defaults.sip_classes.values())
    assert defaults.sip_classes[4].recall is True
    assert defaults.sip_classes[5].recall is True
    assert defaults.sip_classes[6].recall is False
    assert defaults.sip_classes[6].recall_after is None


@pytest.mark.parametrize("code", [404, 410, 484, 603, 604, 607, 608])
def test_defaults_final_codes_do_not_recall(defaults: Rules, code: int) -> None:
    assert defaults.sip_codes[code].recall is False
    assert defaults.sip_codes[code].recall_after is None


def test_defaults_carrier_practice_timings(defaults: Rules) -> None:
    busy = defaults.sip_codes[486].recall_after
    no_answer = defaults.sip_codes[487].recall_after
    assert busy == Duration(minutes=15)
    assert defaults.sip_codes[408].recall_after == no_answer
    later = [defaults.sip_codes[c].recall_after for c in (480, 600, 500, 502, 503, 504)]
    assert all(d is not None for d in later)


def test_defaults_system_outcomes(defaults: Rules) -> None:
    for code in SYSTEM_OUTCOMES:
        assert defaults.outcomes[code].kind == "system", code
    system = {code for code, outcome in defaults.outcomes.items() if outcome.kind == "system"}
    assert system == set(SYSTEM_OUTCOMES)
    assert defaults.outcomes["NOCPA"].recall == "inherit"
    assert defaults.outcomes["SYSOI"].recall == "never"
    assert defaults.outcomes["SYSBUSY"].recall == "after"
    assert defaults.outcomes["SYSBUSY"].recall_after == Duration(minutes=15)
    for outcome in defaults.outcomes.values():
        assert (outcome.recall_after is not None) == (outcome.recall in ("after", "callback"))


def test_shipped_callback_outcome(defaults: Rules) -> None:
    callback = defaults.outcomes["CALLBACK"]
    assert (callback.kind, callback.recall, callback.recall_after) == (
        "user",
        "callback",
        Duration(days=1),
    )


def test_callback_policy_round_trips(write_rules, tmp_path: Path) -> None:
    rules = load_rules(
        write_rules(
            _outcome(
                'code = "APPT"\nkind = "user"\nrecall = "callback"\nrecall_after = { hours = 2 }'
            )
            + _outcome('code = "NOTNOW"\nrecall = "callback"')
        )
    )
    data = rules.to_toml_data()
    rows = {row["code"]: row for row in data["outcomes"]}
    assert rows["APPT"] == {
        "code": "APPT",
        "kind": "user",
        "description": "",
        "recall": "callback",
        "recall_after": {"hours": 2},
        "not_same_day": False,
    }
    # A shipped user outcome made a callback keeps its recall_after as the fallback.
    assert rows["NOTNOW"]["recall"] == "callback"
    assert rows["NOTNOW"]["recall_after"] == {"hours": 4}
    path = tmp_path / "export.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    _assert_same_rules(load_rules(path), rules)


def test_defaults_default_plan(defaults: Rules) -> None:
    assert defaults.default_timezone == "Europe/London"
    plan = defaults.plans["default"]
    assert plan.id == "default"
    assert plan.rule == "plan:default"
    assert plan.can_recall is True
    assert plan.timezone == "Europe/London"
    assert dict(plan.system_recalls) == {
        "SYSNOANS": Duration(hours=2),
        "SYSDROP": Duration(hours=72),
    }
    assert plan.max_attempts == (AttemptCap(3, Duration(hours=24)),)
    assert plan.max_recalls == 10
    assert plan.calling_hours is not None
    assert plan.calling_hours.days[0] == ((8 * 60, 21 * 60),)
    assert plan.calling_hours.days[5] == ((9 * 60, 17 * 60),)
    assert plan.calling_hours.days[6] == ()
    assert defaults.sources == (str(DEFAULT_RULES_PATH),)


def test_rule_objects_are_immutable(defaults: Rules) -> None:
    row = defaults.sip_codes[486]
    plan = defaults.plans["default"]
    outcome = defaults.outcomes["SYSBUSY"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.recall = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.kind = "user"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_recalls = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.default_timezone = "UTC"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.recall_after.minutes = 1  # type: ignore[union-attr,misc]


@pytest.mark.parametrize("mapping", ["sip_codes", "sip_classes", "outcomes", "plans"])
def test_rule_mappings_are_read_only(defaults: Rules, mapping: str) -> None:
    table = getattr(defaults, mapping)
    key = next(iter(table))
    with pytest.raises(TypeError):
        table[key] = None
    with pytest.raises(TypeError):
        del table[key]


def test_plan_system_recalls_is_read_only(defaults: Rules) -> None:
    with pytest.raises(TypeError):
        defaults.plans["default"].system_recalls["SYSBUSY"] = Duration(hours=1)  # type: ignore[index]
    assert isinstance(defaults.plans["default"].max_attempts, tuple)


# --- Rules.sip_rule_for -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(486, 486, id="own-row"),
        pytest.param(404, 404, id="own-row-no-recall"),
        pytest.param(499, "4xx", id="4xx-fallback"),
        pytest.param(599, "5xx", id="5xx-fallback"),
        pytest.param(699, "6xx", id="6xx-fallback"),
        pytest.param(200, None, id="2xx-none"),
        pytest.param(180, None, id="1xx-none"),
        pytest.param(302, None, id="3xx-none"),
    ],
)
def test_sip_rule_for(defaults: Rules, code: int, expected: int | str | None) -> None:
    row = defaults.sip_rule_for(code)
    if expected is None:
        assert row is None
    else:
        assert row is not None
        assert row.code == expected
        assert row.rule == f"sip:{expected}"


def test_sip_rule_for_inactive_row_falls_back_to_class(write_rules) -> None:
    rules = load_rules(write_rules("[[sip_codes]]\ncode = 450\nactive = false\nrecall = false\n"))
    assert rules.sip_codes[450].active is False
    assert rules.sip_rule_for(450) is rules.sip_classes[4]


def test_sip_rule_for_inactive_fallback_gives_none() -> None:
    def row(code: int | str, active: bool) -> SipRule:
        return SipRule(code, "x", active, True, Duration(minutes=1), builtin=False)

    rules = Rules(
        default_timezone="UTC",
        sip_codes={450: row(450, False), 451: row(451, True)},
        sip_classes={4: row("4xx", False)},
        outcomes={},
        plans={},
    )
    assert rules.sip_rule_for(450) is None
    assert rules.sip_rule_for(452) is None
    assert rules.sip_rule_for(451) is rules.sip_codes[451]


# --- merging an operator file -----------------------------------------------------------------


def test_merge_changes_builtin_sip_row(defaults: Rules, write_rules) -> None:
    path = write_rules(
        '[[sip_codes]]\ncode = 486\ndescription = "Engaged"\nrecall_after = { minutes = 5 }\n'
        "\n[[sip_codes]]\ncode = 404\nactive = true\nrecall = true\n"
        "recall_after = { days = 1, hours = 2 }\n"
        "\n[[sip_codes]]\ncode = 480\nrecall = false\n"
    )
    rules = load_rules(path)
    busy = rules.sip_codes[486]
    assert busy.description == "Engaged"
    assert busy.recall is True
    assert busy.recall_after == Duration(minutes=5)
    assert busy.active is True
    assert busy.builtin is True
    assert rules.sip_codes[404].recall is True
    assert rules.sip_codes[404].recall_after == Duration(days=1, hours=2)
    assert rules.sip_codes[404].description == defaults.sip_codes[404].description
    assert rules.sip_codes[480].recall is False
    assert rules.sip_codes[480].recall_after is None
    assert rules.sources == (str(DEFAULT_RULES_PATH), str(path))
    # everything not mentioned is untouched
    for code in set(defaults.sip_codes) - {486, 404, 480}:
        assert rules.sip_codes[code] == defaults.sip_codes[code]
    assert rules.outcomes == defaults.outcomes
    assert rules.plans == defaults.plans


def test_merge_changes_class_fallback(write_rules) -> None:
    rules = load_rules(
        write_rules('[[sip_codes]]\ncode = "6xx"\nrecall = true\nrecall_after = { hours = 8 }\n')
    )
    assert rules.sip_classes[6].recall is True
    assert rules.sip_classes[6].recall_after == Duration(hours=8)
    assert rules.sip_rule_for(699) is rules.sip_classes[6]


def test_merge_adds_new_sip_code(defaults: Rules, write_rules) -> None:
    rules = load_rules(
        write_rules(
            '[[sip_codes]]\ncode = 499\ndescription = "Carrier private"\nrecall = true\n'
            "recall_after = { minutes = 45 }\n\n[[sip_codes]]\ncode = 699\nrecall = false\n"
        )
    )
    new = rules.sip_codes[499]
    assert new == SipRule(499, "Carrier private", True, True, Duration(minutes=45), False)
    assert rules.sip_codes[699].description == ""
    assert rules.sip_codes[699].recall is False
    assert len(rules.sip_codes) == len(defaults.sip_codes) + 2
    assert list(rules.sip_codes) == sorted(rules.sip_codes)
    assert rules.sip_rule_for(499) is new


def test_merge_changes_and_adds_outcomes(defaults: Rules, write_rules) -> None:
    rules = load_rules(
        write_rules(
            '[[outcomes]]\ncode = "SYSBUSY"\nrecall_after = { minutes = 45 }\n'
            '\n[[outcomes]]\ncode = "SYSOI"\nrecall = "after"\nrecall_after = { days = 30 }\n'
            '\n[[outcomes]]\ncode = "SYSANSMACH"\nrecall = "inherit"\n'
            '\n[[outcomes]]\ncode = "APPT"\nkind = "user"\ndescription = "Appointment"\n'
            'recall = "after"\nrecall_after = { days = 2 }\n'
        )
    )
    busy = rules.outcomes["SYSBUSY"]
    assert busy.recall_after == Duration(minutes=45)
    assert (busy.kind, busy.recall, busy.description) == (
        "system",
        "after",
        defaults.outcomes["SYSBUSY"].description,
    )
    assert rules.outcomes["SYSOI"].recall == "after"
    assert rules.outcomes["SYSOI"].recall_after == Duration(days=30)
    assert rules.outcomes["SYSANSMACH"].recall == "inherit"
    assert rules.outcomes["SYSANSMACH"].recall_after is None
    appt = rules.outcomes["APPT"]
    assert (appt.kind, appt.description, appt.recall, appt.recall_after) == (
        "user",
        "Appointment",
        "after",
        Duration(days=2),
    )


def test_new_plan_takes_defaults_timezone(write_rules) -> None:
    rules = load_rules(
        write_rules('[defaults]\ntimezone = "America/Chicago"\n\n[[plans]]\nid = "night"\n')
    )
    assert rules.default_timezone == "America/Chicago"
    night = rules.plans["night"]
    assert night.timezone == "America/Chicago"
    assert night.can_recall is True
    assert night.calling_hours is None
    assert night.max_attempts == ()
    assert night.max_recalls is None
    assert dict(night.system_recalls) == {}
    # a shipped plan with its own timezone keeps it
    assert rules.plans["default"].timezone == "Europe/London"


def test_new_plan_without_defaults_section_takes_shipped_default_zone(write_rules) -> None:
    rules = load_rules(write_rules('[[plans]]\nid = "x"\ncan_recall = false\n'))
    assert rules.plans["x"].timezone == "Europe/London"
    assert rules.plans["x"].can_recall is False


def test_new_plan_full(write_rules) -> None:
    rules = load_rules(
        write_rules(
            '[[plans]]\nid = "full"\ntimezone = "Asia/Tokyo"\n'
            "system_recalls = { SYSBUSY = { minutes = 5 }, NOCPA = { hours = 1 } }\n"
            'calling_hours = { mon = "09:00-12:00, 13:00-17:30", sun = "10:00-24:00" }\n'
            "max_attempts = [ { count = 2, within = { hours = 1 } }, "
            "{ count = 5, within = { days = 3 } } ]\nmax_recalls = 0\n"
        )
    )
    plan = rules.plans["full"]
    assert plan.timezone == "Asia/Tokyo"
    assert dict(plan.system_recalls) == {"SYSBUSY": Duration(minutes=5), "NOCPA": Duration(hours=1)}
    assert plan.calling_hours == CallingHours(
        (((540, 720), (780, 1050)), (), (), (), (), (), ((600, 1440),))
    )
    assert plan.calling_hours.describe() == {"mon": "09:00-12:00,13:00-17:30", "sun": "10:00-24:00"}
    assert plan.max_attempts == (
        AttemptCap(2, Duration(hours=1)),
        AttemptCap(5, Duration(days=3)),
    )
    assert plan.max_recalls == 0


def test_caps_closed_dates_and_not_same_day(defaults: Rules, write_rules) -> None:
    rules = load_rules(
        write_rules(
            '[[plans]]\nid = "full"\n'
            "max_attempts = [ { count = 3, within = { hours = 24 } }, "
            '{ count = 2, per = "day" } ]\n'
            "lead_max_attempts = [ { count = 6, within = { days = 1 } }, "
            '{ count = 4, per = "day" } ]\n'
            'closed_dates = ["2026-12-26", 2026-12-25, "2027-01-01"]\n'
            + _outcome(
                'code = "LATER"\nkind = "user"\nrecall = "after"\n'
                "recall_after = { hours = 1 }\nnot_same_day = true"
            )
        )
    )
    plan = rules.plans["full"]
    assert plan.max_attempts == (AttemptCap(3, Duration(hours=24)), AttemptCap(2, per="day"))
    assert plan.lead_max_attempts == (
        AttemptCap(6, Duration(days=1)),
        AttemptCap(4, per="day"),
    )
    assert plan.closed_dates == {date(2026, 12, 25), date(2026, 12, 26), date(2027, 1, 1)}
    assert [str(cap) for cap in plan.max_attempts] == ["3 attempts in 24h", "2 attempts per day"]
    assert rules.outcomes["LATER"].not_same_day is True
    assert rules.outcomes["SYSBUSY"].not_same_day is False
    # The shipped answer-machine row keeps the Ofcom same-day lockout.
    assert defaults.outcomes["SYSANSMACH"].not_same_day is True
    assert defaults.plans["default"].lead_max_attempts == ()
    assert defaults.plans["default"].closed_dates == frozenset()
    # An operator may lift it, field by field.
    lifted = load_rules(write_rules(_outcome('code = "SYSANSMACH"\nnot_same_day = false')))
    assert lifted.outcomes["SYSANSMACH"].not_same_day is False
    assert lifted.outcomes["SYSANSMACH"].recall_after == Duration(hours=4)


def test_override_field_of_default_plan_keeps_the_others(defaults: Rules, write_rules) -> None:
    rules = load_rules(write_rules('[[plans]]\nid = "default"\nmax_recalls = 3\n'))
    before, after = defaults.plans["default"], rules.plans["default"]
    assert after.max_recalls == 3
    assert dataclasses.replace(after, max_recalls=before.max_recalls) == before
    assert list(rules.plans) == list(defaults.plans)


def test_override_calling_hours_of_default_plan(defaults: Rules, write_rules) -> None:
    rules = load_rules(
        write_rules('[[plans]]\nid = "default"\ncalling_hours = { sun = "12:00-14:00" }\n')
    )
    after = rules.plans["default"]
    assert after.calling_hours is not None
    assert after.calling_hours.describe() == {"sun": "12:00-14:00"}
    assert after.system_recalls == defaults.plans["default"].system_recalls
    assert after.max_attempts == defaults.plans["default"].max_attempts


def test_setting_builtin_active_true_is_allowed(write_rules) -> None:
    rules = load_rules(write_rules("[[sip_codes]]\ncode = 486\nactive = true\n"))
    assert rules.sip_codes[486].active is True


def test_empty_operator_file_gives_the_defaults(defaults: Rules, write_rules) -> None:
    rules = load_rules(write_rules(""))
    assert rules.sip_codes == defaults.sip_codes
    assert rules.sip_classes == defaults.sip_classes
    assert rules.outcomes == defaults.outcomes
    assert rules.plans == defaults.plans


# --- broken rules files ---------------------------------------------------------------------


def _sip(body: str) -> str:
    return f"[[sip_codes]]\n{body}\n"


def _outcome(body: str) -> str:
    return f"[[outcomes]]\n{body}\n"


def _plan(body: str) -> str:
    return f'[[plans]]\nid = "x"\n{body}\n'


BROKEN = [
    # syntax and structure
    pytest.param("[[sip_codes]\ncode = 486\n", ("not valid TOML", "line 1"), id="toml-syntax"),
    pytest.param("code = = 1\n", ("not valid TOML",), id="toml-syntax-value"),
    pytest.param("[sipcodes]\nx = 1\n", ("sipcodes", "unknown section"), id="unknown-section"),
    pytest.param("sip_codes = 5\n", ("sip_codes", "array"), id="sip-codes-not-array"),
    pytest.param(
        '[defaults]\ntz = "UTC"\n', ("defaults", "tz", "unknown key"), id="unknown-key-defaults"
    ),
    pytest.param(
        _sip("code = 486\nrecal = true"),
        ("sip_codes[0]", "recal", "unknown key"),
        id="unknown-key-sip",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\nkind = "system"\ncolour = 1'),
        ("outcomes[0]", "colour", "unknown key"),
        id="unknown-key-outcome",
    ),
    pytest.param(_plan("colour = 1"), ("plans[0]", "colour", "unknown key"), id="unknown-key-plan"),
    pytest.param(
        _plan("max_attempts = [ { count = 3, within = { hours = 1 }, every = 2 } ]"),
        ("plans[0] (id x): max_attempts[0]", "every", "unknown key"),
        id="unknown-key-cap",
    ),
    # caps of both kinds, lead caps, closed dates, not_same_day
    pytest.param(
        _plan('max_attempts = [ { count = 2, per = "week" } ]'),
        ("plans[0] (id x): max_attempts[0]", "per", "must be 'day'", "'week'"),
        id="cap-per-not-day",
    ),
    pytest.param(
        _plan("max_attempts = [ { count = 2, per = 1 } ]"),
        ("plans[0] (id x): max_attempts[0]", "per", "string"),
        id="cap-per-not-string",
    ),
    pytest.param(
        _plan('max_attempts = [ { count = 2, per = "day", within = { hours = 1 } } ]'),
        ("plans[0] (id x): max_attempts[0]", "per", "within"),
        id="cap-both-within-and-per",
    ),
    pytest.param(
        _plan('max_attempts = [ { per = "day" } ]'),
        ("plans[0] (id x): max_attempts[0]", "count", "required"),
        id="cap-per-day-count-missing",
    ),
    pytest.param(
        _plan('max_attempts = [ { count = 0, per = "day" } ]'),
        ("plans[0] (id x): max_attempts[0]", "count", "at least 1"),
        id="cap-per-day-count-zero",
    ),
    pytest.param(
        _plan("lead_max_attempts = 3"),
        ("plans[0] (id x)", "lead_max_attempts", "array"),
        id="lead-cap-not-array",
    ),
    pytest.param(
        _plan("lead_max_attempts = [ { count = 3 } ]"),
        ("plans[0] (id x): lead_max_attempts[0]", "within", "required"),
        id="lead-cap-kind-missing",
    ),
    pytest.param(
        _plan('lead_max_attempts = [ { count = 3, per = "month" } ]'),
        ("plans[0] (id x): lead_max_attempts[0]", "per", "must be 'day'"),
        id="lead-cap-per-not-day",
    ),
    pytest.param(
        _plan('lead_max_attempts = [ { count = 3, per = "day", within = { days = 1 } } ]'),
        ("plans[0] (id x): lead_max_attempts[0]", "per", "within"),
        id="lead-cap-both",
    ),
    pytest.param(
        _plan("lead_max_attempts = [ { count = 3, within = { weeks = 1 } } ]"),
        ("plans[0] (id x): lead_max_attempts[0]", "within", "unknown unit"),
        id="lead-cap-bad-window",
    ),
    pytest.param(
        _plan("lead_max_attempts = [ { count = -1, per = 'day' } ]"),
        ("plans[0] (id x): lead_max_attempts[0]", "count", "at least 1"),
        id="lead-cap-count-negative",
    ),
    pytest.param(
        _plan('closed_dates = "2026-12-25"'),
        ("plans[0] (id x)", "closed_dates", "array"),
        id="closed-dates-not-array",
    ),
    pytest.param(
        _plan('closed_dates = ["2026-12-25", "2026-02-30"]'),
        ("plans[0] (id x)", "closed_dates[1]", "date like", "2026-02-30"),
        id="closed-date-impossible",
    ),
    pytest.param(
        _plan('closed_dates = ["25/12/2026"]'),
        ("plans[0] (id x)", "closed_dates[0]", "date like"),
        id="closed-date-bad-format",
    ),
    pytest.param(
        _plan('closed_dates = ["2026-W52-5"]'),
        ("plans[0] (id x)", "closed_dates[0]", "date like"),
        id="closed-date-week-form",
    ),
    pytest.param(
        _plan("closed_dates = [20261225]"),
        ("plans[0] (id x)", "closed_dates[0]", "date like"),
        id="closed-date-integer",
    ),
    pytest.param(
        _plan("closed_dates = [2026-12-25T10:00:00Z]"),
        ("plans[0] (id x)", "closed_dates[0]", "date like"),
        id="closed-date-datetime",
    ),
    pytest.param(
        _plan('closed_dates = ["2026-12-25", "2026-12-26", "2026-12-25"]'),
        ("plans[0] (id x)", "closed_dates[2]", "duplicate of closed_dates[0]"),
        id="closed-date-duplicate",
    ),
    pytest.param(
        _outcome('code = "SYSANSMACH"\nnot_same_day = "yes"'),
        ("outcomes[0] (code SYSANSMACH)", "not_same_day", "true or false"),
        id="not-same-day-not-boolean",
    ),
    # wrong types
    pytest.param(
        _sip('code = 486\nrecall = "yes"'),
        ("sip_codes[0] (code 486)", "recall", "true or false"),
        id="sip-recall-string",
    ),
    pytest.param(
        _sip("code = 486\ndescription = 5"),
        ("sip_codes[0] (code 486)", "description", "string"),
        id="sip-description-integer",
    ),
    pytest.param(
        _sip('code = 486\nactive = "yes"'),
        ("sip_codes[0] (code 486)", "active", "true or false"),
        id="sip-active-string",
    ),
    pytest.param(
        _sip("code = 486\nrecall_after = 15"),
        ("sip_codes[0] (code 486)", "recall_after", "table"),
        id="sip-recall-after-integer",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\nrecall = true'),
        ("outcomes[0] (code SYSBUSY)", "recall", "string"),
        id="outcome-recall-bool",
    ),
    pytest.param(
        _outcome("code = 5\nkind = 'user'"),
        ("outcomes[0]", "code", "string"),
        id="outcome-code-integer",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\ndescription = 1'),
        ("outcomes[0] (code SYSBUSY)", "description", "string"),
        id="outcome-description-integer",
    ),
    pytest.param(
        _plan('can_recall = "no"'),
        ("plans[0] (id x)", "can_recall", "true or false"),
        id="plan-can-recall-string",
    ),
    pytest.param(
        _plan('max_recalls = "3"'),
        ("plans[0] (id x)", "max_recalls", "integer"),
        id="plan-max-recalls-string",
    ),
    pytest.param(
        _plan("max_recalls = -1"),
        ("plans[0] (id x)", "max_recalls", "at least 0"),
        id="plan-max-recalls-negative",
    ),
    pytest.param(
        _plan("max_attempts = [ { count = 0, within = { hours = 1 } } ]"),
        ("plans[0] (id x): max_attempts[0]", "count"),
        id="plan-cap-count-zero",
    ),
    pytest.param(
        _plan("max_attempts = [ { count = 3 } ]"),
        ("plans[0] (id x): max_attempts[0]", "within", "required"),
        id="plan-cap-within-missing",
    ),
    pytest.param(
        _plan("max_attempts = 3"),
        ("plans[0] (id x)", "max_attempts", "array"),
        id="plan-max-attempts-integer",
    ),
    pytest.param(
        _plan("timezone = 1"), ("plans[0] (id x)", "timezone", "string"), id="plan-timezone-integer"
    ),
    pytest.param(
        _plan('system_recalls = "SYSBUSY"'),
        ("plans[0] (id x)", "system_recalls", "table"),
        id="plan-system-recalls-string",
    ),
    pytest.param("[[plans]]\nid = 7\n", ("plans[0]", "id", "string"), id="plan-id-integer"),
    pytest.param(
        "[[plans]]\ncan_recall = true\n", ("plans[0]", "id", "required"), id="plan-id-missing"
    ),
    # durations
    pytest.param(
        _sip("code = 486\nrecall_after = { minutes = -5 }"),
        ("sip_codes[0] (code 486)", "recall_after", "negative"),
        id="duration-negative",
    ),
    pytest.param(
        _sip("code = 486\nrecall_after = { weeks = 1 }"),
        ("sip_codes[0] (code 486)", "recall_after", "unknown unit"),
        id="duration-unknown-unit",
    ),
    pytest.param(
        _sip("code = 486\nrecall_after = { hours = 1.5 }"),
        ("sip_codes[0] (code 486)", "recall_after", "integer"),
        id="duration-float",
    ),
    pytest.param(
        _sip('code = 486\nrecall_after = { hours = "1" }'),
        ("sip_codes[0] (code 486)", "recall_after", "integer"),
        id="duration-string",
    ),
    pytest.param(
        _sip("code = 486\nrecall_after = { }"),
        ("sip_codes[0] (code 486)", "recall_after", "at least one"),
        id="duration-empty-table",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\nrecall_after = { minutes = -1 }'),
        ("outcomes[0] (code SYSBUSY)", "recall_after", "negative"),
        id="outcome-duration-negative",
    ),
    pytest.param(
        _plan("system_recalls = { SYSBUSY = { days = -1 } }"),
        ("plans[0] (id x)", "system_recalls.SYSBUSY", "negative"),
        id="plan-system-recall-negative",
    ),
    pytest.param(
        _plan("max_attempts = [ { count = 3, within = { } } ]"),
        ("plans[0] (id x): max_attempts[0]", "within", "at least one"),
        id="plan-cap-within-empty",
    ),
    # time ranges
    pytest.param(
        _plan('calling_hours = { mon = "9-17" }'),
        ("plans[0] (id x)", "calling_hours.mon", "bad time range"),
        id="hours-no-minutes",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "20:00-09:00" }'),
        ("plans[0] (id x)", "calling_hours.mon", "ends before it starts"),
        id="hours-reversed",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "25:00-26:00" }'),
        ("plans[0] (id x)", "calling_hours.mon", "bad time range"),
        id="hours-out-of-day",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "09:60-10:00" }'),
        ("plans[0] (id x)", "calling_hours.mon", "bad time range"),
        id="hours-minute-60",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "09:00-12:00,11:00-13:00" }'),
        ("plans[0] (id x)", "calling_hours.mon", "overlaps"),
        id="hours-overlapping",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "13:00-14:00,09:00-10:00" }'),
        ("plans[0] (id x)", "calling_hours.mon", "out of order"),
        id="hours-out-of-order",
    ),
    pytest.param(
        _plan('calling_hours = { mon = "09:00-09:00" }'),
        ("plans[0] (id x)", "calling_hours.mon"),
        id="hours-empty-range",
    ),
    pytest.param(
        _plan('calling_hours = { mon2 = "09:00-17:00" }'),
        ("plans[0] (id x)", "calling_hours.mon2", "unknown day"),
        id="hours-unknown-day",
    ),
    pytest.param(
        _plan("calling_hours = { mon = 9 }"),
        ("plans[0] (id x)", "calling_hours.mon", "string"),
        id="hours-not-string",
    ),
    pytest.param(
        _plan("calling_hours = { }"),
        ("plans[0] (id x)", "calling_hours", "no day is open"),
        id="hours-no-open-day",
    ),
    pytest.param(
        _plan('calling_hours = "always"'),
        ("plans[0] (id x)", "calling_hours", "table"),
        id="hours-not-table",
    ),
    # time zones
    pytest.param(
        '[defaults]\ntimezone = "Mars/Olympus"\n',
        ("defaults", "timezone", "Mars/Olympus"),
        id="defaults-unknown-timezone",
    ),
    pytest.param(
        _plan('timezone = "Europe/Londn"'),
        ("plans[0] (id x)", "timezone", "Europe/Londn"),
        id="plan-unknown-timezone",
    ),
    pytest.param(_plan('timezone = ""'), ("plans[0] (id x)", "timezone"), id="plan-empty-timezone"),
    # duplicates
    pytest.param(
        _sip("code = 486\nrecall = true") + _sip("code = 486\nrecall = false"),
        ("sip_codes[1] (code 486)", "code", "duplicate"),
        id="duplicate-sip-code",
    ),
    pytest.param(
        _sip('code = "4xx"\nrecall = false') + _sip('code = "4xx"\nrecall = false'),
        ("sip_codes[1] (code 4xx)", "code", "duplicate"),
        id="duplicate-sip-class",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\nrecall = "never"')
        + _outcome('code = "SYSBUSY"\nrecall = "never"'),
        ("outcomes[1] (code SYSBUSY)", "code", "duplicate"),
        id="duplicate-outcome",
    ),
    pytest.param(
        _plan("") + _plan(""), ("plans[1] (id x)", "id", "duplicate"), id="duplicate-plan"
    ),
    # built-in rows and new rows
    pytest.param(
        _sip("code = 404\nactive = false"),
        ("sip_codes[0] (code 404)", "active", "built-in"),
        id="builtin-active-false",
    ),
    pytest.param(
        _sip('code = "4xx"\nactive = false'),
        ("sip_codes[0] (code 4xx)", "active", "built-in"),
        id="builtin-class-active-false",
    ),
    pytest.param(
        _sip("code = 499\nrecall = true"),
        ("sip_codes[0] (code 499)", "recall_after", "required"),
        id="new-code-recall-without-after",
    ),
    pytest.param(
        _sip('code = 499\ndescription = "x"'),
        ("sip_codes[0] (code 499)", "recall", "required"),
        id="new-code-without-recall",
    ),
    pytest.param(
        _sip("code = 404\nrecall = true"),
        ("sip_codes[0] (code 404)", "recall_after", "required"),
        id="builtin-recall-true-without-after",
    ),
    pytest.param(
        _sip("code = 499\nrecall = false\nrecall_after = { hours = 1 }"),
        ("sip_codes[0] (code 499)", "recall_after", "recall is false"),
        id="sip-after-with-recall-false",
    ),
    pytest.param(
        _sip("recall = false"), ("sip_codes[0]", "code", "required"), id="sip-code-missing"
    ),
    pytest.param(
        _sip("code = 300\nrecall = false"), ("sip_codes[0]", "code", "300"), id="code-300"
    ),
    pytest.param(
        _sip("code = 399\nrecall = false"), ("sip_codes[0]", "code", "399"), id="code-399"
    ),
    pytest.param(
        _sip("code = 700\nrecall = false"), ("sip_codes[0]", "code", "700"), id="code-700"
    ),
    pytest.param(
        _sip('code = "7xx"\nrecall = false'), ("sip_codes[0]", "code", "7xx"), id="code-7xx"
    ),
    pytest.param(
        _sip('code = "486"\nrecall = false'),
        ("sip_codes[0]", "code", "'486'"),
        id="code-string-486",
    ),
    pytest.param(
        _sip("code = true\nrecall = false"), ("sip_codes[0]", "code", "True"), id="code-bool"
    ),
    # plans referring to outcomes
    pytest.param(
        _plan("system_recalls = { NOPE = { hours = 1 } }"),
        ("plans[0] (id x)", "system_recalls.NOPE", "not a system outcome"),
        id="plan-unknown-outcome",
    ),
    pytest.param(
        _plan("system_recalls = { CALLBACK = { hours = 1 } }"),
        ("plans[0] (id x)", "system_recalls.CALLBACK", "not a system outcome"),
        id="plan-user-outcome",
    ),
    # outcomes
    pytest.param(
        _outcome('code = "ROBO"\nkind = "robot"\nrecall = "never"'),
        ("outcomes[0] (code ROBO)", "kind", "robot"),
        id="outcome-kind-robot",
    ),
    pytest.param(
        _outcome('code = "X"\nkind = "user"\nrecall = "never"\nrecall_after = { hours = 1 }'),
        ("outcomes[0] (code X)", "recall_after", "never"),
        id="outcome-after-with-never",
    ),
    pytest.param(
        _outcome('code = "X"\nkind = "user"\nrecall = "inherit"\nrecall_after = { hours = 1 }'),
        ("outcomes[0] (code X)", "recall_after", "inherit"),
        id="outcome-after-with-inherit",
    ),
    pytest.param(
        _outcome('code = "X"\nkind = "user"\nrecall = "after"'),
        ("outcomes[0] (code X)", "recall_after", "required"),
        id="outcome-after-missing",
    ),
    pytest.param(
        _outcome('code = "SYSOI"\nrecall = "after"'),
        ("outcomes[0] (code SYSOI)", "recall_after", "required"),
        id="builtin-outcome-after-missing",
    ),
    pytest.param(
        _outcome('code = "X"\nkind = "user"\nrecall = "sometimes"'),
        ("outcomes[0] (code X)", "recall", "sometimes"),
        id="outcome-recall-unknown",
    ),
    pytest.param(
        _outcome('code = "X"\nrecall = "never"'),
        ("outcomes[0] (code X)", "kind", "required"),
        id="outcome-new-without-kind",
    ),
    # callbacks
    pytest.param(
        _outcome('code = "X"\nkind = "system"\nrecall = "callback"\nrecall_after = { hours = 1 }'),
        ("outcomes[0] (code X)", "recall", "user outcomes only"),
        id="callback-on-system-outcome",
    ),
    pytest.param(
        _outcome('code = "SYSBUSY"\nrecall = "callback"'),
        ("outcomes[0] (code SYSBUSY)", "recall", "user outcomes only"),
        id="callback-on-builtin-system-outcome",
    ),
    pytest.param(
        _outcome('code = "CALLBACK"\nkind = "system"'),
        ("outcomes[0] (code CALLBACK)", "kind", "user outcomes only"),
        id="shipped-callback-made-system",
    ),
    pytest.param(
        _outcome('code = "X"\nkind = "user"\nrecall = "callback"'),
        ("outcomes[0] (code X)", "recall_after", "required when recall is 'callback'"),
        id="callback-without-recall-after",
    ),
    pytest.param(
        _outcome('code = "DNC"\nrecall = "callback"'),
        ("outcomes[0] (code DNC)", "recall_after", "required when recall is 'callback'"),
        id="builtin-final-made-callback-without-recall-after",
    ),
    pytest.param(
        _outcome('code = ""\nkind = "user"\nrecall = "never"'),
        ("outcomes[0]", "code", "non-empty"),
        id="outcome-code-empty",
    ),
    pytest.param(
        _outcome('kind = "user"\nrecall = "never"'),
        ("outcomes[0]", "code", "required"),
        id="outcome-code-missing",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_rules_file_is_refused(write_rules, text: str, expected: tuple[str, ...]) -> None:
    path = write_rules(text, name="operator rules.toml")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    assert "\r" not in message, message
    for part in expected:
        assert part in message, (part, message)


def test_missing_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message == f"{path}: no such rules file"


def test_rules_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: ")
    assert "\n" not in message


def test_rules_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[sip_codes]]\ncode = 486\ndescription = "Occup\xe9"\n')
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_rules_error_is_a_value_error() -> None:
    assert issubclass(RulesError, ValueError)


def test_error_in_operator_file_that_breaks_a_shipped_plan_names_the_operator_file(
    write_rules,
) -> None:
    # The operator turns SYSNOANS into a user outcome; the shipped "default" plan's
    # system_recalls names SYSNOANS, so the merged rules are inconsistent. The operator's
    # file is what must be fixed, so the one-line error must point at it, not at the
    # shipped defaults the operator cannot (and must not) edit.
    path = write_rules('[[outcomes]]\ncode = "SYSNOANS"\nkind = "user"\n')
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert "SYSNOANS" in message
    assert message.startswith(f"{path}: "), message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            _outcome('code = "A\\nB"\nkind = "robot"\nrecall = "never"'),
            id="newline-in-outcome-code",
        ),
        pytest.param(_plan('calling_hours = { "mon\\ntue" = "09:00-17:00" }'), id="newline-in-day"),
        pytest.param('"sip\\ncodes" = 1\n', id="newline-in-section-name"),
        pytest.param(
            _plan('system_recalls = { "NO\\nPE" = { hours = 1 } }'), id="newline-in-recall-code"
        ),
    ],
)
def test_error_stays_one_line_when_a_name_holds_a_newline(write_rules, text: str) -> None:
    # TOML quoted keys and strings may hold "\n"; the contract's one-line error must not break
    # when it quotes such a name (it repr()s values elsewhere, e.g. unknown time zones).
    path = write_rules(text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert "\n" not in str(caught.value), repr(str(caught.value))


# --- round trip -----------------------------------------------------------------------------


def _assert_same_rules(a: Rules, b: Rules) -> None:
    assert a.default_timezone == b.default_timezone
    assert a.sip_codes == b.sip_codes
    assert a.sip_classes == b.sip_classes
    assert a.outcomes == b.outcomes
    assert a.plans == b.plans
    assert list(a.plans) == list(b.plans)
    assert list(a.sip_codes) == list(b.sip_codes)


def test_round_trip_of_the_defaults(defaults: Rules, tmp_path: Path) -> None:
    path = tmp_path / "export.toml"
    path.write_text(tomli_w.dumps(defaults.to_toml_data()), encoding="utf-8")
    _assert_same_rules(load_rules(path), defaults)


# --- the rules version (DESIGN.md section 9) ----------------------------------------------------

# The same operator rules written two ways: other entry and key order, inline and standard
# tables, comments, spacing, zero units. (120 minutes is not 2 hours: the table keeps the units.)
SAME_RULES_ONE_WAY = """
[[outcomes]]
code = "APPT"
kind = "user"
recall = "after"
recall_after = { hours = 2 }

[[outcomes]]
code = "NOPE"
kind = "user"
recall = "never"

[[plans]]
id = "b"
system_recalls = { SYSNOANS = { hours = 1 }, SYSBUSY = { minutes = 5 } }

[[plans]]
id = "a"
can_recall = false

[[sip_codes]]
code = 486
recall_after = { minutes = 20 }
"""
SAME_RULES_ANOTHER_WAY = """# the same, written otherwise
[[sip_codes]]
recall_after.minutes = 20
code = 486

[[plans]]
can_recall = false
id = "a"

[[plans]]
  id = "b"
  [plans.system_recalls]
  SYSBUSY = { minutes = 5, hours = 0 }
  SYSNOANS.hours = 1

[[outcomes]]
recall = "never"
kind = "user"
code = "NOPE"

[[outcomes]]
code = "APPT"
kind = "user"
recall = "after"
recall_after.hours = 2
"""


def test_the_version_does_not_depend_on_how_the_file_is_written(write_rules) -> None:
    one = load_rules(write_rules(SAME_RULES_ONE_WAY, "one.toml"))
    other = load_rules(write_rules(SAME_RULES_ANOTHER_WAY, "other.toml"))
    assert one.sources != other.sources
    assert one.export_text() == other.export_text()
    assert one.version == other.version
    assert len(one.version) == 12
    assert int(one.version, 16) >= 0  # hexadecimal


def test_the_version_is_the_sha256_of_the_export(defaults: Rules) -> None:
    text = defaults.export_text()
    assert text.startswith(EXPORT_HEADER)
    assert tomllib.loads(text) == defaults.to_toml_data()
    assert defaults.version == hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def test_an_exported_file_has_the_version_of_the_rules_it_came_from(
    write_rules, defaults: Rules
) -> None:
    rules = load_rules(write_rules(SAME_RULES_ONE_WAY))
    assert load_rules(write_rules(rules.export_text(), "exported.toml")).version == rules.version
    assert load_rules(write_rules(defaults.export_text(), "d.toml")).version == defaults.version


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_sip("code = 486\nrecall_after = { minutes = 21 }"), id="sip-time"),
        pytest.param(_sip('code = 486\ndescription = "Engaged"'), id="sip-description"),
        pytest.param(_outcome('code = "SYSBUSY"\nrecall = "never"'), id="outcome-policy"),
        pytest.param(_plan(""), id="new-plan"),
        pytest.param('[[plans]]\nid = "default"\nmax_recalls = 99\n', id="plan-field"),
        pytest.param('[defaults]\ntimezone = "Asia/Tokyo"\n', id="default-timezone"),
    ],
)
def test_any_change_gives_another_version(write_rules, defaults: Rules, change: str) -> None:
    assert load_rules(write_rules(change)).version != defaults.version


def test_the_version_is_worked_out_once(defaults: Rules) -> None:
    assert defaults.version is defaults.version
    assert defaults.export_text() is defaults.export_text()


def test_round_trip_of_merged_rules(write_rules, tmp_path: Path) -> None:
    rules = load_rules(
        write_rules(
            '[defaults]\ntimezone = "America/Chicago"\n'
            + _sip('code = 486\ndescription = "Engaged"\nrecall_after = { days = 1, minutes = 7 }')
            + _sip("code = 404\nrecall = true\nrecall_after = { hours = 3 }")
            + _sip("code = 450\nactive = false\nrecall = false")
            + _sip('code = "5xx"\nrecall = false')
            + _sip("code = 499\nrecall = true\nrecall_after = { minutes = 0 }")
            + _outcome('code = "SYSOI"\nrecall = "after"\nrecall_after = { days = 30 }')
            + _outcome('code = "APPT"\nkind = "user"\nrecall = "inherit"')
            + _plan(
                "system_recalls = { SYSBUSY = { minutes = 5 } }\n"
                'calling_hours = { mon = "00:00-06:00,07:00-24:00" }\n'
                "max_attempts = [ { count = 2, within = { days = 1, hours = 1 } } ]\n"
                "max_recalls = 0"
            )
            + _plan(
                'max_attempts = [ { count = 2, per = "day" } ]\n'
                "lead_max_attempts = [ { count = 5, within = { hours = 12 } }, "
                '{ count = 3, per = "day" } ]\n'
                'closed_dates = ["2027-01-01", "2026-12-25"]'
            ).replace('id = "x"', 'id = "y"')  # after "x": the export lists plans by id
            + _outcome(
                'code = "LATER"\nkind = "user"\nrecall = "after"\n'
                "recall_after = { hours = 1 }\nnot_same_day = true"
            )
            + _outcome('code = "SYSANSMACH"\nnot_same_day = false')
            + '[[plans]]\nid = "default"\ncan_recall = false\nmax_attempts = []\n'
        )
    )
    path = tmp_path / "export.toml"
    path.write_text(tomli_w.dumps(rules.to_toml_data()), encoding="utf-8")
    again = load_rules(path)
    _assert_same_rules(again, rules)
    assert again.plans["x"].timezone == "America/Chicago"
    assert again.sip_codes[450].builtin is False
    assert again.sip_codes[486].builtin is True
    assert again.plans["y"].closed_dates == {date(2026, 12, 25), date(2027, 1, 1)}
    assert again.plans["y"].lead_max_attempts[1] == AttemptCap(3, per="day")
    assert again.outcomes["LATER"].not_same_day is True
    assert again.outcomes["SYSANSMACH"].not_same_day is False
    # An emptied shipped field stays empty (not the shipped value again).
    assert again.plans["default"].max_attempts == ()
