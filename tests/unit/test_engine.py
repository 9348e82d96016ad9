"""Table tests of ``worker.engine.decide``: the precedence of DESIGN.md section 2, row by row.

Every expected instant is worked out by hand and written as a literal (UTC). The rules are the
shipped defaults with the operator file ``RULES`` merged over them; its plans are chosen so that
each row is decided by exactly one rule or adjustment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pendulum
import pytest

from tests.helpers import at, make_event
from worker.domain.engine import PendingRecall, PhoneHistory, decide, next_opening
from worker.domain.rules import CallingHours, Rules, load_rules

WEEKDAYS_9_TO_5 = (
    'mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00", thu = "09:00-17:00", '
    'fri = "09:00-17:00", sat = "10:00-14:00"'
)

EVERY_DAY_8_TO_21 = ", ".join(
    f'{day} = "08:00-21:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
)

RULES = f"""
[defaults]
# Plans without a timezone of their own get this one.
timezone = "Asia/Tokyo"

[[sip_codes]]
code = 497
description = "Operator-added, switched off"
active = false
recall = true
recall_after = {{ minutes = 5 }}

[[sip_codes]]
code = 498
description = "Operator-added"
recall = true
recall_after = {{ minutes = 7 }}

[[outcomes]]
code = "H24"
kind = "user"
description = "Call back in 24 hours"
recall = "after"
recall_after = {{ hours = 24 }}

[[outcomes]]
code = "D1H2"
kind = "user"
description = "Call back in a day and two hours"
recall = "after"
recall_after = {{ days = 1, hours = 2 }}

# Always open, no caps: the plain precedence rows.
[[plans]]
id = "open"
timezone = "Europe/London"

[[plans]]
id = "off"
can_recall = false
timezone = "Europe/London"

[[plans]]
id = "off_sys"
can_recall = false
timezone = "Europe/London"
system_recalls = {{ SYSANSMACH = {{ hours = 6 }} }}

[[plans]]
id = "sysplan"
timezone = "Europe/London"
system_recalls.SYSANSMACH = {{ hours = 6 }}
system_recalls.SYSOI = {{ hours = 8 }}
system_recalls.NOCPA = {{ minutes = 50 }}

[[plans]]
id = "capped"
timezone = "Europe/London"
max_recalls = 2

[[plans]]
id = "zero"
timezone = "Europe/London"
max_recalls = 0

[[plans]]
id = "caps"
timezone = "Europe/London"
max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }} ]

[[plans]]
id = "twocaps"
timezone = "Europe/London"
max_attempts = [
    {{ count = 3, within = {{ hours = 24 }} }},
    {{ count = 5, within = {{ days = 7 }} }},
]

[[plans]]
id = "hours_ny"
timezone = "America/New_York"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}

[[plans]]
id = "hours_nozone"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}

[[plans]]
id = "lunch"
timezone = "Europe/London"
calling_hours = {{ wed = "09:00-12:00,13:00-17:00" }}

[[plans]]
id = "everything"
timezone = "America/New_York"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}
max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }} ]
max_recalls = 3

# The shipped answer-machine row keeps recalls off the day of the call (not_same_day); the
# precedence rows above check recall times alone, so it is lifted here (the NSD* outcomes and
# test_shipped_answer_machine_is_not_recalled_the_same_day cover the lockout).
[[outcomes]]
code = "SYSANSMACH"
not_same_day = false

[[outcomes]]
code = "NSDSYS"
kind = "system"
description = "System, not again today"
recall = "after"
recall_after = {{ hours = 1 }}
not_same_day = true

[[outcomes]]
code = "NSDUSER"
kind = "user"
description = "Agent, not again today"
recall = "after"
recall_after = {{ hours = 2 }}
not_same_day = true

[[outcomes]]
code = "NSDINH"
kind = "system"
description = "No opinion on the time, not again today"
recall = "inherit"
not_same_day = true

# Per-day caps, lead caps, closed dates, not_same_day.
[[plans]]
id = "day_london"
timezone = "Europe/London"
max_attempts = [ {{ count = 2, per = "day" }} ]

[[plans]]
id = "day_ny"
timezone = "America/New_York"
max_attempts = [ {{ count = 2, per = "day" }} ]

[[plans]]
id = "rolling_and_day"
timezone = "Europe/London"
max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }}, {{ count = 2, per = "day" }} ]

[[plans]]
id = "day_hours"
timezone = "Europe/London"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}
max_attempts = [ {{ count = 2, per = "day" }} ]

[[plans]]
id = "lead_rolling"
timezone = "Europe/London"
lead_max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }} ]

[[plans]]
id = "lead_day"
timezone = "Europe/London"
lead_max_attempts = [ {{ count = 3, per = "day" }} ]

[[plans]]
id = "phone_and_lead"
timezone = "Europe/London"
max_attempts = [ {{ count = 2, per = "day" }} ]
lead_max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }} ]

[[plans]]
id = "closed"
timezone = "Europe/London"
closed_dates = ["2026-12-25", "2026-12-28"]

[[plans]]
id = "closed_hours"
timezone = "Europe/London"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}
closed_dates = ["2026-12-25", "2026-12-28"]

[[plans]]
id = "closed_dst"
timezone = "Europe/London"
closed_dates = ["2026-03-28", "2026-03-29", "2026-10-25"]

[[plans]]
id = "closed_ny"
timezone = "America/New_York"
calling_hours = {{ {EVERY_DAY_8_TO_21} }}
closed_dates = ["2026-03-07"]

[[plans]]
id = "nsd_plan"
timezone = "Europe/London"
system_recalls = {{ NSDSYS = {{ minutes = 45 }} }}

[[plans]]
id = "nsd_hours"
timezone = "Europe/London"
calling_hours = {{ {WEEKDAYS_9_TO_5} }}

# Calling-hours boundaries inside the New York spring-forward gap (2026-03-08 02:00-03:00).
[[plans]]
id = "gap_open"
timezone = "America/New_York"
calling_hours = {{ sat = "08:00-21:00", sun = "02:30-05:00" }}

[[plans]]
id = "gap_close"
timezone = "America/New_York"
calling_hours = {{ sun = "00:00-02:30", mon = "09:00-17:00" }}
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    path = tmp_path_factory.mktemp("engine") / "rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return load_rules(path)


def expect(
    action: str,
    due_at: str | None,
    source: str | None,
    rule: str | None,
    reason: str,
    adjustments: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "action": action,
        "due_at": due_at,
        "source": source,
        "rule": rule,
        "reason": reason,
        "adjustments": list(adjustments),
        "warnings": list(warnings),
    }


def recall(
    due_at: str,
    source: str,
    rule: str,
    reason: str,
    adjustments: tuple[str, ...] = (),
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    return expect("recall", due_at, source, rule, reason, adjustments, warnings)


def suppress(
    source: str | None, rule: str, reason: str, warnings: tuple[str, ...] = ()
) -> dict[str, Any]:
    return expect("suppress", None, source, rule, reason, (), warnings)


def sip(due_at: str, rule: str = "sip:486", adjustments: tuple[str, ...] = ()) -> dict[str, Any]:
    return recall(due_at, "sip_code", rule, "sip_recall", adjustments)


# The shipped CALLBACK is a callback: without the event's callback_at it recalls after its
# recall_after (1 day), with a warning.
MISSING = ("callback_at_missing",)


def row(
    row_id: str,
    event: dict[str, Any],
    expected: dict[str, Any],
    history: PhoneHistory | None = None,
    now: str | None = None,
) -> Any:
    return pytest.param(event, history or PhoneHistory(), now, expected, id=row_id)


def attempts(*texts: str) -> PhoneHistory:
    return PhoneHistory(attempts=tuple(at(text) for text in texts))


# The default event: plan "open" (Europe/London, GMT in January), SIP 486 Busy Here (15 minutes),
# occurred Wednesday 2026-01-14 10:00 UTC; unless a row says otherwise, now = occurred_at.
OPEN = {"plan_id": "open"}
T0_PLUS_15M = "2026-01-14T10:15:00+00:00"

PRECEDENCE = [
    # 1. Duplicate.
    row(
        "duplicate",
        OPEN,
        expect("duplicate", None, None, None, "duplicate"),
        PhoneHistory(seen_event_ids={"e1"}),
    ),
    row(
        "duplicate-before-unknown-plan",
        {"plan_id": "nope"},
        expect("duplicate", None, None, None, "duplicate"),
        PhoneHistory(seen_event_ids={"e1"}),
    ),
    row(
        "other-event-seen-is-not-duplicate",
        OPEN,
        sip(T0_PLUS_15M),
        PhoneHistory(seen_event_ids={"e0"}),
    ),
    # Unknown plan.
    row("unknown-plan", {"plan_id": "nope"}, expect("reject", None, None, None, "unknown_plan")),
    # 2. Stale.
    row(
        "stale-one-second-older",
        OPEN,
        expect("stale", None, None, None, "stale"),
        PhoneHistory(last_applied_at=at("2026-01-14T10:00:01+00:00")),
    ),
    row(
        "stale-before-user-outcome",
        {**OPEN, "outcome_code": "CALLBACK"},
        expect("stale", None, None, None, "stale"),
        PhoneHistory(last_applied_at=at("2026-01-14T11:00:00+00:00")),
    ),
    row(
        "equal-timestamp-not-stale",
        OPEN,
        sip(T0_PLUS_15M),
        PhoneHistory(last_applied_at=at("2026-01-14T10:00:00+00:00")),
    ),
    row(
        "equal-instant-other-offset-not-stale",
        {**OPEN, "occurred_at": "2026-01-14T05:00:00-05:00"},
        sip(T0_PLUS_15M),
        PhoneHistory(last_applied_at=at("2026-01-14T11:00:00+01:00")),
    ),
    row(
        "older-last-applied-not-stale",
        OPEN,
        sip(T0_PLUS_15M),
        PhoneHistory(last_applied_at=at("2026-01-14T09:59:59+00:00")),
    ),
    # 3. User outcomes.
    row(
        "user-after",
        {**OPEN, "outcome_code": "CALLBACK"},
        recall(
            "2026-01-15T10:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "user-after-can-recall-off",
        {"plan_id": "off", "outcome_code": "CALLBACK"},
        recall(
            "2026-01-15T10:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "user-after-beats-sip-final",
        {**OPEN, "outcome_code": "NOTNOW", "sip_code": 404},
        recall("2026-01-14T14:00:00+00:00", "user_outcome", "outcome:NOTNOW", "user_recall"),
    ),
    row(
        "user-never",
        {**OPEN, "outcome_code": "DNC"},
        suppress("user_outcome", "outcome:DNC", "user_final"),
    ),
    row(
        "user-never-can-recall-off",
        {"plan_id": "off", "outcome_code": "SALE"},
        suppress("user_outcome", "outcome:SALE", "user_final"),
    ),
    row("user-inherit-sip-decides", {**OPEN, "outcome_code": "ANSWER"}, sip(T0_PLUS_15M)),
    row(
        "user-inherit-sip-final",
        {**OPEN, "outcome_code": "ANSWER", "sip_code": 404},
        suppress("sip_code", "sip:404", "sip_no_recall"),
    ),
    # 4. Can Recall off.
    row(
        "can-recall-off-sip", {"plan_id": "off"}, suppress(None, "plan:off", "plan_can_recall_off")
    ),
    row(
        "can-recall-off-system-outcome",
        {"plan_id": "off", "outcome_code": "SYSANSMACH"},
        suppress(None, "plan:off", "plan_can_recall_off"),
    ),
    row(
        "can-recall-off-beats-plan-system-recalls",
        {"plan_id": "off_sys", "outcome_code": "SYSANSMACH"},
        suppress(None, "plan:off_sys", "plan_can_recall_off"),
    ),
    row(
        "can-recall-off-user-inherit",
        {"plan_id": "off", "outcome_code": "ANSWER"},
        suppress(None, "plan:off", "plan_can_recall_off"),
    ),
    row(
        "can-recall-off-shipped-manual-plan",
        {"plan_id": "manual", "outcome_code": "SYSNOANS"},
        suppress(None, "plan:manual", "plan_can_recall_off"),
    ),
    # 5. System outcomes.
    row(
        "system-plan-override",
        {"plan_id": "sysplan", "outcome_code": "SYSANSMACH"},
        recall(
            "2026-01-14T16:00:00+00:00", "system_outcome", "plan:sysplan", "system_outcome_recall"
        ),
    ),
    row(
        "system-plan-override-beats-never",
        {"plan_id": "sysplan", "outcome_code": "SYSOI"},
        recall(
            "2026-01-14T18:00:00+00:00", "system_outcome", "plan:sysplan", "system_outcome_recall"
        ),
    ),
    row(
        "system-plan-override-of-inherit",
        {"plan_id": "sysplan", "outcome_code": "NOCPA", "sip_code": 404},
        recall(
            "2026-01-14T10:50:00+00:00", "system_outcome", "plan:sysplan", "system_outcome_recall"
        ),
    ),
    row(
        "system-table-time-without-override",
        {"plan_id": "sysplan", "outcome_code": "SYSNOANS"},
        recall(
            "2026-01-14T12:00:00+00:00",
            "system_outcome",
            "outcome:SYSNOANS",
            "system_outcome_recall",
        ),
    ),
    row(
        "system-table-time",
        {**OPEN, "outcome_code": "SYSANSMACH"},
        recall(
            "2026-01-14T14:00:00+00:00",
            "system_outcome",
            "outcome:SYSANSMACH",
            "system_outcome_recall",
        ),
    ),
    row(
        "system-after-beats-sip-final",
        {**OPEN, "outcome_code": "SYSDROP", "sip_code": 603},
        recall(
            "2026-01-15T10:00:00+00:00",
            "system_outcome",
            "outcome:SYSDROP",
            "system_outcome_recall",
        ),
    ),
    row(
        "shipped-default-plan-override",
        {"plan_id": "default", "outcome_code": "SYSDROP"},
        recall(
            "2026-01-17T10:00:00+00:00", "system_outcome", "plan:default", "system_outcome_recall"
        ),
    ),
    row(
        "system-never",
        {**OPEN, "outcome_code": "SYSOI"},
        suppress("system_outcome", "outcome:SYSOI", "system_outcome_final"),
    ),
    row("system-inherit-sip-recall", {**OPEN, "outcome_code": "NOCPA"}, sip(T0_PLUS_15M)),
    row(
        "system-inherit-sip-final",
        {**OPEN, "outcome_code": "NOCPA", "sip_code": 404},
        suppress("sip_code", "sip:404", "sip_no_recall"),
    ),
    # 6. SIP codes.
    row("sip-486", OPEN, sip(T0_PLUS_15M)),
    row("sip-487", {**OPEN, "sip_code": 487}, sip("2026-01-14T12:00:00+00:00", "sip:487")),
    row("sip-503", {**OPEN, "sip_code": 503}, sip("2026-01-14T10:30:00+00:00", "sip:503")),
    row("sip-606-recalls", {**OPEN, "sip_code": 606}, sip("2026-01-14T14:00:00+00:00", "sip:606")),
    row(
        "sip-404-final", {**OPEN, "sip_code": 404}, suppress("sip_code", "sip:404", "sip_no_recall")
    ),
    row(
        "sip-603-final", {**OPEN, "sip_code": 603}, suppress("sip_code", "sip:603", "sip_no_recall")
    ),
    row(
        "sip-499-4xx-fallback",
        {**OPEN, "sip_code": 499},
        sip("2026-01-14T11:00:00+00:00", "sip:4xx"),
    ),
    row(
        "sip-operator-row-active",
        {**OPEN, "sip_code": 498},
        sip("2026-01-14T10:07:00+00:00", "sip:498"),
    ),
    row(
        "sip-operator-row-inactive-uses-fallback",
        {**OPEN, "sip_code": 497},
        sip("2026-01-14T11:00:00+00:00", "sip:4xx"),
    ),
    row(
        "sip-599-5xx-fallback",
        {**OPEN, "sip_code": 599},
        sip("2026-01-14T10:30:00+00:00", "sip:5xx"),
    ),
    row(
        "sip-699-6xx-fallback-final",
        {**OPEN, "sip_code": 699},
        suppress("sip_code", "sip:6xx", "sip_no_recall"),
    ),
    row(
        "sip-180-no-failure",
        {**OPEN, "sip_code": 180},
        suppress("sip_code", "sip:180", "no_failure"),
    ),
    row(
        "sip-200-no-failure",
        {**OPEN, "sip_code": 200},
        suppress("sip_code", "sip:200", "no_failure"),
    ),
    row(
        "sip-302-no-failure",
        {**OPEN, "sip_code": 302},
        suppress("sip_code", "sip:302", "no_failure"),
    ),
    row(
        "sip-200-inherit-outcome-no-failure",
        {**OPEN, "sip_code": 200, "outcome_code": "NOCPA"},
        suppress("sip_code", "sip:200", "no_failure"),
    ),
    row(
        "sip-200-answering-machine",
        {**OPEN, "sip_code": 200, "outcome_code": "SYSANSMACH"},
        recall(
            "2026-01-14T14:00:00+00:00",
            "system_outcome",
            "outcome:SYSANSMACH",
            "system_outcome_recall",
        ),
    ),
    # Unknown outcome codes: inherit, with a warning.
    row(
        "unknown-outcome-sip-recall",
        {**OPEN, "outcome_code": "BOGUS"},
        recall(
            T0_PLUS_15M, "sip_code", "sip:486", "sip_recall", warnings=("unknown_outcome:BOGUS",)
        ),
    ),
    row(
        "unknown-outcome-sip-final",
        {**OPEN, "outcome_code": "BOGUS", "sip_code": 404},
        suppress("sip_code", "sip:404", "sip_no_recall", warnings=("unknown_outcome:BOGUS",)),
    ),
    row(
        "unknown-outcome-can-recall-off",
        {"plan_id": "off", "outcome_code": "BOGUS"},
        suppress(None, "plan:off", "plan_can_recall_off", warnings=("unknown_outcome:BOGUS",)),
    ),
]

ADJUSTMENTS = [
    # Retry-After is a floor.
    row(
        "retry-after-larger",
        {**OPEN, "retry_after_s": 3600},
        sip("2026-01-14T11:00:00+00:00", adjustments=("retry_after",)),
    ),
    row("retry-after-smaller", {**OPEN, "retry_after_s": 600}, sip(T0_PLUS_15M)),
    row("retry-after-equal", {**OPEN, "retry_after_s": 900}, sip(T0_PLUS_15M)),
    row("retry-after-zero", {**OPEN, "retry_after_s": 0}, sip(T0_PLUS_15M)),
    row(
        "retry-after-elapsed-across-dst",
        {**OPEN, "occurred_at": "2026-03-28T10:00:00+00:00", "retry_after_s": 86400},
        sip("2026-03-29T10:00:00+00:00", adjustments=("retry_after",)),
    ),
    row(
        "retry-after-no-effect-on-suppress",
        {**OPEN, "sip_code": 404, "retry_after_s": 3600},
        suppress("sip_code", "sip:404", "sip_no_recall"),
    ),
    # max_recalls.
    row(
        "max-recalls-below",
        {"plan_id": "capped"},
        sip(T0_PLUS_15M),
        PhoneHistory(system_recalls=1),
    ),
    row(
        "max-recalls-reached-sip",
        {"plan_id": "capped"},
        suppress("sip_code", "plan:capped", "max_recalls"),
        PhoneHistory(system_recalls=2),
    ),
    row(
        "max-recalls-exceeded-system-outcome",
        {"plan_id": "capped", "outcome_code": "SYSANSMACH"},
        suppress("system_outcome", "plan:capped", "max_recalls"),
        PhoneHistory(system_recalls=3),
    ),
    row(
        "max-recalls-zero",
        {"plan_id": "zero"},
        suppress("sip_code", "plan:zero", "max_recalls"),
    ),
    row(
        "max-recalls-not-for-user-recalls",
        {"plan_id": "capped", "outcome_code": "CALLBACK"},
        recall(
            "2026-01-15T10:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
        PhoneHistory(system_recalls=9),
    ),
    row(
        "max-recalls-unknown-outcome-keeps-warning",
        {"plan_id": "capped", "outcome_code": "BOGUS"},
        suppress("sip_code", "plan:capped", "max_recalls", warnings=("unknown_outcome:BOGUS",)),
        PhoneHistory(system_recalls=2),
    ),
    # max_attempts: 3 in 24 hours (history given out of order on purpose).
    row(
        "max-attempts-third-latest-plus-window",
        {"plan_id": "caps"},
        sip("2026-01-14T12:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-01-13T09:00:00+00:00", "2026-01-14T08:00:00+00:00", "2026-01-13T12:00:00+00:00"
        ),
    ),
    row(
        "max-attempts-fewer-than-count",
        {"plan_id": "caps"},
        sip(T0_PLUS_15M),
        attempts("2026-01-14T08:00:00+00:00"),
    ),
    row(
        "max-attempts-window-passed",
        {"plan_id": "caps"},
        sip(T0_PLUS_15M),
        attempts("2026-01-13T09:00:00+00:00", "2026-01-14T08:00:00+00:00"),
    ),
    row(
        "max-attempts-window-ends-exactly-at-due",
        {"plan_id": "caps"},
        sip(T0_PLUS_15M),
        attempts("2026-01-13T10:15:00+00:00", "2026-01-14T08:00:00+00:00"),
    ),
    row(
        "max-attempts-one-second-short",
        {"plan_id": "caps"},
        sip("2026-01-14T10:15:01+00:00", adjustments=("max_attempts",)),
        attempts("2026-01-13T10:15:01+00:00", "2026-01-14T08:00:00+00:00"),
    ),
    row(
        "max-attempts-user-recall-capped",
        {"plan_id": "caps", "outcome_code": "NOTNOW"},
        recall(
            "2026-01-15T09:00:00+00:00",
            "user_outcome",
            "outcome:NOTNOW",
            "user_recall",
            ("max_attempts",),
        ),
        attempts("2026-01-14T09:00:00+00:00", "2026-01-14T09:30:00+00:00"),
    ),
    # Two caps: 3 in 24 hours and 5 in 7 days.
    row(
        "two-caps-second-binds",
        {"plan_id": "twocaps"},
        sip("2026-01-15T10:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-01-08T10:00:00+00:00",
            "2026-01-09T10:00:00+00:00",
            "2026-01-12T10:00:00+00:00",
            "2026-01-13T10:00:00+00:00",
        ),
    ),
    row(
        "two-caps-first-binds",
        {"plan_id": "twocaps"},
        sip("2026-01-15T08:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-01-06T10:00:00+00:00",
            "2026-01-07T11:00:00+00:00",
            "2026-01-14T08:00:00+00:00",
            "2026-01-14T09:00:00+00:00",
        ),
    ),
    row(
        "two-caps-both-bind-latest-wins",
        {"plan_id": "twocaps"},
        sip("2026-01-15T12:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-01-08T12:00:00+00:00",
            "2026-01-13T11:00:00+00:00",
            "2026-01-14T09:00:00+00:00",
            "2026-01-09T10:00:00+00:00",
        ),
    ),
    # calling_hours, in the phone's zone (New York is UTC-5 in January, Tokyo UTC+9).
    row(
        "hours-event-zone",
        {
            "plan_id": "hours_ny",
            "timezone": "America/Los_Angeles",
            "occurred_at": "2026-01-14T15:00:00+00:00",
        },
        sip("2026-01-14T17:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-plan-zone",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T13:00:00+00:00"},
        sip("2026-01-14T14:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-defaults-zone",
        {"plan_id": "hours_nozone", "occurred_at": "2026-01-14T13:00:00+00:00"},
        sip("2026-01-15T00:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-inside-unchanged",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T15:00:00+00:00"},
        sip("2026-01-14T15:15:00+00:00"),
    ),
    row(
        "hours-exactly-at-opening-unchanged",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T13:45:00+00:00"},
        sip("2026-01-14T14:00:00+00:00"),
    ),
    row(
        "hours-one-minute-before-end-unchanged",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T21:44:00+00:00"},
        sip("2026-01-14T21:59:00+00:00"),
    ),
    row(
        "hours-exactly-at-end-is-closed",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T21:45:00+00:00"},
        sip("2026-01-15T14:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-friday-evening-to-saturday",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-16T22:30:00+00:00"},
        sip("2026-01-17T15:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-across-closed-sunday",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-17T18:50:00+00:00"},
        sip("2026-01-19T14:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-gap-between-ranges",
        {"plan_id": "lunch", "occurred_at": "2026-01-14T11:50:00+00:00"},
        sip("2026-01-14T13:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-only-day-a-week-later",
        {"plan_id": "lunch", "occurred_at": "2026-01-14T16:50:00+00:00"},
        sip("2026-01-21T09:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-shipped-default-plan",
        {"plan_id": "default", "occurred_at": "2026-01-17T16:50:00+00:00"},
        sip("2026-01-19T08:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-opening-on-spring-forward-day",
        {"plan_id": "us_tcpa", "occurred_at": "2026-03-07T22:00:00-05:00"},
        sip("2026-03-08T12:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-opening-on-fall-back-day",
        {"plan_id": "us_tcpa", "occurred_at": "2026-10-31T22:00:00-04:00"},
        sip("2026-11-01T13:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "hours-opening-on-london-spring-forward-monday",
        {"plan_id": "default", "occurred_at": "2026-03-28T16:50:00+00:00"},
        sip("2026-03-30T07:00:00+00:00", adjustments=("calling_hours",)),
    ),
    # All three adjustments, in the contract's order.
    row(
        "all-adjustments-in-order",
        {
            "plan_id": "everything",
            "occurred_at": "2026-01-14T15:00:00+00:00",
            "retry_after_s": 7200,
        },
        sip(
            "2026-01-15T14:00:00+00:00",
            adjustments=("retry_after", "max_attempts", "calling_hours"),
        ),
        PhoneHistory(
            attempts=(at("2026-01-13T22:30:00+00:00"), at("2026-01-14T14:00:00+00:00")),
            system_recalls=2,
        ),
    ),
    row(
        "all-adjustments-but-max-recalls-reached",
        {
            "plan_id": "everything",
            "occurred_at": "2026-01-14T15:00:00+00:00",
            "retry_after_s": 7200,
        },
        suppress("sip_code", "plan:everything", "max_recalls"),
        PhoneHistory(
            attempts=(at("2026-01-13T22:30:00+00:00"), at("2026-01-14T14:00:00+00:00")),
            system_recalls=3,
        ),
    ),
    # Already due when decided: due now, and the later adjustments still apply.
    row(
        "due-before-now-is-now",
        OPEN,
        sip("2026-01-14T11:00:00+00:00"),
        now="2026-01-14T11:00:00+00:00",
    ),
    row("now-before-due-unchanged", OPEN, sip(T0_PLUS_15M), now="2026-01-14T10:05:00+00:00"),
    row(
        "due-now-then-calling-hours",
        {"plan_id": "hours_ny", "occurred_at": "2026-01-14T15:00:00+00:00"},
        sip("2026-01-15T14:00:00+00:00", adjustments=("calling_hours",)),
        now="2026-01-14T23:00:00+00:00",
    ),
    row(
        "due-now-then-max-attempts",
        {"plan_id": "caps"},
        sip("2026-01-14T12:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-01-13T09:00:00+00:00", "2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00"
        ),
        now="2026-01-14T11:00:00+00:00",
    ),
    row(
        "due-now-past-the-cap",
        {"plan_id": "caps"},
        sip("2026-01-14T13:00:00+00:00"),
        attempts(
            "2026-01-13T09:00:00+00:00", "2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00"
        ),
        now="2026-01-14T13:00:00+00:00",
    ),
]

# Days are calendar days in the phone's zone, hours are elapsed time. CALLBACK = 1 day,
# H24 = 24 hours, D1H2 = 1 day then 2 hours. Plan "open" is Europe/London.
DST = [
    row(
        "london-spring-1-day",
        {**OPEN, "outcome_code": "CALLBACK", "occurred_at": "2026-03-28T10:00:00+00:00"},
        recall(
            "2026-03-29T09:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "london-spring-24-hours",
        {**OPEN, "outcome_code": "H24", "occurred_at": "2026-03-28T10:00:00+00:00"},
        recall("2026-03-29T10:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "london-spring-1-day-then-2-hours",
        {**OPEN, "outcome_code": "D1H2", "occurred_at": "2026-03-28T00:30:00+00:00"},
        recall("2026-03-29T02:30:00+00:00", "user_outcome", "outcome:D1H2", "user_recall"),
    ),
    row(
        "london-fall-1-day",
        {**OPEN, "outcome_code": "CALLBACK", "occurred_at": "2026-10-24T10:00:00+01:00"},
        recall(
            "2026-10-25T10:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "london-fall-24-hours",
        {**OPEN, "outcome_code": "H24", "occurred_at": "2026-10-24T10:00:00+01:00"},
        recall("2026-10-25T09:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "new-york-spring-1-day",
        {
            **OPEN,
            "outcome_code": "CALLBACK",
            "timezone": "America/New_York",
            "occurred_at": "2026-03-07T10:00:00-05:00",
        },
        recall(
            "2026-03-08T14:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "new-york-spring-1-day-utc-input",
        {
            **OPEN,
            "outcome_code": "CALLBACK",
            "timezone": "America/New_York",
            "occurred_at": "2026-03-07T15:00:00+00:00",
        },
        recall(
            "2026-03-08T14:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "new-york-spring-24-hours",
        {
            **OPEN,
            "outcome_code": "H24",
            "timezone": "America/New_York",
            "occurred_at": "2026-03-07T10:00:00-05:00",
        },
        recall("2026-03-08T15:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "new-york-fall-1-day",
        {
            **OPEN,
            "outcome_code": "CALLBACK",
            "timezone": "America/New_York",
            "occurred_at": "2026-10-31T10:00:00-04:00",
        },
        recall(
            "2026-11-01T15:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "new-york-fall-24-hours",
        {
            **OPEN,
            "outcome_code": "H24",
            "timezone": "America/New_York",
            "occurred_at": "2026-10-31T10:00:00-04:00",
        },
        recall("2026-11-01T14:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "sydney-april-1-day",
        {
            **OPEN,
            "outcome_code": "CALLBACK",
            "timezone": "Australia/Sydney",
            "occurred_at": "2026-04-04T10:00:00+11:00",
        },
        recall(
            "2026-04-05T00:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "sydney-april-24-hours",
        {
            **OPEN,
            "outcome_code": "H24",
            "timezone": "Australia/Sydney",
            "occurred_at": "2026-04-04T10:00:00+11:00",
        },
        recall("2026-04-04T23:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "sydney-october-1-day",
        {
            **OPEN,
            "outcome_code": "CALLBACK",
            "timezone": "Australia/Sydney",
            "occurred_at": "2026-10-03T10:00:00+10:00",
        },
        recall(
            "2026-10-03T23:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "sydney-october-24-hours",
        {
            **OPEN,
            "outcome_code": "H24",
            "timezone": "Australia/Sydney",
            "occurred_at": "2026-10-03T10:00:00+10:00",
        },
        recall("2026-10-04T00:00:00+00:00", "user_outcome", "outcome:H24", "user_recall"),
    ),
    row(
        "system-days-across-dst",
        {
            **OPEN,
            "outcome_code": "SYSDROP",
            "timezone": "America/New_York",
            "occurred_at": "2026-03-07T10:00:00-05:00",
        },
        recall(
            "2026-03-08T14:00:00+00:00",
            "system_outcome",
            "outcome:SYSDROP",
            "system_outcome_recall",
        ),
    ),
    row(
        "cap-window-in-days-across-dst",
        {"plan_id": "twocaps", "occurred_at": "2026-03-28T10:00:00+00:00"},
        sip("2026-03-29T09:00:00+00:00", adjustments=("max_attempts",)),
        attempts(
            "2026-03-22T10:00:00+00:00",
            "2026-03-23T10:00:00+00:00",
            "2026-03-24T10:00:00+00:00",
            "2026-03-25T10:00:00+00:00",
        ),
    ),
]


def lead(phone: tuple[str, ...], others: tuple[str, ...]) -> PhoneHistory:
    """A history with the phone's own attempts and those of the lead's other phones."""
    return PhoneHistory(
        attempts=tuple(at(text) for text in phone),
        lead_attempts=tuple(at(text) for text in others),
    )


MIDNIGHT_15TH = "2026-01-15T00:00:00+00:00"

# Per-day caps, lead caps, closed dates and not_same_day (DESIGN.md section 2, step 7). The
# default event is Wednesday 2026-01-14 10:00 UTC, SIP 486 (15 minutes); London is GMT in
# January, New York EST (UTC-5) before 2026-03-08 07:00 UTC and after 2026-11-01 06:00 UTC;
# London changes on 2026-03-29 and 2026-10-25 at 01:00 UTC. The history is the phone's earlier
# attempts; this call always counts too.
CAPS = [
    # 2 per local day: the 08:00 call and this one fill the 14th; the next local midnight.
    row(
        "day-cap-full-next-midnight",
        {"plan_id": "day_london"},
        sip(MIDNIGHT_15TH, adjustments=("max_attempts",)),
        attempts("2026-01-14T08:00:00+00:00"),
    ),
    row(
        "day-cap-yesterday-does-not-count",
        {"plan_id": "day_london"},
        sip(T0_PLUS_15M),
        attempts("2026-01-13T23:30:00+00:00"),
    ),
    # Two calls on the 14th, but the recall (00:05) already falls on the 15th, which is empty.
    row(
        "day-cap-recall-already-next-day",
        {"plan_id": "day_london", "occurred_at": "2026-01-14T23:50:00+00:00"},
        sip("2026-01-15T00:05:00+00:00"),
        attempts("2026-01-14T08:00:00+00:00"),
    ),
    # Days are local: 09:00 and 20:00 EST are both the 14th in New York (not in UTC, where
    # 20:00 EST is 01:00 on the 15th); full, so midnight EST, 05:00 UTC.
    row(
        "day-cap-local-day-not-utc-day",
        {"plan_id": "day_ny", "occurred_at": "2026-01-14T20:00:00-05:00"},
        sip("2026-01-15T05:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-01-14T09:00:00-05:00"),
    ),
    # New York's 23-hour Sunday 2026-03-08: 00:30 EST and 23:00 EDT are the same local day; the
    # recall (23:15 EDT) moves to Monday 00:00 EDT, 04:00 UTC.
    row(
        "day-cap-new-york-spring-forward-day",
        {"plan_id": "day_ny", "occurred_at": "2026-03-08T23:00:00-04:00"},
        sip("2026-03-09T04:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-03-08T00:30:00-05:00"),
    ),
    # New York's 25-hour Sunday 2026-11-01: 00:30 EDT and 23:00 EST; Monday 00:00 EST.
    row(
        "day-cap-new-york-fall-back-day",
        {"plan_id": "day_ny", "occurred_at": "2026-11-01T23:00:00-05:00"},
        sip("2026-11-02T05:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-11-01T00:30:00-04:00"),
    ),
    # London's 23-hour Sunday 2026-03-29: 00:30 GMT and 22:00 BST; Monday 00:00 BST.
    row(
        "day-cap-london-spring-forward-day",
        {"plan_id": "day_london", "occurred_at": "2026-03-29T22:00:00+01:00"},
        sip("2026-03-29T23:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-03-29T00:30:00+00:00"),
    ),
    # London's 25-hour Sunday 2026-10-25: 00:30 BST (23:30 UTC the day before) and 23:00 GMT.
    row(
        "day-cap-london-fall-back-day",
        {"plan_id": "day_london", "occurred_at": "2026-10-25T23:00:00+00:00"},
        sip("2026-10-26T00:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-10-25T00:30:00+01:00"),
    ),
    # Rolling 3 in 24 h alone would allow 12:00 (13T12:00 + 24 h); the day is full: midnight.
    row(
        "rolling-and-day-day-binds",
        {"plan_id": "rolling_and_day"},
        sip(MIDNIGHT_15TH, adjustments=("max_attempts",)),
        attempts("2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00"),
    ),
    # The 14th holds one call; 3 in 24 h waits for 13T20:00 + 24 h, still the 14th (1 call).
    row(
        "rolling-and-day-rolling-binds",
        {"plan_id": "rolling_and_day"},
        sip("2026-01-14T20:00:00+00:00", adjustments=("max_attempts",)),
        attempts("2026-01-13T20:00:00+00:00", "2026-01-13T22:00:00+00:00"),
    ),
    # Full day: midnight, then Thursday's opening.
    row(
        "day-cap-then-calling-hours",
        {"plan_id": "day_hours"},
        sip("2026-01-15T09:00:00+00:00", adjustments=("max_attempts", "calling_hours")),
        attempts("2026-01-14T08:00:00+00:00"),
    ),
    # Friday full: Saturday midnight, opening 10:00.
    row(
        "day-cap-friday-to-saturday-opening",
        {"plan_id": "day_hours", "occurred_at": "2026-01-16T15:00:00+00:00"},
        sip("2026-01-17T10:00:00+00:00", adjustments=("max_attempts", "calling_hours")),
        attempts("2026-01-16T09:00:00+00:00"),
    ),
    # Lead caps: 3 in 24 h over every phone of the lead.
    row(
        "lead-cap-two-phones",
        {"plan_id": "lead_rolling"},
        sip("2026-01-15T08:00:00+00:00", adjustments=("lead_max_attempts",)),
        lead(("2026-01-14T09:00:00+00:00",), ("2026-01-14T08:00:00+00:00",)),
    ),
    row(
        "lead-cap-three-phones",
        {"plan_id": "lead_rolling"},
        sip("2026-01-14T12:00:00+00:00", adjustments=("lead_max_attempts",)),
        lead((), ("2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00")),
    ),
    row(
        "lead-cap-under",
        {"plan_id": "lead_rolling"},
        sip(T0_PLUS_15M),
        lead((), ("2026-01-13T09:00:00+00:00", "2026-01-14T08:00:00+00:00")),
    ),
    row(
        "lead-cap-counts-the-phones-own",
        {"plan_id": "lead_rolling"},
        sip("2026-01-14T12:00:00+00:00", adjustments=("lead_max_attempts",)),
        lead(("2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00"), ()),
    ),
    row(
        "lead-cap-per-day",
        {"plan_id": "lead_day"},
        sip(MIDNIGHT_15TH, adjustments=("lead_max_attempts",)),
        lead((), ("2026-01-14T08:00:00+00:00", "2026-01-14T09:00:00+00:00")),
    ),
    row(
        "lead-cap-per-day-other-day",
        {"plan_id": "lead_day"},
        sip(T0_PLUS_15M),
        lead((), ("2026-01-13T08:00:00+00:00", "2026-01-13T09:00:00+00:00")),
    ),
    # The phone's day is full (midnight); then the lead's 3 in 24 h (08:00, 09:30 on another
    # phone, 10:00) waits for 08:00 + 24 h.
    row(
        "phone-cap-then-lead-cap",
        {"plan_id": "phone_and_lead"},
        sip("2026-01-15T08:00:00+00:00", adjustments=("max_attempts", "lead_max_attempts")),
        lead(("2026-01-14T08:00:00+00:00",), ("2026-01-14T09:30:00+00:00",)),
    ),
    # A plan without lead caps does not look at the lead's other phones.
    row(
        "no-lead-cap-other-phones-ignored",
        {"plan_id": "caps"},
        sip(T0_PLUS_15M),
        lead((), ("2026-01-13T12:00:00+00:00", "2026-01-14T08:00:00+00:00")),
    ),
    # Closed dates (2026-12-25 is a Friday, 2026-12-28 a Monday).
    row(
        "closed-date-next-midnight",
        {"plan_id": "closed", "occurred_at": "2026-12-24T23:50:00+00:00"},
        sip("2026-12-26T00:00:00+00:00", adjustments=("calling_hours",)),
    ),
    row(
        "closed-date-not-that-day",
        {"plan_id": "closed", "occurred_at": "2026-12-24T10:00:00+00:00"},
        sip("2026-12-24T10:15:00+00:00"),
    ),
    # Thursday after 17:00: Friday's opening is on a closed date; Saturday 10:00.
    row(
        "closed-date-with-hours",
        {"plan_id": "closed_hours", "occurred_at": "2026-12-24T16:50:00+00:00"},
        sip("2026-12-26T10:00:00+00:00", adjustments=("calling_hours",)),
    ),
    # Saturday after 14:00: Sunday has no hours, Monday is closed; Tuesday 09:00.
    row(
        "closed-date-after-weekend",
        {"plan_id": "closed_hours", "occurred_at": "2026-12-26T13:50:00+00:00"},
        sip("2026-12-29T09:00:00+00:00", adjustments=("calling_hours",)),
    ),
    # Saturday 2026-03-28 and Sunday 29 closed: Monday 00:00 BST, 23:00 UTC on the Sunday.
    row(
        "closed-dates-over-spring-forward",
        {"plan_id": "closed_dst", "occurred_at": "2026-03-28T10:00:00+00:00"},
        sip("2026-03-29T23:00:00+00:00", adjustments=("calling_hours",)),
    ),
    # 23:05 UTC on the 24th is 00:05 BST on Sunday 25th, closed: Monday 00:00 GMT.
    row(
        "closed-date-fall-back-day",
        {"plan_id": "closed_dst", "occurred_at": "2026-10-24T22:50:00+00:00"},
        sip("2026-10-26T00:00:00+00:00", adjustments=("calling_hours",)),
    ),
    # H24 from Friday 20:00 EST falls on Saturday 2026-03-07 (closed); Sunday's 08:00 is EDT.
    row(
        "closed-date-before-new-york-spring-forward",
        {"plan_id": "closed_ny", "outcome_code": "H24", "occurred_at": "2026-03-06T20:00:00-05:00"},
        recall(
            "2026-03-08T12:00:00+00:00",
            "user_outcome",
            "outcome:H24",
            "user_recall",
            ("calling_hours",),
        ),
    ),
    # not_same_day, whatever rule sets the time: the next local midnight at the earliest.
    row(
        "not-same-day-system-outcome",
        {**OPEN, "outcome_code": "NSDSYS"},
        recall(
            MIDNIGHT_15TH,
            "system_outcome",
            "outcome:NSDSYS",
            "system_outcome_recall",
            ("not_same_day",),
        ),
    ),
    row(
        "not-same-day-plan-system-recalls",
        {"plan_id": "nsd_plan", "outcome_code": "NSDSYS"},
        recall(
            MIDNIGHT_15TH,
            "system_outcome",
            "plan:nsd_plan",
            "system_outcome_recall",
            ("not_same_day",),
        ),
    ),
    row(
        "not-same-day-user-outcome",
        {**OPEN, "outcome_code": "NSDUSER"},
        recall(MIDNIGHT_15TH, "user_outcome", "outcome:NSDUSER", "user_recall", ("not_same_day",)),
    ),
    row(
        "not-same-day-sip-decides",
        {**OPEN, "outcome_code": "NSDINH"},
        sip(MIDNIGHT_15TH, adjustments=("not_same_day",)),
    ),
    row(
        "not-same-day-call-at-2350-recall-next-day",
        {**OPEN, "outcome_code": "NSDINH", "occurred_at": "2026-01-14T23:50:00+00:00"},
        sip("2026-01-15T00:05:00+00:00"),
    ),
    # 23:50 EST: the recall (00:50 EST) is the next local day, though the same UTC day.
    row(
        "not-same-day-local-day-not-utc-day",
        {
            **OPEN,
            "outcome_code": "NSDSYS",
            "timezone": "America/New_York",
            "occurred_at": "2026-01-14T23:50:00-05:00",
        },
        recall(
            "2026-01-15T05:50:00+00:00", "system_outcome", "outcome:NSDSYS", "system_outcome_recall"
        ),
    ),
    row(
        "not-same-day-new-york-2330",
        {
            **OPEN,
            "outcome_code": "NSDINH",
            "timezone": "America/New_York",
            "occurred_at": "2026-01-14T23:30:00-05:00",
        },
        sip("2026-01-15T05:00:00+00:00", adjustments=("not_same_day",)),
    ),
    row(
        "not-same-day-then-calling-hours",
        {"plan_id": "nsd_hours", "outcome_code": "NSDSYS"},
        recall(
            "2026-01-15T09:00:00+00:00",
            "system_outcome",
            "outcome:NSDSYS",
            "system_outcome_recall",
            ("not_same_day", "calling_hours"),
        ),
    ),
    row(
        "not-same-day-user-friday-to-saturday-opening",
        {"plan_id": "nsd_hours", "outcome_code": "NSDUSER", "occurred_at": "2026-01-16T16:30:00Z"},
        recall(
            "2026-01-17T10:00:00+00:00",
            "user_outcome",
            "outcome:NSDUSER",
            "user_recall",
            ("not_same_day", "calling_hours"),
        ),
    ),
    # The day cap already moved it off the day: not_same_day has nothing left to do.
    row(
        "not-same-day-after-day-cap",
        {"plan_id": "day_london", "outcome_code": "NSDSYS"},
        recall(
            MIDNIGHT_15TH,
            "system_outcome",
            "outcome:NSDSYS",
            "system_outcome_recall",
            ("max_attempts",),
        ),
        attempts("2026-01-14T08:00:00+00:00"),
    ),
    # On New York's 25-hour day: 20:00 EST + 1 h is still the 1st; Monday 00:00 EST.
    row(
        "not-same-day-new-york-fall-back-day",
        {
            **OPEN,
            "outcome_code": "NSDSYS",
            "timezone": "America/New_York",
            "occurred_at": "2026-11-01T20:00:00-05:00",
        },
        recall(
            "2026-11-02T05:00:00+00:00",
            "system_outcome",
            "outcome:NSDSYS",
            "system_outcome_recall",
            ("not_same_day",),
        ),
    ),
    # London's spring-forward day: Saturday 20:00 GMT + 1 h; Sunday 00:00 GMT.
    row(
        "not-same-day-london-before-spring-forward",
        {**OPEN, "outcome_code": "NSDSYS", "occurred_at": "2026-03-28T20:00:00+00:00"},
        recall(
            "2026-03-29T00:00:00+00:00",
            "system_outcome",
            "outcome:NSDSYS",
            "system_outcome_recall",
            ("not_same_day",),
        ),
    ),
]


def _check(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    call = make_event(**event)
    decision = decide(call, rules, history, at(now) if now else call.occurred_at)
    got = decision.to_json()
    assert decision.json_line() == orjson.dumps(got) + b"\n"
    explanation = got.pop("explanation")
    assert got == {
        "event_id": "e1", "phone_id": "P1", **expected, "rules_version": rules.version
    }  # fmt: skip
    assert isinstance(explanation, str)
    assert explanation.strip()


@pytest.mark.parametrize(("event", "history", "now", "expected"), PRECEDENCE)
def test_precedence(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)


@pytest.mark.parametrize(("event", "history", "now", "expected"), ADJUSTMENTS)
def test_adjustments(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)


@pytest.mark.parametrize(("event", "history", "now", "expected"), CAPS)
def test_caps_closed_dates_and_not_same_day(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)


def test_each_adjustment_explained(rules: Rules) -> None:
    call = make_event(plan_id="phone_and_lead")
    decision = decide(
        call,
        rules,
        lead(("2026-01-14T08:00:00+00:00",), ("2026-01-14T09:30:00+00:00",)),
        call.occurred_at,
    )
    assert decision.explanation == (
        "SIP 486 Busy Here recalls after 15m"
        "; moved to Thu 2026-01-15 00:00 GMT by the cap of 2 attempts per day"
        "; moved to Thu 2026-01-15 08:00 GMT by the lead's cap of 3 attempts in 24h"
    )
    call = make_event(plan_id="nsd_hours", outcome_code="NSDSYS")
    decision = decide(call, rules, PhoneHistory(), call.occurred_at)
    assert decision.explanation.endswith(
        "; moved to Thu 2026-01-15 00:00 GMT: not on the day of the call"
        "; moved to the next calling hours, Thu 2026-01-15 09:00 GMT"
    )
    call = make_event(plan_id="closed_hours", occurred_at="2026-12-24T16:50:00+00:00")
    decision = decide(call, rules, PhoneHistory(), call.occurred_at)
    assert decision.explanation.endswith(
        "; moved to Sat 2026-12-26 10:00 GMT, past the closed date 2026-12-25"
    )


def test_shipped_answer_machine_is_not_recalled_the_same_day() -> None:
    # The shipped default plan: Wednesday 10:00 GMT + 4 h is the same day; Thursday 00:00,
    # then its opening at 08:00.
    call = make_event(plan_id="default", sip_code=200, outcome_code="SYSANSMACH")
    decision = decide(call, load_rules(), PhoneHistory(), call.occurred_at)
    assert decision.to_json()["due_at"] == "2026-01-15T08:00:00+00:00"
    assert decision.adjustments == ("not_same_day", "calling_hours")


@pytest.mark.parametrize(
    ("plan", "history", "late", "moved"),
    [
        # 2 per day: the late 09:00 call makes three on the 14th; the 12:15 recall moves to the
        # next local midnight.
        pytest.param(
            "day_london", ("2026-01-14T08:00:00+00:00", "2026-01-14T12:00:00+00:00"),
            "2026-01-14T09:00:00+00:00", MIDNIGHT_15TH, id="day-cap-full",
        ),
        # One call on the 14th already: the late one makes two, and the day is full.
        pytest.param(
            "day_london", ("2026-01-14T12:00:00+00:00",),
            "2026-01-14T09:00:00+00:00", MIDNIGHT_15TH, id="day-cap-reached",
        ),
        pytest.param(
            "day_london", ("2026-01-14T12:00:00+00:00",),
            "2026-01-13T09:00:00+00:00", None, id="day-cap-other-day",
        ),
        # With the hours: midnight, then Thursday 09:00.
        pytest.param(
            "day_hours", ("2026-01-14T12:00:00+00:00",),
            "2026-01-14T09:00:00+00:00", "2026-01-15T09:00:00+00:00", id="day-cap-and-hours",
        ),
        # A lead cap counts the phone's own calls too: 08:00, 09:00 and 12:00 are 3 in 24 h,
        # so the third latest window end, 08:00 + 24 h.
        pytest.param(
            "lead_rolling", ("2026-01-14T08:00:00+00:00", "2026-01-14T12:00:00+00:00"),
            "2026-01-14T09:00:00+00:00", "2026-01-15T08:00:00+00:00", id="lead-cap",
        ),
    ],
)  # fmt: skip
def test_stale_call_moves_the_pending_recall(
    rules: Rules, plan: str, history: tuple[str, ...], late: str, moved: str | None
) -> None:
    pending = PendingRecall(at("2026-01-14T12:15:00+00:00"), "sip_code", "sip:486", "sip_recall")
    state = PhoneHistory(
        attempts=tuple(at(text) for text in history),
        last_applied_at=at("2026-01-14T12:00:00+00:00"),
        pending=pending,
    )
    call = make_event(plan_id=plan, occurred_at=late)
    decision = decide(call, rules, state, at("2026-01-14T12:05:00+00:00"))
    assert (decision.action, decision.reason) == ("stale", "stale")
    assert decision.due_at is None
    if moved is None:
        assert decision.reschedules is None
    else:
        assert decision.reschedules is not None
        assert decision.reschedules.astimezone(UTC).isoformat() == moved


@pytest.mark.parametrize(("event", "history", "now", "expected"), DST)
def test_dst(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # Sunday 2026-03-08, New York: 02:00 EST jumps to 03:00 EDT (07:00 UTC). Local 02:30
        # never happens; the first instant whose local time is inside 02:30-05:00 is 03:00 EDT.
        pytest.param(
            {"plan_id": "gap_open", "occurred_at": "2026-03-07T23:00:00-05:00"},
            sip("2026-03-08T07:00:00+00:00", adjustments=("calling_hours",)),
            id="opening-inside-gap-opens-when-clocks-jump",
        ),
        # 03:00 EDT local is after the 02:30 close: Sunday is already over, so Monday 09:00 EDT.
        pytest.param(
            {"plan_id": "gap_close", "occurred_at": "2026-03-08T03:00:00-04:00"},
            sip("2026-03-09T13:00:00+00:00", adjustments=("calling_hours",)),
            id="closing-inside-gap-closes-when-clocks-jump",
        ),
    ],
)
def test_calling_hours_boundary_in_dst_gap(
    rules: Rules, event: dict[str, Any], expected: dict[str, Any]
) -> None:
    _check(rules, event, PhoneHistory(), None, expected)


# Hardening #5: calling hours that do not exist, or exist twice, on a DST day. Worked by hand:
# London springs forward on Sun 2026-03-29 at 01:00 UTC (01:00 GMT -> 02:00 BST) and falls back
# on Sun 2026-10-25 at 01:00 UTC (02:00 BST -> 01:00 GMT: 01:00-02:00 local happens twice);
# New York springs forward on Sun 2026-03-08 at 07:00 UTC (02:00 EST -> 03:00 EDT) and falls
# back on Sun 2026-11-01 at 06:00 UTC (02:00 EDT -> 01:00 EST). Only Sunday is open.
LONDON, NEW_YORK = "Europe/London", "America/New_York"
DST_WINDOWS = [
    # Wholly in the gap: no instant of it exists, so Sunday is closed; the next Sunday.
    (LONDON, "01:00-02:00", "2026-03-28T22:15:00Z", "2026-04-05T00:00:00+00:00"),
    (NEW_YORK, "02:00-02:30", "2026-03-08T05:15:00Z", "2026-03-15T06:00:00+00:00"),
    # Starts in the gap, ends after it: opens at the end of the gap.
    (LONDON, "01:30-03:00", "2026-03-28T22:15:00Z", "2026-03-29T01:00:00+00:00"),
    (NEW_YORK, "02:30-04:00", "2026-03-08T05:15:00Z", "2026-03-08T07:00:00+00:00"),
    # Ends in the gap: open until the clocks jump (00:50 GMT is inside), closed after (02:05 BST).
    (LONDON, "00:00-01:30", "2026-03-29T00:50:00Z", "2026-03-29T00:50:00+00:00"),
    (LONDON, "00:00-01:30", "2026-03-29T01:05:00Z", "2026-04-04T23:00:00+00:00"),
    # The overlap: opens at the first occurrence (01:00 BST, 01:00 EDT)...
    (LONDON, "01:00-02:00", "2026-10-24T22:15:00Z", "2026-10-25T00:00:00+00:00"),
    (NEW_YORK, "01:00-02:00", "2026-10-31T12:00:00Z", "2026-11-01T05:00:00+00:00"),
    # ... stays open through the second (01:30 GMT, 01:30 EST), and closes at 02:00 GMT.
    (LONDON, "01:00-02:00", "2026-10-25T01:30:00Z", "2026-10-25T01:30:00+00:00"),
    (NEW_YORK, "01:00-02:00", "2026-11-01T06:30:00Z", "2026-11-01T06:30:00+00:00"),
    (LONDON, "01:00-02:00", "2026-10-25T02:00:00Z", "2026-11-01T01:00:00+00:00"),
    # Ends in the overlap: closed from 01:30 BST, open again from 01:00 GMT until 01:30 GMT.
    (LONDON, "00:30-01:30", "2026-10-25T00:35:00Z", "2026-10-25T01:00:00+00:00"),
    # Starts in the overlap: 01:30 BST first; at 01:05 GMT the clock reads before the start.
    (LONDON, "01:30-03:00", "2026-10-25T00:10:00Z", "2026-10-25T00:30:00+00:00"),
    (LONDON, "01:30-03:00", "2026-10-25T01:05:00Z", "2026-10-25T01:30:00+00:00"),
    (NEW_YORK, "01:30-03:00", "2026-11-01T06:05:00Z", "2026-11-01T06:30:00+00:00"),
    # An ordinary Sunday is what it always was.
    (LONDON, "09:00-17:00", "2026-01-10T12:00:00Z", "2026-01-11T09:00:00+00:00"),
    (NEW_YORK, "09:00-17:00", "2026-01-11T16:00:00Z", "2026-01-11T16:00:00+00:00"),
]


@pytest.mark.parametrize(("zone", "window", "moment", "expected"), DST_WINDOWS)
def test_next_opening_across_dst_changes(
    zone: str, window: str, moment: str, expected: str
) -> None:
    start, end = (int(part[:2]) * 60 + int(part[3:]) for part in window.split("-"))
    hours = CallingHours(((),) * 6 + (((start, end),),))
    local = at(moment).astimezone(pendulum.timezone(zone))
    opening = next_opening(local, hours)
    assert opening.astimezone(UTC).isoformat() == expected
    # Its local wall-clock time is inside the window.
    wall = opening.astimezone(pendulum.timezone(zone))
    assert wall.weekday() == 6
    assert start <= wall.hour * 60 + wall.minute < end


#: The issue's decisions (and New York's overlap), also checked through `recall decide`.
DST_DECISIONS = [
    (LONDON, "01:00-02:00", "2026-03-28T22:00:00Z", "2026-04-05T00:00:00+00:00",
     "Sun 2026-04-05 01:00 BST"),
    (NEW_YORK, "02:00-02:30", "2026-03-08T05:00:00Z", "2026-03-15T06:00:00+00:00",
     "Sun 2026-03-15 02:00 EDT"),
    (LONDON, "01:00-02:00", "2026-10-24T22:00:00Z", "2026-10-25T00:00:00+00:00",
     "Sun 2026-10-25 01:00 BST"),
    (NEW_YORK, "01:00-02:00", "2026-10-31T04:00:00Z", "2026-11-01T05:00:00+00:00",
     "Sun 2026-11-01 01:00 EDT"),
]  # fmt: skip


def sunday_rules(zone: str, window: str) -> str:
    """A plan ``p`` in ``zone`` open on Sundays in ``window`` only."""
    return f'[[plans]]\nid = "p"\ntimezone = "{zone}"\ncalling_hours = {{ sun = "{window}" }}\n'


@pytest.mark.parametrize(("zone", "window", "occurred_at", "due_at", "shown"), DST_DECISIONS)
def test_a_recall_into_a_dst_window(
    write_rules: Callable[..., Path],
    zone: str,
    window: str,
    occurred_at: str,
    due_at: str,
    shown: str,
) -> None:
    rules = load_rules(write_rules(sunday_rules(zone, window)))
    event = make_event(plan_id="p", occurred_at=occurred_at)
    decision = decide(event, rules, PhoneHistory(), event.occurred_at)
    assert (decision.action, decision.adjustments) == ("recall", ("calling_hours",))
    assert decision.to_json()["due_at"] == due_at
    assert decision.explanation.endswith(f"moved to the next calling hours, {shown}")


def test_plan_without_timezone_takes_the_defaults_zone(rules: Rules) -> None:
    assert rules.default_timezone == "Asia/Tokyo"
    assert rules.plans["hours_nozone"].timezone == "Asia/Tokyo"
    assert rules.plans["hours_ny"].timezone == "America/New_York"


def test_unknown_sip_code_without_class_fallback(write_rules: Callable[..., Path]) -> None:
    # Only replacing the shipped defaults can take a class fallback away.
    defaults = write_rules(
        """
[defaults]
timezone = "UTC"

[[sip_codes]]
code = 486
description = "Busy Here"
recall = true
recall_after = { minutes = 15 }

[[sip_codes]]
code = "6xx"
description = "Other global failure"
recall = false

[[plans]]
id = "default"
""",
        name="defaults.toml",
    )
    rules = load_rules(defaults=defaults)
    now = at("2026-01-14T10:00:00+00:00")
    for code in (499, 599):
        decision = decide(make_event(sip_code=code), rules, PhoneHistory(), now)
        got = decision.to_json()
        got.pop("explanation")
        assert got == {
            "event_id": "e1",
            "phone_id": "P1",
            **suppress("sip_code", f"sip:{code}", "unknown_sip_code"),
            "rules_version": rules.version,
        }
    busy = decide(make_event(), rules, PhoneHistory(), now).to_json()
    assert (busy["action"], busy["due_at"]) == ("recall", "2026-01-14T10:15:00+00:00")
    fallback = decide(make_event(sip_code=699), rules, PhoneHistory(), now).to_json()
    assert (fallback["reason"], fallback["rule"]) == ("sip_no_recall", "sip:6xx")


# --- supersede, is_system_recall, JSON shape ----------------------------------------------------

PENDING = PendingRecall(
    due_at=at("2026-01-14T12:00:00+00:00"), source="sip_code", rule="sip:487", reason="sip_recall"
)


@pytest.mark.parametrize(
    ("event", "action"),
    [
        pytest.param({"plan_id": "open"}, "recall", id="sip-recall"),
        pytest.param({"plan_id": "open", "outcome_code": "CALLBACK"}, "recall", id="user-recall"),
        pytest.param({"plan_id": "open", "sip_code": 404}, "suppress", id="sip-suppress"),
        pytest.param({"plan_id": "off"}, "suppress", id="can-recall-off"),
        pytest.param({"plan_id": "open", "outcome_code": "DNC"}, "suppress", id="user-final"),
    ],
)
def test_supersedes_pending_recall(rules: Rules, event: dict[str, Any], action: str) -> None:
    call = make_event(**event)
    decision = decide(call, rules, PhoneHistory(pending=PENDING), call.occurred_at)
    assert decision.action == action
    assert decision.supersedes == PENDING
    assert "supersedes" not in decision.to_json()
    alone = decide(call, rules, PhoneHistory(), call.occurred_at)
    assert alone.supersedes is None
    assert alone.action == action


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param({"plan_id": "open"}, True, id="sip-recall"),
        pytest.param({"plan_id": "open", "outcome_code": "SYSANSMACH"}, True, id="system-recall"),
        pytest.param(
            {"plan_id": "sysplan", "outcome_code": "SYSANSMACH"}, True, id="plan-system-recall"
        ),
        pytest.param({"plan_id": "open", "outcome_code": "CALLBACK"}, False, id="user-recall"),
        pytest.param(
            {"plan_id": "off", "outcome_code": "CALLBACK"}, False, id="user-recall-plan-off"
        ),
        pytest.param({"plan_id": "open", "sip_code": 404}, False, id="suppress"),
    ],
)
def test_is_system_recall(rules: Rules, event: dict[str, Any], expected: bool) -> None:
    call = make_event(**event)
    assert decide(call, rules, PhoneHistory(), call.occurred_at).is_system_recall is expected


def test_json_shape(rules: Rules) -> None:
    call = make_event(
        event_id="ev-77",
        phone_id="P9",
        plan_id="hours_ny",
        occurred_at="2026-01-14T22:00:00-05:00",
    )
    data = decide(call, rules, PhoneHistory(), call.occurred_at).to_json()
    assert list(data) == [
        "event_id",
        "phone_id",
        "action",
        "due_at",
        "source",
        "rule",
        "reason",
        "adjustments",
        "warnings",
        "explanation",
        "rules_version",
    ]
    assert data["rules_version"] == rules.version
    assert data["event_id"] == "ev-77"
    assert data["phone_id"] == "P9"
    assert data["due_at"] == "2026-01-15T14:00:00+00:00"
    assert isinstance(data["adjustments"], list)
    assert isinstance(data["warnings"], list)
    suppressed = decide(make_event(sip_code=404), rules, PhoneHistory(), call.occurred_at)
    assert suppressed.to_json()["due_at"] is None
    assert set(suppressed.to_json()) == set(data)


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-01-14T10:00:00.000001+00:00",
        "2026-01-14T10:00:00.5-05:00",
        "2026-07-01T23:59:59+14:00",
    ],
)
def test_json_line_is_the_json_form_encoded(rules: Rules, occurred_at: str) -> None:
    """Replay writes ``json_line``: byte for byte the JSON form, microseconds of the due time
    included, whether the due time came as the engine's microseconds or as a datetime."""
    call = make_event(plan_id="open", occurred_at=occurred_at)
    decision = decide(call, rules, PhoneHistory(), call.occurred_at)
    assert decision.due_us is not None
    as_datetime = msgspec.structs.replace(decision, due_us=None)
    for each in (decision, as_datetime):
        assert each.json_line() == orjson.dumps(each.to_json()) + b"\n"
    assert decision.json_line() == as_datetime.json_line()


def test_duplicate_and_stale_ignore_pending(rules: Rules) -> None:
    call = make_event(plan_id="open")
    duplicate = decide(
        call, rules, PhoneHistory(pending=PENDING, seen_event_ids={"e1"}), call.occurred_at
    )
    stale = decide(
        call,
        rules,
        PhoneHistory(pending=PENDING, last_applied_at=at("2026-01-14T11:00:00+00:00")),
        call.occurred_at,
    )
    assert (duplicate.action, duplicate.applies, duplicate.supersedes) == ("duplicate", False, None)
    assert (stale.action, stale.applies, stale.supersedes) == ("stale", False, None)


@pytest.mark.parametrize(
    ("event", "history", "action"),
    [
        pytest.param({"plan_id": "open"}, PhoneHistory(), "recall", id="recall"),
        pytest.param({"sip_code": 404}, PhoneHistory(), "suppress", id="suppress"),
        pytest.param({}, PhoneHistory(seen_event_ids={"e1"}), "duplicate", id="duplicate"),
        pytest.param(
            {"plan_id": "open"},
            PhoneHistory(pending=PENDING, last_applied_at=at("2026-01-14T11:00:00+00:00")),
            "stale",
            id="stale",
        ),
        pytest.param(
            {"plan_id": "caps"},
            PhoneHistory(
                attempts=(at("2026-01-14T10:30:00+00:00"), at("2026-01-14T10:45:00+00:00")),
                pending=PENDING,
                last_applied_at=at("2026-01-14T11:00:00+00:00"),
            ),
            "stale",
            id="stale-that-moves-the-pending-recall",
        ),
        pytest.param({"plan_id": "nope"}, PhoneHistory(), "reject", id="reject"),
    ],
)
def test_every_decision_names_the_version_of_its_rules(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    action: str,
    request: pytest.FixtureRequest,
) -> None:
    decision = decide(make_event(**event), rules, history, at("2026-01-14T10:00:00+00:00"))
    assert decision.action == action
    assert decision.rules_version == rules.version
    assert list(decision.to_json().items())[-1] == ("rules_version", rules.version)
    if "moves" in request.node.callspec.id:
        assert decision.reschedules is not None
    shipped = load_rules()  # other rules: their own version, whatever the decision
    again = decide(make_event(**event), shipped, history, at("2026-01-14T10:00:00+00:00"))
    assert again.rules_version == shipped.version != rules.version


def test_decide_does_not_use_the_wall_clock(rules: Rules) -> None:
    # Long after the event: a recall already due fires "now", the now passed in.
    call = make_event(plan_id="open")
    later = at("2030-06-01T12:34:56+00:00")
    assert decide(call, rules, PhoneHistory(), later).to_json()["due_at"] == (
        "2030-06-01T12:34:56+00:00"
    )


# --- Agent callbacks (DESIGN.md section 2, step 3) ----------------------------------------------

# The shipped CALLBACK: user, recall = "callback", recall_after 1 day. The default event occurs on
# Wednesday 2026-01-14 10:00 UTC.
CALLBACK = {**OPEN, "sip_code": 200, "outcome_code": "CALLBACK"}
IGNORED = ("callback_at_ignored",)


def booked(due_at: str, adjustments: tuple[str, ...] = ()) -> dict[str, Any]:
    return recall(due_at, "user_outcome", "outcome:CALLBACK", "callback", adjustments)


CALLBACKS = [
    row(
        "booked",
        {**CALLBACK, "callback_at": "2026-01-15T15:30:00+00:00"},
        booked("2026-01-15T15:30:00+00:00"),
    ),
    row(
        "booked-other-offset",
        {**CALLBACK, "callback_at": "2026-01-15T10:30:00-05:00"},
        booked("2026-01-15T15:30:00+00:00"),
    ),
    row(
        "missing-callback-at",
        CALLBACK,
        recall(
            "2026-01-15T10:00:00+00:00",
            "user_outcome",
            "outcome:CALLBACK",
            "user_recall",
            warnings=MISSING,
        ),
    ),
    row(
        "ignored-on-sip-recall",
        {**OPEN, "callback_at": "2026-01-15T15:30:00+00:00"},
        recall(T0_PLUS_15M, "sip_code", "sip:486", "sip_recall", warnings=IGNORED),
    ),
    row(
        "ignored-on-user-after",
        {**OPEN, "outcome_code": "NOTNOW", "callback_at": "2026-01-15T15:30:00+00:00"},
        recall(
            "2026-01-14T14:00:00+00:00",
            "user_outcome",
            "outcome:NOTNOW",
            "user_recall",
            warnings=IGNORED,
        ),
    ),
    row(
        "ignored-on-user-final",
        {**OPEN, "outcome_code": "DNC", "callback_at": "2026-01-15T15:30:00+00:00"},
        suppress("user_outcome", "outcome:DNC", "user_final", warnings=IGNORED),
    ),
    row(
        "ignored-on-unknown-outcome",
        {**OPEN, "outcome_code": "BOGUS", "callback_at": "2026-01-15T15:30:00+00:00"},
        recall(
            T0_PLUS_15M,
            "sip_code",
            "sip:486",
            "sip_recall",
            warnings=("unknown_outcome:BOGUS", *IGNORED),
        ),
    ),
    row(
        "past-before-the-call-due-now",
        {**CALLBACK, "callback_at": "2026-01-14T09:00:00+00:00"},
        booked("2026-01-14T10:00:00+00:00"),
    ),
    row(
        "past-when-decided-due-now",
        {**CALLBACK, "callback_at": "2026-01-14T12:00:00+00:00"},
        booked("2026-01-14T13:00:00+00:00"),
        now="2026-01-14T13:00:00+00:00",
    ),
    row(
        "not-gated-by-can-recall",
        {**CALLBACK, "plan_id": "off", "callback_at": "2026-01-15T15:30:00+00:00"},
        booked("2026-01-15T15:30:00+00:00"),
    ),
    row(
        "not-held-by-max-recalls",
        {**CALLBACK, "plan_id": "capped", "callback_at": "2026-01-15T15:30:00+00:00"},
        booked("2026-01-15T15:30:00+00:00"),
        PhoneHistory(system_recalls=9),
    ),
    # Retry-After (2 days from 10:00) is a floor under the booked time.
    row(
        "retry-after-floor",
        {**CALLBACK, "callback_at": "2026-01-15T15:30:00+00:00", "retry_after_s": 172_800},
        booked("2026-01-16T10:00:00+00:00", ("retry_after",)),
    ),
    # Attempts at 08:00 and 09:00 and this one: the third latest window end, 15th 08:00.
    row(
        "max-attempts",
        {**CALLBACK, "plan_id": "caps", "callback_at": "2026-01-14T12:00:00+00:00"},
        booked("2026-01-15T08:00:00+00:00", ("max_attempts",)),
        attempts("2026-01-14T08:00:00+00:00", "2026-01-14T09:00:00+00:00"),
    ),
    # Wednesday 18:30 EST is after 17:00: Thursday 09:00 EST.
    row(
        "outside-calling-hours",
        {**CALLBACK, "plan_id": "hours_ny", "callback_at": "2026-01-14T18:30:00-05:00"},
        booked("2026-01-15T14:00:00+00:00", ("calling_hours",)),
    ),
    # Booked on Saturday 2026-03-07 for Sunday evening (closed) across New York's spring
    # forward: Monday 09:00 EDT, 13:00 UTC (it would be 14:00 UTC in EST).
    row(
        "new-york-across-dst-to-calling-hours",
        {
            **CALLBACK,
            "plan_id": "hours_ny",
            "occurred_at": "2026-03-07T10:00:00-05:00",
            "callback_at": "2026-03-08T20:00:00-04:00",
        },
        booked("2026-03-09T13:00:00+00:00", ("calling_hours",)),
    ),
    # Monday 09:30 EDT is open (it would be 08:30, closed, in EST): kept.
    row(
        "new-york-after-dst-inside-calling-hours",
        {
            **CALLBACK,
            "plan_id": "hours_ny",
            "occurred_at": "2026-03-07T10:00:00-05:00",
            "callback_at": "2026-03-09T13:30:00+00:00",
        },
        booked("2026-03-09T13:30:00+00:00"),
    ),
    # Plan "lunch" calls on Wednesdays only: booked on Saturday 2026-03-28 for the Sunday of
    # London's spring forward, moved to Wednesday 2026-04-01 09:00 BST, 08:00 UTC.
    row(
        "london-across-dst-to-calling-hours",
        {
            **CALLBACK,
            "plan_id": "lunch",
            "occurred_at": "2026-03-28T10:00:00+00:00",
            "callback_at": "2026-03-29T08:00:00+01:00",
        },
        booked("2026-04-01T08:00:00+00:00", ("calling_hours",)),
    ),
    # London's fall back: booked for Sunday 2026-10-25 10:00 GMT from Saturday in BST.
    row(
        "london-across-fall-back",
        {
            **CALLBACK,
            "occurred_at": "2026-10-24T10:00:00+01:00",
            "callback_at": "2026-10-25T10:00:00+00:00",
        },
        booked("2026-10-25T10:00:00+00:00"),
    ),
]


@pytest.mark.parametrize(("event", "history", "now", "expected"), CALLBACKS)
def test_callbacks(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)


def test_callback_explanation_and_personal_agent(rules: Rules) -> None:
    call = make_event(**CALLBACK, callback_at="2026-01-15T15:30:00+00:00", callback_agent="agent-7")
    decision = decide(call, rules, PhoneHistory(), call.occurred_at)
    assert decision.agent == "agent-7"
    assert "agent" not in decision.to_json()
    assert decision.explanation == (
        "user outcome CALLBACK (Customer asked to be called back) booked a callback"
        " (agent agent-7) for Thu 2026-01-15 15:30 GMT"
    )
    anyone = decide(make_event(**CALLBACK), rules, PhoneHistory(), call.occurred_at)
    assert anyone.agent is None
    assert anyone.explanation == (
        "user outcome CALLBACK (Customer asked to be called back) booked a callback with no"
        " callback_at, so recalls after 1d"
    )
    # The agent of an event whose outcome is not a callback is not kept.
    busy = decide(make_event(**OPEN, callback_agent="agent-7"), rules, PhoneHistory(), NOW_T0)
    assert (busy.reason, busy.agent, busy.warnings) == ("sip_recall", None, ())


NOW_T0 = at("2026-01-14T10:00:00+00:00")
# A personal callback booked for Thursday 2026-01-15 15:30 UTC, pending.
PENDING_CALLBACK = PendingRecall(
    at("2026-01-15T15:30:00+00:00"), "user_outcome", "outcome:CALLBACK", "callback", "agent-7"
)
BEFORE_DUE = PhoneHistory(pending=PENDING_CALLBACK)
KEPT = "callback_pending"

CALLBACK_PENDING = [
    row(
        "system-sip-recall-before-due",
        OPEN,
        suppress("sip_code", "outcome:CALLBACK", KEPT),
        BEFORE_DUE,
    ),
    row(
        "system-sip-final-before-due",
        {**OPEN, "sip_code": 404},
        suppress("sip_code", "outcome:CALLBACK", KEPT),
        BEFORE_DUE,
    ),
    row(
        "system-outcome-before-due",
        {**OPEN, "outcome_code": "SYSANSMACH", "sip_code": 200},
        suppress("system_outcome", "outcome:CALLBACK", KEPT),
        BEFORE_DUE,
    ),
    row(
        "plan-can-recall-off-before-due",
        {"plan_id": "off"},
        suppress(None, "outcome:CALLBACK", KEPT),
        BEFORE_DUE,
    ),
    row(
        "user-inherit-is-system-before-due",
        {**OPEN, "outcome_code": "BOGUS"},
        suppress("sip_code", "outcome:CALLBACK", KEPT, warnings=("unknown_outcome:BOGUS",)),
        BEFORE_DUE,
    ),
    row(
        "one-second-before-due",
        {**OPEN, "occurred_at": "2026-01-15T15:29:59+00:00"},
        suppress("sip_code", "outcome:CALLBACK", KEPT),
        BEFORE_DUE,
    ),
    row(
        "user-recall-replaces",
        {**OPEN, "outcome_code": "NOTNOW"},
        recall("2026-01-14T14:00:00+00:00", "user_outcome", "outcome:NOTNOW", "user_recall"),
        BEFORE_DUE,
    ),
    row(
        "user-final-replaces",
        {**OPEN, "outcome_code": "DNC"},
        suppress("user_outcome", "outcome:DNC", "user_final"),
        BEFORE_DUE,
    ),
    row(
        "new-callback-replaces",
        {**CALLBACK, "callback_at": "2026-01-16T11:00:00+00:00"},
        booked("2026-01-16T11:00:00+00:00"),
        BEFORE_DUE,
    ),
    row(
        "system-result-at-due-time-normal",
        {**OPEN, "occurred_at": "2026-01-15T15:30:00+00:00"},
        sip("2026-01-15T15:45:00+00:00"),
        BEFORE_DUE,
    ),
    row(
        "system-result-after-due-normal",
        {**OPEN, "occurred_at": "2026-01-15T16:00:00+00:00"},
        sip("2026-01-15T16:15:00+00:00"),
        BEFORE_DUE,
    ),
]


@pytest.mark.parametrize(("event", "history", "now", "expected"), CALLBACK_PENDING)
def test_callback_pending(
    rules: Rules,
    event: dict[str, Any],
    history: PhoneHistory,
    now: str | None,
    expected: dict[str, Any],
) -> None:
    _check(rules, event, history, now, expected)
    call = make_event(**event)
    decision = decide(call, rules, history, call.occurred_at)
    # Kept: the callback is not superseded; anything else replaces it as usual.
    kept = decision.reason == KEPT
    assert decision.keeps_pending is kept
    assert decision.supersedes == (None if kept else PENDING_CALLBACK)
    assert decision.applies  # an applied result either way: it counts as an attempt


def test_callback_pending_explanation(rules: Rules) -> None:
    call = make_event(**OPEN)
    decision = decide(call, rules, BEFORE_DUE, call.occurred_at)
    assert decision.explanation == (
        "SIP 486 Busy Here recalls after 15m, but the callback for Thu 2026-01-15 15:30 GMT"
        " (outcome:CALLBACK) is pending: no recall; the callback keeps its time"
    )
