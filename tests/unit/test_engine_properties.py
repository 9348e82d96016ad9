"""Property tests of ``worker.engine.decide`` over generated events, histories and clocks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import at, make_event
from worker.domain import engine
from worker.domain.engine import Decision, PendingRecall, PhoneHistory, decide, next_opening
from worker.domain.events import CallResult
from worker.domain.rules import CallingHours, Duration, Plan, Rules, load_rules
from worker.domain.zones import ZoneTable, epoch_us, zone_table

ZONES = (
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
)
RULES = load_rules()
PLAN_IDS = sorted(RULES.plans)
KNOWN_OUTCOMES = sorted(RULES.outcomes)
UNKNOWN_OUTCOMES = ("BOGUS", "sysbusy", "X-1")
# The codes dialers see most, so that plenty of examples recall; the full range is drawn too.
COMMON_SIP_CODES = (486, 480, 487, 408, 503, 404, 603)
ACTIONS = {"recall", "suppress", "stale", "duplicate", "reject"}
FIRST = datetime(2026, 1, 1)  # noqa: DTZ001 - hypothesis bounds are naive; made UTC below
LAST = datetime(2027, 12, 31, 23, 59, 59)  # noqa: DTZ001

SETTINGS = settings(max_examples=200, deadline=None)


def _transition_days(zone: str) -> list[datetime]:
    """Noon UTC of each day in 2026-2027 on which ``zone``'s UTC offset changes."""
    tz = ZoneInfo(zone)
    days = []
    day = datetime(2026, 1, 1, 12, tzinfo=UTC)
    offset = day.astimezone(tz).utcoffset()
    while day.year < 2028:
        day += timedelta(days=1)
        current = day.astimezone(tz).utcoffset()
        if current != offset:
            days.append(day)
            offset = current
    return days


TRANSITIONS = sorted({moment for zone in ZONES for moment in _transition_days(zone)})


def instants() -> st.SearchStrategy[datetime]:
    """UTC instants in 2026-2027, half of them in the 8 days before a DST change."""
    uniform = st.datetimes(FIRST, LAST).map(lambda moment: moment.replace(tzinfo=UTC))
    near_dst = st.builds(
        lambda change, seconds: change - timedelta(seconds=seconds),
        st.sampled_from(TRANSITIONS),
        st.integers(0, 8 * 86400),
    )
    return st.one_of(uniform, near_dst)


@dataclass(frozen=True)
class Scenario:
    event: CallResult
    history: PhoneHistory
    now: datetime

    @property
    def plan(self) -> Plan:
        return RULES.plans[self.event.plan_id]

    @property
    def zone(self) -> str:
        return self.event.timezone or self.plan.timezone or RULES.default_timezone


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    instant = draw(instants())
    written_in = ZoneInfo(draw(st.sampled_from(ZONES)))
    event = make_event(
        plan_id=draw(st.sampled_from(PLAN_IDS)),
        sip_code=draw(st.integers(100, 699) | st.sampled_from(COMMON_SIP_CODES)),
        occurred_at=instant.astimezone(written_in).isoformat(),
        outcome_code=draw(st.none() | st.sampled_from(KNOWN_OUTCOMES + list(UNKNOWN_OUTCOMES))),
        timezone=draw(st.none() | st.sampled_from(ZONES)),
        retry_after_s=draw(st.none() | st.integers(0, 3 * 86400)),
        callback_at=draw(
            st.none()
            | st.integers(-86400, 5 * 86400).map(
                lambda seconds: (instant + timedelta(seconds=seconds)).isoformat()
            )
        ),
        callback_agent=draw(st.none() | st.just("agent-7")),
    )
    earlier = draw(st.lists(st.integers(1, 10 * 86400), max_size=10))
    last_applied = draw(st.none() | st.integers(-2 * 86400, 3600))
    pending = draw(st.none() | st.integers(-86400, 2 * 86400))
    history = PhoneHistory(
        attempts=tuple(instant - timedelta(seconds=seconds) for seconds in earlier),
        last_applied_at=None if last_applied is None else instant + timedelta(seconds=last_applied),
        system_recalls=draw(st.integers(0, 12)),
        pending=None
        if pending is None
        else draw(
            st.sampled_from(
                [
                    PendingRecall(
                        instant + timedelta(seconds=pending), "sip_code", "sip:486", "sip_recall"
                    ),
                    PendingRecall(
                        instant + timedelta(seconds=pending),
                        "user_outcome",
                        "outcome:CALLBACK",
                        "callback",
                        "agent-7",
                    ),
                ]
            )
        ),
        seen_event_ids=frozenset({"e1"}) if draw(st.integers(0, 19)) == 7 else frozenset({"e0"}),
    )
    now = instant + timedelta(seconds=draw(st.integers(0, 3 * 86400)))
    return Scenario(event, history, now)


def _decide(scenario: Scenario) -> Decision:
    return decide(scenario.event, RULES, scenario.history, scenario.now)


@SETTINGS
@given(scenarios())
def test_action_and_due_at_agree(scenario: Scenario) -> None:
    decision = _decide(scenario)
    event, history = scenario.event, scenario.history
    assert decision.action in ACTIONS
    assert (decision.due_at is not None) == (decision.action == "recall")
    assert (decision.to_json()["due_at"] is not None) == (decision.action == "recall")
    if decision.due_at is not None:
        assert decision.to_json()["due_at"].endswith("+00:00")
    if "e1" in history.seen_event_ids:
        assert decision.action == "duplicate"
    elif history.last_applied_at is not None and event.occurred_at < history.last_applied_at:
        assert decision.action == "stale"
    else:
        assert decision.action in ("recall", "suppress")
        outcome = RULES.outcomes.get(event.outcome_code or "")
        unknown = event.outcome_code is not None and outcome is None
        callback = outcome is not None and outcome.recall == "callback"
        by_user = outcome is not None and outcome.kind == "user" and outcome.recall != "inherit"
        pending = history.pending
        if (
            pending is not None
            and pending.reason == "callback"
            and event.occurred_at < pending.due_at
            and not by_user
        ):
            # A system rule never replaces a callback not yet due.
            assert (decision.action, decision.reason) == ("suppress", "callback_pending")
            assert decision.supersedes is None
        else:
            assert decision.supersedes == history.pending
        expected = (f"unknown_outcome:{event.outcome_code}",) if unknown else ()
        if event.callback_at is not None and not callback:
            expected += ("callback_at_ignored",)
        if callback:
            assert decision.action == "recall"
            if event.callback_at is None:
                expected += ("callback_at_missing",)
            else:
                assert decision.reason == "callback"
                assert decision.agent == event.callback_agent
        assert decision.warnings == expected


@SETTINGS
@given(scenarios())
def test_recall_never_before_occurred_at_or_now(scenario: Scenario) -> None:
    decision = _decide(scenario)
    if decision.action == "recall":
        assert decision.due_at is not None
        assert decision.due_at >= scenario.event.occurred_at
        assert decision.due_at >= scenario.now


@SETTINGS
@given(scenarios())
def test_recall_inside_calling_hours(scenario: Scenario) -> None:
    decision = _decide(scenario)
    hours = scenario.plan.calling_hours
    if decision.action != "recall" or hours is None:
        return
    assert decision.due_at is not None
    local = pendulum.instance(decision.due_at).in_timezone(scenario.zone)
    minutes = local.hour * 60 + local.minute
    ranges = hours.days[local.weekday()]
    assert any(start <= minutes < end for start, end in ranges), (local, ranges)


@st.composite
def calling_hours(draw: st.DrawFn) -> CallingHours:
    """Up to two ranges a day, on quarter hours, most of them among the hours DST changes skip
    or repeat (00:00-05:00), some anywhere; at least one day open."""
    days: list[tuple[tuple[int, int], ...]] = []
    for _ in range(7):
        ranges: list[tuple[int, int]] = []
        cursor = 0
        for _ in range(draw(st.integers(0, 2))):
            start = cursor + draw(st.integers(0, 12) | st.integers(0, 95)) * 15
            if start >= 24 * 60:
                break
            cursor = min(start + draw(st.integers(1, 16)) * 15, 24 * 60)
            ranges.append((start, cursor))
        days.append(tuple(ranges))
    if not any(days):
        days[draw(st.integers(0, 6))] = ((60, 120),)
    return CallingHours(tuple(days))


def _open(stamp: float, zone: str, hours: CallingHours) -> bool:
    """Whether the local clock (the standard library's zoneinfo) reads inside the hours then."""
    local = datetime.fromtimestamp(stamp, ZoneInfo(zone))
    seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    return any(start * 60 <= seconds < end * 60 for start, end in hours.days[local.weekday()])


def _change_instant(noon: datetime, zone: str) -> datetime:
    """The instant ``zone``'s offset changed in the day before ``noon`` (to the second)."""
    tz = ZoneInfo(zone)
    low, high = noon - timedelta(days=1), noon
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
            low = middle
        else:
            high = middle
    return high


CHANGES = {zone: [_change_instant(day, zone) for day in _transition_days(zone)] for zone in ZONES}


@st.composite
def zone_and_instant(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone, and an instant anywhere or from a day and a half before one of its own DST
    changes to a few hours after it."""
    zone = draw(st.sampled_from(ZONES))
    if not CHANGES[zone] or draw(st.integers(0, 3)) == 0:
        return zone, draw(instants())
    change = draw(st.sampled_from(CHANGES[zone]))
    return zone, change + timedelta(minutes=draw(st.integers(-36 * 60, 6 * 60)))


@settings(max_examples=500, deadline=None)
@given(where=zone_and_instant(), hours=calling_hours())
def test_next_opening_is_the_first_instant_inside_the_hours(
    where: tuple[str, datetime], hours: CallingHours
) -> None:
    # Hardening #5: whatever DST does to the ranges. Ranges and offset changes fall on whole
    # minutes, so an open instant before the opening would show on a whole minute (or at start).
    zone, instant = where
    moment = instant.astimezone(pendulum.timezone(zone))
    opening = next_opening(moment, hours)
    start, found = moment.timestamp(), opening.timestamp()
    assert found >= start
    assert _open(found, zone, hours), (moment, opening)
    assert (found == start) == _open(start, zone, hours)
    first_minute = int(start // 60 + 1) * 60
    assert not any(_open(stamp, zone, hours) for stamp in range(first_minute, int(found), 60))


@settings(max_examples=500, deadline=None)
@given(
    where=zone_and_instant(),
    hours=calling_hours(),
    sip_code=st.sampled_from(COMMON_SIP_CODES),
    outcome_code=st.none() | st.sampled_from(KNOWN_OUTCOMES),
    retry_after_s=st.none() | st.integers(0, 3 * 86400),
    earlier=st.lists(st.integers(1, 10 * 86400), max_size=6),
    late_by=st.integers(0, 3 * 86400),
)
def test_a_recall_always_falls_inside_the_calling_hours(
    where: tuple[str, datetime],
    hours: CallingHours,
    sip_code: int,
    outcome_code: str | None,
    retry_after_s: int | None,
    earlier: list[int],
    late_by: int,
) -> None:
    # Hardening #5: a recall's due time is read inside the hours on the phone's local clock,
    # whatever the caps, Retry-After and DST changes do to it.
    zone, instant = where
    plan = replace(RULES.plans["default"], calling_hours=hours)
    rules = replace(RULES, plans={**RULES.plans, plan.id: plan})
    event = make_event(
        plan_id=plan.id, sip_code=sip_code, outcome_code=outcome_code, timezone=zone,
        occurred_at=instant.isoformat(), retry_after_s=retry_after_s,
    )  # fmt: skip
    history = PhoneHistory(attempts=tuple(instant - timedelta(seconds=s) for s in earlier))
    decision = decide(event, rules, history, instant + timedelta(seconds=late_by))
    if decision.action != "recall":
        return
    assert decision.due_at is not None
    assert _open(decision.due_at.timestamp(), zone, hours), decision


def _check_caps(plan: Plan, zone: str, times: list[datetime], due: datetime) -> None:
    for cap in plan.max_attempts:
        inside = [
            a for a in times if cap.within.add_to(pendulum.instance(a).in_timezone(zone)) > due
        ]
        assert len(inside) <= cap.count - 1, (str(cap), [str(a) for a in inside], str(due))


@SETTINGS
@given(scenarios())
def test_recall_never_breaks_a_cap(scenario: Scenario) -> None:
    decision = _decide(scenario)
    if decision.action != "recall":
        return
    assert decision.due_at is not None
    times = [*scenario.history.attempts, scenario.event.occurred_at]
    _check_caps(scenario.plan, scenario.zone, times, decision.due_at)


@SETTINGS
@given(scenarios())
def test_same_inputs_same_decision(scenario: Scenario) -> None:
    first = _decide(scenario)
    again = decide(make_event(**scenario.event.to_json()), RULES, scenario.history, scenario.now)
    assert first == again
    assert first.to_json() == again.to_json()


@SETTINGS
@given(scenarios())
def test_system_recalls_respect_the_plan(scenario: Scenario) -> None:
    decision = _decide(scenario)
    if not decision.is_system_recall:
        return
    plan = scenario.plan
    assert plan.can_recall
    assert plan.max_recalls is None or scenario.history.system_recalls < plan.max_recalls
    assert decision.source in ("system_outcome", "sip_code")


# --- calendar days and elapsed hours across DST --------------------------------------------------

DST_RULES = """
[[outcomes]]
code = "DAY1"
kind = "user"
description = "one day"
recall = "after"
recall_after = { days = 1 }

[[outcomes]]
code = "DAY2"
kind = "user"
description = "two days"
recall = "after"
recall_after = { days = 2 }

[[outcomes]]
code = "DAY7"
kind = "user"
description = "a week"
recall = "after"
recall_after = { days = 7 }

[[outcomes]]
code = "H25M30"
kind = "user"
description = "25 and a half hours"
recall = "after"
recall_after = { hours = 25, minutes = 30 }

[[plans]]
id = "open"
timezone = "Europe/London"
"""


@pytest.fixture(scope="module")
def dst_rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    path: Path = tmp_path_factory.mktemp("dst") / "rules.toml"
    path.write_text(DST_RULES, encoding="utf-8")
    return load_rules(path)


def _single_wall_time(naive: datetime, zone: str) -> bool:
    """True if the local wall-clock time happens exactly once in ``zone`` (no gap, no fold)."""
    tz = ZoneInfo(zone)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        return False
    return first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


@SETTINGS
@given(
    instant=instants(),
    zone=st.sampled_from(ZONES),
    days=st.sampled_from([1, 2, 7]),
    via_event=st.booleans(),
)
def test_calendar_days_keep_wall_clock(
    dst_rules: Rules, instant: datetime, zone: str, days: int, via_event: bool
) -> None:
    local = instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    target = local + timedelta(days=days)  # naive: same wall-clock time, `days` dates later
    if not _single_wall_time(target, zone):
        return  # a target inside a gap or a fold has no single answer
    event = make_event(
        plan_id="open",
        outcome_code=f"DAY{days}",
        occurred_at=instant.isoformat(),
        timezone=zone if via_event or zone != "Europe/London" else None,
    )
    decision = decide(event, dst_rules, PhoneHistory(), event.occurred_at)
    assert decision.due_at is not None
    due = decision.due_at.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
    assert due == target


@SETTINGS
@given(instant=instants(), zone=st.sampled_from(ZONES))
def test_hours_and_minutes_are_elapsed_time(dst_rules: Rules, instant: datetime, zone: str) -> None:
    event = make_event(
        plan_id="open", outcome_code="H25M30", occurred_at=instant.isoformat(), timezone=zone
    )
    decision = decide(event, dst_rules, PhoneHistory(), event.occurred_at)
    assert decision.due_at is not None
    elapsed = decision.due_at.astimezone(UTC) - instant.astimezone(UTC)
    assert elapsed == timedelta(hours=25, minutes=30)


def test_cap_with_attempts_in_the_repeated_hour(tmp_path: Path) -> None:
    # New York falls back on 2026-11-01: 01:00-02:00 local happens twice. Attempt A at
    # 01:30 EDT (05:30 UTC) is earlier than attempt B at 01:10 EST (06:10 UTC), but A + 1 day
    # (2026-11-02 01:30 EST) is later than B + 1 day (01:10 EST). With a cap of 2 in 1 day, the
    # recall must wait until only one attempt's window is still open.
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[plans]]\nid = "cap"\ntimezone = "America/New_York"\n'
        "max_attempts = [ { count = 2, within = { days = 1 } } ]\n",
        encoding="utf-8",
    )
    rules = load_rules(path)
    event = make_event(plan_id="cap", occurred_at="2026-11-01T06:20:00+00:00")
    history = PhoneHistory(
        attempts=(at("2026-11-01T05:30:00+00:00"), at("2026-11-01T06:10:00+00:00"))
    )
    decision = decide(event, rules, history, event.occurred_at)
    assert decision.due_at is not None
    times = [*history.attempts, event.occurred_at]
    _check_caps(rules.plans["cap"], "America/New_York", times, decision.due_at)
    # Windows end at A: 01:30 EST, the event: 01:20 EST, B: 01:10 EST (2026-11-02). The earliest
    # recall leaving only one window open is the second-latest end, 01:20 EST.
    assert decision.to_json()["due_at"] == "2026-11-02T06:20:00+00:00"


@settings(max_examples=1000, deadline=None)
@given(
    instant=instants(),
    zone=st.sampled_from(ZONES),
    days=st.integers(0, 400),
    hours=st.integers(0, 72),
    minutes=st.integers(0, 59),
)
def test_duration_arithmetic_is_pendulums(
    instant: datetime, zone: str, days: int, hours: int, minutes: int
) -> None:
    # The engine adds on standard datetimes for speed; it must be pendulum's DateTime.add to the
    # instant, the wall clock and the fold.
    duration = Duration(days=days, hours=hours, minutes=minutes)
    moment = instant.astimezone(pendulum.timezone(zone))
    expected = pendulum.instance(instant).in_timezone(zone)
    if days:
        expected = expected.add(days=days)
    if hours or minutes:
        expected = expected.add(hours=hours, minutes=minutes)
    got = duration.add_to(moment)
    assert got.timestamp() == expected.timestamp()
    assert (got.replace(tzinfo=None), got.fold, got.utcoffset()) == (
        expected.naive(),
        expected.fold,
        expected.utcoffset(),
    )


@pytest.mark.parametrize(
    ("start", "zone", "expected"),
    [
        # 02:30 the next day is skipped by spring-forward: the clocks' jump moves it to 03:30.
        ("2026-03-07T02:30:00-05:00", "America/New_York", "2026-03-08T03:30:00-04:00"),
        # 01:30 the next day happens twice at fall-back: the second (after the change) is taken.
        ("2026-10-31T01:30:00-04:00", "America/New_York", "2026-11-01T01:30:00-05:00"),
        ("2026-03-28T01:30:00+00:00", "Europe/London", "2026-03-29T02:30:00+01:00"),
    ],
)
def test_calendar_day_into_a_dst_change(start: str, zone: str, expected: str) -> None:
    moment = datetime.fromisoformat(start).astimezone(pendulum.timezone(zone))
    got = Duration(days=1).add_to(moment)
    assert got.isoformat() == expected
    assert got == pendulum.instance(moment).in_timezone(zone).add(days=1)


# --- Rules v2: per-day and lead caps, closed dates, not_same_day ---------------------------------

# Closed dates on and beside the DST changes of the zones drawn (and a holiday weekend), where
# the scenarios' instants cluster: London, New York, Sydney, Chatham in 2026 and 2027.
_CLOSED = (
    "2026-03-07", "2026-03-08", "2026-03-28", "2026-03-29", "2026-04-04", "2026-04-05",
    "2026-09-26", "2026-09-27", "2026-10-03", "2026-10-04", "2026-10-24", "2026-10-25",
    "2026-10-31", "2026-11-01", "2026-12-25", "2026-12-26", "2026-12-28", "2027-03-13",
    "2027-03-14", "2027-03-27", "2027-03-28", "2027-04-03", "2027-04-04", "2027-09-25",
    "2027-09-26", "2027-10-02", "2027-10-03", "2027-10-30", "2027-10-31", "2027-11-07",
)  # fmt: skip
V2_RULES = f"""
[[outcomes]]
code = "SYSBUSY"
not_same_day = true

[[outcomes]]
code = "NSDUSER"
kind = "user"
recall = "after"
recall_after = {{ hours = 1 }}
not_same_day = true

[[outcomes]]
code = "LATER"
kind = "user"
recall = "after"
recall_after = {{ days = 1, hours = 3 }}

[[plans]]
id = "v2_hours"
timezone = "Europe/London"
calling_hours = {{ mon = "08:00-21:00", tue = "08:00-21:00", wed = "08:00-21:00", thu = "08:00-21:00", fri = "08:00-21:00", sat = "09:00-17:00" }}
max_attempts = [ {{ count = 3, within = {{ hours = 24 }} }}, {{ count = 2, per = "day" }} ]
lead_max_attempts = [ {{ count = 4, per = "day" }}, {{ count = 6, within = {{ days = 2 }} }} ]
closed_dates = {list(_CLOSED)}

[[plans]]
id = "v2_open"
timezone = "America/New_York"
system_recalls = {{ SYSNOANS = {{ minutes = 20 }} }}
max_attempts = [ {{ count = 2, per = "day" }} ]
lead_max_attempts = [ {{ count = 3, within = {{ hours = 12 }} }}, {{ count = 5, per = "day" }} ]
closed_dates = {list(_CLOSED)}

[[plans]]
id = "v2_closed"
timezone = "Australia/Sydney"
calling_hours = {{ sat = "02:00-03:00", sun = "01:30-04:00", mon = "00:00-24:00" }}
closed_dates = {list(_CLOSED)}
"""  # noqa: E501


@pytest.fixture(scope="module")
def v2_rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    path: Path = tmp_path_factory.mktemp("v2") / "rules.toml"
    path.write_text(V2_RULES, encoding="utf-8")
    return load_rules(path)


@st.composite
def v2_scenarios(draw: st.DrawFn) -> Scenario:
    instant = draw(instants())
    event = make_event(
        plan_id=draw(st.sampled_from(("v2_hours", "v2_open", "v2_closed"))),
        sip_code=draw(st.sampled_from(COMMON_SIP_CODES) | st.integers(400, 699)),
        occurred_at=instant.isoformat(),
        outcome_code=draw(
            st.none() | st.sampled_from(("SYSANSMACH", "SYSBUSY", "SYSNOANS", "NSDUSER", "LATER"))
        ),
        timezone=draw(st.none() | st.sampled_from(ZONES)),
        retry_after_s=draw(st.none() | st.integers(0, 86400)),
    )
    # Calls up to three days back, bunched so that days and windows fill up.
    before = st.lists(st.integers(1, 3 * 86400) | st.integers(1, 4 * 3600), max_size=8)
    history = PhoneHistory(
        attempts=tuple(instant - timedelta(seconds=s) for s in draw(before)),
        lead_attempts=tuple(instant - timedelta(seconds=s) for s in draw(before)),
    )
    return Scenario(event, history, instant + timedelta(seconds=draw(st.integers(0, 7200))))


def _local_date(moment: datetime, zone: str) -> object:
    return moment.astimezone(ZoneInfo(zone)).date()


def _broken(rules: Rules, scenario: Scenario, moment: datetime) -> list[str]:
    """The limits a call at ``moment`` would break (DESIGN.md section 2, step 7)."""
    plan = rules.plans[scenario.event.plan_id]
    zone = scenario.event.timezone or plan.timezone
    day = _local_date(moment, zone)
    broken = []
    if day in plan.closed_dates:
        broken.append("closed date")
    if plan.calling_hours is not None and not _open(moment.timestamp(), zone, plan.calling_hours):
        broken.append("calling hours")
    outcome = rules.outcomes.get(scenario.event.outcome_code or "")
    same_day = day == _local_date(scenario.event.occurred_at, zone)
    if outcome is not None and outcome.not_same_day and same_day:
        broken.append("not_same_day")
    phone = [*scenario.history.attempts, scenario.event.occurred_at]
    lead = [*phone, *scenario.history.lead_attempts]
    for caps, times in ((plan.max_attempts, phone), (plan.lead_max_attempts, lead)):
        for cap in caps:
            if cap.within is None:
                inside = [a for a in times if _local_date(a, zone) == day]
            else:
                local = [pendulum.instance(a).in_timezone(zone) for a in times]
                inside = [a for a in local if cap.within.add_to(a) > moment]
            if len(inside) >= cap.count:  # the recall would be one call too many
                broken.append(str(cap))
    return broken


@settings(max_examples=400, deadline=None)
@given(v2_scenarios())
def test_a_recall_keeps_every_v2_limit(v2_rules: Rules, scenario: Scenario) -> None:
    decision = decide(scenario.event, v2_rules, scenario.history, scenario.now)
    if decision.action != "recall":
        return
    assert decision.due_at is not None
    assert _broken(v2_rules, scenario, decision.due_at) == [], decision.explanation
    # Each adjustment is named once.
    assert len(set(decision.adjustments)) == len(decision.adjustments)


@settings(max_examples=300, deadline=None)
@given(v2_scenarios())
def test_the_v2_limits_move_a_recall_no_later_than_needed(
    v2_rules: Rules, scenario: Scenario
) -> None:
    """The earliest instant: a second before the due time, some limit was broken."""
    decision = decide(scenario.event, v2_rules, scenario.history, scenario.now)
    if decision.action != "recall" or not set(decision.adjustments) - {"retry_after"}:
        return
    assert decision.due_at is not None
    earlier = decision.due_at - timedelta(seconds=1)
    assert _broken(v2_rules, scenario, earlier), decision.explanation


def _every_limit_every_pass(
    due: int,
    plan: Plan,
    attempts: tuple[int, ...],
    table: ZoneTable,
    lead: tuple[int, ...],
    not_on: int | None,
) -> tuple[int, list[str], list[str]]:
    """adjust_due's loop as first written: every limit asked on every pass until none moves."""
    adjustments: list[str] = []
    notes: list[str] = []
    caps = (
        ("max_attempts", "the cap", plan.max_attempts, attempts),
        ("lead_max_attempts", "the lead's cap", plan.lead_max_attempts, (*attempts, *lead)),
    )
    for _ in range(64):
        start = due
        for name, whose, limits, counted in caps:
            for cap in limits:
                allowed = engine._cap_allows(cap, due, counted, table)
                if allowed > due:
                    due = allowed
                    if name not in adjustments:
                        adjustments.append(name)
                    notes.append(f"moved to {engine._text_at(table, due)} by {whose} of {cap}")
        if not_on is not None:
            after = table.midnight(not_on + 1)
            if due < after:
                due = after
                if "not_same_day" not in adjustments:
                    adjustments.append("not_same_day")
                notes.append(f"moved to {engine._text_at(table, due)}: not on the day of the call")
        opening, closed = engine._open_at(due, plan, table)
        if opening != due:
            due = opening
            if "calling_hours" not in adjustments:
                adjustments.append("calling_hours")
            if closed is not None:
                text = f"moved to {engine._text_at(table, due)}, past the closed date {closed}"
            else:
                text = f"moved to the next calling hours, {engine._text_at(table, due)}"
            notes.append(text)
        if due == start:
            break
    return due, adjustments, notes


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(("v2_hours", "v2_open", "v2_closed")),
    st.sampled_from(ZONES),
    instants(),
    # Calls in the three days before the due time, and some in the two after it (a lead's other
    # phones, booked ahead), in whole hours and minutes so that days fill up.
    st.lists(st.integers(-72 * 60, 48 * 60), min_size=1, max_size=8),
    st.lists(st.integers(-72 * 60, 48 * 60), max_size=8),
    st.booleans(),
)
def test_adjust_due_settles_as_asking_every_limit_every_pass(
    v2_rules: Rules,
    plan_id: str,
    zone: str,
    instant: datetime,
    phone: list[int],
    lead: list[int],
    not_same_day: bool,
) -> None:
    """Passes after the first ask the per-day caps alone: the same instant, adjustments and notes
    as asking every limit again."""
    plan, table = v2_rules.plans[plan_id], zone_table(zone)
    due = epoch_us(instant)
    attempts = tuple(due + minutes * 60_000_000 for minutes in phone)
    others = tuple(due + minutes * 60_000_000 for minutes in lead)
    not_on = table.ordinal(due - 3600 * 1_000_000) if not_same_day else None
    adjustments: list[str] = []
    notes: list[str] = []
    got = engine.adjust_due(
        due, plan, attempts, table, adjustments, notes, lead_attempts=others, not_on=not_on
    )
    assert (got, adjustments, notes) == _every_limit_every_pass(
        due, plan, attempts, table, others, not_on
    )


@settings(max_examples=300, deadline=None)
@given(instants(), st.sampled_from(ZONES))
def test_local_times_in_explanations_read_as_strftime(instant: datetime, zone: str) -> None:
    """Explanations write local times by hand, as strftime writes them in the C locale."""
    moment = instant.astimezone(pendulum.timezone(zone))
    assert engine._format(moment) == moment.strftime("%a %Y-%m-%d %H:%M %Z")


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 7000 * 365 * 86400 * 10**6))
def test_utc_text_of_microseconds_is_isoformat(at: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at)
    assert engine.utc_iso_us(at) == moment.isoformat()
