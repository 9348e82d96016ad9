"""The worker and replay decide alike (issue 14, DESIGN.md sections 3 and 4).

Hypothesis generates call histories of a few leads with several phones each, under rules that use
every limit of rules v2 at once: callbacks (booked, missing, in the past, personal), per-day and
rolling caps, lead caps, closed dates, ``not_same_day`` and calling hours across a DST change.
Each history goes through ``recall replay --dry-run`` and, event by event, through the worker's
own ingestion transaction on SQLite and PostgreSQL, with the recalls that fell due fired first as
the dispatcher would. The two lists of decisions must be the same, explanations included.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.helpers import SKEW_S, json_of, reset_process_state
from worker.cli import main
from worker.domain.rules import load_rules
from worker.store.database import make_engine
from worker.store.ingest import ingest
from worker.store.models import Recall
from worker.store.recalls import fire_recalls

# New York changes to summer time on Sunday 2026-03-08; histories run from Friday the 6th.
START = datetime(2026, 3, 6, 13, 0, tzinfo=UTC)
RULES = """
[[plans]]
id = "v2_ny"
timezone = "America/New_York"
calling_hours = { mon = "09:00-20:00", tue = "09:00-20:00", wed = "09:00-20:00", thu = "09:00-20:00", fri = "09:00-20:00", sat = "10:00-14:00", sun = "12:00-16:00" }
max_attempts = [ { count = 2, per = "day" }, { count = 3, within = { hours = 6 } } ]
lead_max_attempts = [ { count = 4, within = { hours = 12 } }, { count = 5, per = "day" } ]
closed_dates = ["2026-03-09", "2026-03-12"]
max_recalls = 6

[[plans]]
id = "v2_utc"
timezone = "UTC"
max_attempts = [ { count = 3, within = { hours = 2 } } ]
lead_max_attempts = [ { count = 3, per = "day" } ]
closed_dates = ["2026-03-08"]
"""  # noqa: E501
SIP_CODES = (486, 486, 480, 503, 404, 408, 487, 200)
OUTCOMES = (None, None, "SYSANSMACH", "SYSBUSY", "SYSNOANS", "CALLBACK", "CALLBACK", "NOTNOW")

_examples = itertools.count()


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events in time order (strictly increasing), some delivered twice in a row."""
    example = next(_examples)
    moment = START
    events: list[dict[str, Any]] = []
    for number in range(draw(st.integers(1, 24))):
        moment += timedelta(seconds=draw(st.integers(60, 14 * 3600)))
        lead = draw(st.integers(0, 2))
        event: dict[str, Any] = {
            "event_id": f"x{example}-e{number}",
            "plan_id": "v2_ny" if lead < 2 else "v2_utc",
            "lead_id": f"x{example}-L{lead}",
            "phone_id": f"x{example}-L{lead}-P{draw(st.integers(0, 2))}",
            "sip_code": draw(st.sampled_from(SIP_CODES)),
            "occurred_at": moment.isoformat(),
        }
        outcome = draw(st.sampled_from(OUTCOMES))
        if outcome is not None:
            event["outcome_code"] = outcome
        if outcome == "CALLBACK" or draw(st.integers(0, 9)) == 0:
            # A booked time from an hour ago (a past callback) to three days ahead, or none.
            booked = draw(st.none() | st.integers(-3600, 3 * 86400))
            if booked is not None:
                event["callback_at"] = (moment + timedelta(seconds=booked)).isoformat()
            if draw(st.booleans()):
                event["callback_agent"] = f"agent-{lead}"
        if draw(st.integers(0, 7)) == 0:
            event["timezone"] = "Europe/London"
        events.append(event)
        if draw(st.integers(0, 9)) == 0:
            events.append(dict(event))  # at-least-once delivery: the same event again
    return events


def replayed(tmp_path: Path, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    source = tmp_path / f"{events[0]['event_id']}.jsonl"
    source.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    out = tmp_path / "decisions.jsonl"
    until = datetime.fromisoformat(events[-1]["occurred_at"]) + timedelta(days=10)
    reset_process_state()
    result = CliRunner().invoke(
        main,
        ["replay", str(source), "--dry-run", "--rules", str(tmp_path / "rules.toml"),
         "--now", until.isoformat(), "--output", str(out), "--json"],
        prog_name="recall",
    )  # fmt: skip
    json_of(result)
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def worked(session_of: Any, rules: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event as the worker takes it at its own time, after the dispatcher fired what fell
    due (at its due time, as replay's simulated clock fires it)."""
    phones = sorted({event["phone_id"] for event in events})
    decisions: list[dict[str, Any]] = []
    for event in events:
        now = datetime.fromisoformat(event["occurred_at"])
        with session_of() as session, session.begin():
            due = session.scalars(
                select(Recall.recall_id).where(
                    Recall.phone_id.in_(phones), Recall.state == "pending", Recall.due_at <= now
                )
            ).all()
            fire_recalls(session, due, now, early_tolerance=timedelta(0), at_due_time=True)
        with session_of() as session, session.begin():
            report = ingest(session, [event], rules, now, task="t", skew_s=SKEW_S)
        decisions.extend(decision.to_json() for decision in report.decisions)
    return decisions


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=histories())
def test_the_worker_and_replay_decide_alike(
    tmp_path: Path, database_url: str, events: list[dict[str, Any]]
) -> None:
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES, encoding="utf-8")
    rules = load_rules(rules_path)
    engine = make_engine(database_url)
    try:
        # Ids are unique to each example, so the examples share one database.
        worker = worked(lambda: Session(engine), rules, events)
    finally:
        engine.dispose()
    assert worker == replayed(tmp_path, events)
