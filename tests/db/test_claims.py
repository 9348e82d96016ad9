"""Claims, the dialer's pull (DESIGN.md section 8), against real databases (SQLite and PostgreSQL).

Eligible phones are made the way the worker makes them: call results through ``ingest``, then
their recalls fired by ``fire_recalls``. The claims are ``store.claims`` called directly, in a
transaction of our own, and ``recall phones claim`` through click's ``CliRunner``; many claimers
at once run in threads, each with a connection of its own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from tests.helpers import EVENT_DEFAULTS, SKEW_S, at, json_of, one_line_error, reset_process_state
from worker.cli import main
from worker.domain.events import parse_event
from worker.domain.rules import Rules, load_rules
from worker.store import queries
from worker.store.claims import Claimed, claim_phones, release_claim
from worker.store.decisions import apply_events
from worker.store.ingest import ingest
from worker.store.models import Phone
from worker.store.recalls import fire_due, fire_recalls

# Calls at 10:00 UTC on an always-open plan: a 486 recalls at 10:15, a callback at its time.
NOW = at("2026-01-14T10:01:00+00:00")
CALLED = "2026-01-14T10:00:00+00:00"
BOOKED = "2026-01-14T10:05:00+00:00"
RULES = '[[plans]]\nid = "open"\ntimezone = "UTC"\n\n[[plans]]\nid = "other"\ntimezone = "UTC"\n'
LEASE_S = 300
PHONE_KEYS = {"phone_id", "lead_id", "plan_id", "eligible", "eligible_at", "pending_recall",
              "last_result_at", "last_decision"}  # fmt: skip
CLAIM_KEYS = PHONE_KEYS | {"lease_id", "leased_until", "reason", "agent"}


@pytest.fixture
def rules(write_rules: Callable[..., Path]) -> Rules:
    return load_rules(write_rules(RULES))


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session, session.begin():
        yield session


def event(phone_id: str, kind: str = "sip", **changes: Any) -> dict[str, Any]:
    """A call result for ``phone_id`` (its own lead): a 486, or an anyone or personal callback."""
    data = {**EVENT_DEFAULTS, "event_id": f"{phone_id}-1", "plan_id": "open",
            "lead_id": f"L-{phone_id}", "phone_id": phone_id, "occurred_at": CALLED}  # fmt: skip
    if kind != "sip":
        data.update(sip_code=200, outcome_code="CALLBACK", callback_at=BOOKED)
    if kind == "personal":
        data["callback_agent"] = "agent-7"
    return {**data, **changes}


def make_eligible(
    engine: Engine, rules: Rules, phones: Sequence[tuple[str, str, str]], **changes: Any
) -> None:
    """Phones (id, kind, time of firing) made eligible by the worker's own ingest and firing."""
    with transaction(engine) as session:
        payloads = [event(phone_id, kind, **changes) for phone_id, kind, _ in phones]
        report = ingest(session, payloads, rules, NOW, task="test", skew_s=SKEW_S)
    assert {decision.action for decision in report.decisions} == {"recall"}
    for phone_id, _, fired_at in sorted(phones, key=lambda phone: phone[2]):
        with transaction(engine) as session:
            recall_id = changes.get("event_id", f"{phone_id}-1")
            fired = fire_recalls(session, [recall_id], at(fired_at), early_tolerance=timedelta(0))
        assert len(fired) == 1, phone_id


def claim(engine: Engine, now: datetime, plan_id: str = "open", **options: Any) -> list[Claimed]:
    settings = {"limit": 10, "lease_s": LEASE_S, "claimant": "test", **options}
    with transaction(engine) as session:
        return claim_phones(session, plan_id, now=now, **settings)


def release(engine: Engine, lease_id: str, now: datetime) -> bool:
    with transaction(engine) as session:
        return release_claim(session, lease_id, now)


def row(engine: Engine, phone_id: str) -> Phone:
    with Session(engine) as session:
        found = session.get(Phone, phone_id)
    assert found is not None
    return found


def ids(claimed: Sequence[Claimed]) -> list[str]:
    return [claim.phone_id for claim in claimed]


AFTER = at("2026-01-14T11:00:00+00:00")


# --- order and shape -----------------------------------------------------------------------------


def test_callbacks_come_first_then_the_longest_eligible_then_the_phone_id(
    db_engine: Engine, rules: Rules
) -> None:
    make_eligible(db_engine, rules, [
        ("A", "sip", "2026-01-14T10:20:00+00:00"),
        ("E", "sip", "2026-01-14T10:20:00+00:00"),  # as long as A: after it, by id
        ("D", "sip", "2026-01-14T10:16:00+00:00"),
        ("B", "anyone", "2026-01-14T10:30:00+00:00"),
        ("C", "personal", "2026-01-14T10:40:00+00:00"),
        ("0", "sip", "2026-01-14T10:45:00+00:00"),
    ])  # fmt: skip
    with transaction(db_engine) as session:  # a phone waiting for its recall is not eligible
        ingest(session, [event("W")], rules, NOW, task="test", skew_s=SKEW_S)
    make_eligible(db_engine, rules, [("X", "anyone", "2026-01-14T10:06:00+00:00")],
                  plan_id="other")  # fmt: skip

    claimed = claim(db_engine, AFTER)

    assert ids(claimed) == ["B", "C", "D", "A", "E", "0"]
    assert [(c.reason, c.agent) for c in claimed] == [
        ("callback", None), ("callback", "agent-7"), ("sip_recall", None), ("sip_recall", None),
        ("sip_recall", None), ("sip_recall", None),
    ]  # fmt: skip
    assert ids(claim(db_engine, AFTER, plan_id="other")) == ["X"]
    assert claim(db_engine, AFTER, plan_id="nosuchplan") == []


def test_a_claim_is_the_phone_shape_with_its_lease(db_engine: Engine, rules: Rules) -> None:
    make_eligible(db_engine, rules, [("C", "personal", "2026-01-14T10:40:00+00:00"),
                                     ("S", "sip", "2026-01-14T10:20:00+00:00")])  # fmt: skip
    with Session(db_engine) as session:
        before = {phone_id: queries.phone(session, phone_id) for phone_id in ("C", "S")}

    claimed = claim(db_engine, AFTER, claimant="dialer-1")

    personal, sip = (c.to_json() for c in claimed)
    assert set(personal) == CLAIM_KEYS
    # The phone part is exactly what `recall phones show --json` prints (DESIGN.md section 7).
    assert {key: personal[key] for key in PHONE_KEYS} == before["C"]
    assert {key: sip[key] for key in PHONE_KEYS} == before["S"]
    assert (personal["eligible"], personal["eligible_at"]) == (True, "2026-01-14T10:40:00+00:00")
    assert personal["leased_until"] == (AFTER + timedelta(seconds=LEASE_S)).isoformat()
    assert (personal["reason"], personal["agent"]) == ("callback", "agent-7")
    assert (sip["reason"], sip["agent"]) == ("sip_recall", None)
    assert all(re.fullmatch(r"[0-9a-f]{32}", c["lease_id"]) for c in (personal, sip))
    assert personal["lease_id"] != sip["lease_id"]
    stored = row(db_engine, "C")
    assert (stored.lease_id, stored.leased_until, stored.leased_to) == (
        personal["lease_id"], AFTER + timedelta(seconds=LEASE_S), "dialer-1",
    )  # fmt: skip
    assert (stored.eligible_reason, stored.eligible_agent) == ("callback", "agent-7")


# --- leases --------------------------------------------------------------------------------------

FIVE = [(f"P{n}", "sip", f"2026-01-14T10:2{n}:00+00:00") for n in range(5)]


def test_a_lease_hides_the_phone_from_other_claims_until_it_runs_out(
    db_engine: Engine, rules: Rules
) -> None:
    make_eligible(db_engine, rules, FIVE)

    first = claim(db_engine, AFTER, limit=2)
    second = claim(db_engine, AFTER, limit=10)
    assert (ids(first), ids(second)) == (["P0", "P1"], ["P2", "P3", "P4"])
    assert claim(db_engine, AFTER + timedelta(seconds=LEASE_S - 1)) == []

    # At its end a lease is over: the phones are claimable again, in order, with new leases.
    again = claim(db_engine, AFTER + timedelta(seconds=LEASE_S), limit=3)
    assert ids(again) == ["P0", "P1", "P2"]
    assert not {c.lease_id for c in again} & {c.lease_id for c in first + second}
    # The old lease of a phone claimed again is gone; the other ran out: neither gives it back.
    assert not release(db_engine, first[0].lease_id, AFTER + timedelta(seconds=LEASE_S))
    assert not release(db_engine, second[2].lease_id, AFTER + timedelta(seconds=LEASE_S))


def test_expired_and_free_phones_are_claimed_together_in_order(
    db_engine: Engine, rules: Rules
) -> None:
    make_eligible(db_engine, rules, FIVE)
    claim(db_engine, AFTER, limit=1, lease_s=60)  # P0, for a minute
    claim(db_engine, AFTER + timedelta(seconds=30), limit=1, lease_s=60)  # P1, until 60+30

    later = claim(db_engine, AFTER + timedelta(seconds=61), limit=3)

    assert ids(later) == ["P0", "P2", "P3"]


def test_release_gives_the_phone_back_once(db_engine: Engine, rules: Rules) -> None:
    make_eligible(db_engine, rules, FIVE[:2])
    first, second = claim(db_engine, AFTER)

    assert release(db_engine, first.lease_id, AFTER + timedelta(seconds=10))
    assert not release(db_engine, first.lease_id, AFTER + timedelta(seconds=10))
    assert not release(db_engine, "0" * 32, AFTER)
    # A lease that ran out is no lease to give back.
    assert not release(db_engine, second.lease_id, AFTER + timedelta(seconds=LEASE_S))

    stored = row(db_engine, "P0")
    assert (stored.lease_id, stored.leased_until, stored.leased_to) == (None, None, None)
    assert ids(claim(db_engine, AFTER + timedelta(seconds=20))) == ["P0"]


def test_a_call_result_ends_the_lease_and_a_new_recall_fires_afresh(
    db_engine: Engine, rules: Rules
) -> None:
    make_eligible(db_engine, rules, [("P", "personal", "2026-01-14T10:06:00+00:00"),
                                     ("Q", "sip", "2026-01-14T10:20:00+00:00")])  # fmt: skip
    leased, _ = claim(db_engine, AFTER, lease_s=3600)
    called = at("2026-01-14T11:01:00+00:00")

    # A result older than the phone's last one (stale) is not the call the lease was for.
    with transaction(db_engine) as session:
        old = event("P", event_id="P-0", occurred_at="2026-01-14T09:00:00+00:00")
        (decision,) = ingest(session, [old], rules, called, task="t", skew_s=SKEW_S).decisions
    assert decision.action == "stale"
    assert row(db_engine, "P").lease_id == leased.lease_id

    with transaction(db_engine) as session:
        result = event("P", event_id="P-2", occurred_at="2026-01-14T11:00:00+00:00")
        (decision,) = ingest(session, [result], rules, called, task="t", skew_s=SKEW_S).decisions
    assert (decision.action, decision.due_at) == ("recall", at("2026-01-14T11:15:00+00:00"))

    stored = row(db_engine, "P")
    assert (stored.eligible, stored.eligible_reason, stored.eligible_agent) == (False, None, None)
    assert (stored.lease_id, stored.leased_until, stored.leased_to) == (None, None, None)
    assert not release(db_engine, leased.lease_id, called)
    assert claim(db_engine, called) == []  # Q is still leased, P waits for its recall

    with transaction(db_engine) as session:
        fire_recalls(session, ["P-2"], at("2026-01-14T11:15:00+00:00"),
                     early_tolerance=timedelta(0))  # fmt: skip
    (again,) = claim(db_engine, at("2026-01-14T11:16:00+00:00"))
    assert (again.phone_id, again.reason, again.agent) == ("P", "sip_recall", None)
    assert again.lease_id != leased.lease_id


def test_a_recall_firing_ends_a_lease_left_on_the_phone(db_engine: Engine, rules: Rules) -> None:
    with transaction(db_engine) as session:
        ingest(session, [event("P")], rules, NOW, task="test", skew_s=SKEW_S)
    with transaction(db_engine) as session:  # a lease no claim could leave (the phone waits)
        session.execute(
            update(Phone)
            .where(Phone.phone_id == "P")
            .values(lease_id="f" * 32, leased_until=AFTER, leased_to="lost")
        )
    with transaction(db_engine) as session:
        fire_recalls(session, ["P-1"], at("2026-01-14T10:15:00+00:00"),
                     early_tolerance=timedelta(0))  # fmt: skip

    stored = row(db_engine, "P")
    assert (stored.eligible, stored.eligible_reason) == (True, "sip_recall")
    assert (stored.lease_id, stored.leased_until, stored.leased_to) == (None, None, None)
    assert ids(claim(db_engine, at("2026-01-14T10:16:00+00:00"))) == ["P"]


def test_a_replays_firings_say_why_the_phone_is_eligible(db_engine: Engine, rules: Rules) -> None:
    """On the simulated clock recalls fire in the timeline, or at the end of the replay."""
    events = [
        event("P"),  # a 486: due 10:15
        event("C", "personal"),  # a callback: due 10:05
        # An id already taken for another phone is a duplicate, but P's recall fires before it.
        event("Q", event_id="X"),
        event("P", event_id="X", occurred_at="2026-01-14T11:00:00+00:00"),
    ]
    with transaction(db_engine) as session:
        apply_events(session, [parse_event(payload) for payload in events], rules, None)
        assert fire_due(session, at("2026-01-14T10:10:00+00:00")) == 1  # C's callback

    assert (row(db_engine, "P").eligible_reason, row(db_engine, "P").eligible_at) == (
        "sip_recall", at("2026-01-14T10:15:00+00:00"),
    )  # fmt: skip
    claimed = claim(db_engine, AFTER)
    assert [(c.phone_id, c.reason, c.agent) for c in claimed] == [
        ("C", "callback", "agent-7"), ("P", "sip_recall", None),
    ]  # fmt: skip


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit": 0}, "limit must be from 1 to 1000, not 0"),
        ({"limit": 1001}, "limit must be from 1 to 1000, not 1001"),
        ({"lease_s": 0}, "lease_s must be from 1 to 86400 seconds, not 0"),
        ({"lease_s": 86_401}, "lease_s must be from 1 to 86400 seconds, not 86401"),
    ],
)
def test_limits_are_checked(db_engine: Engine, options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        claim(db_engine, AFTER, **options)


def test_the_limits_themselves_are_allowed(db_engine: Engine, rules: Rules) -> None:
    make_eligible(db_engine, rules, FIVE[:1])
    assert ids(claim(db_engine, AFTER, limit=1000, lease_s=86_400)) == ["P0"]
    assert ids(claim(db_engine, AFTER + timedelta(days=1), limit=1, lease_s=1)) == ["P0"]


# --- many claimers at once -----------------------------------------------------------------------


def claim_all_at_once(engine: Engine, claimers: int) -> list[list[str]]:
    """``claimers`` threads, each with its own connection, claiming 10 at a time until none left."""
    barrier = threading.Barrier(claimers)
    handed: list[list[str]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def run(me: int) -> None:
        try:
            with engine.connect() as connection:
                barrier.wait()
                while True:
                    with Session(connection) as session, session.begin():
                        claimed = claim_phones(session, "open", limit=10, lease_s=3600, now=AFTER,
                                               claimant=f"c{me}")  # fmt: skip
                    if not claimed:
                        return
                    handed[me].extend(ids(claimed))
        except BaseException as error:  # reported below, with the thread's name
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,), name=f"c{n}") for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    return handed


@pytest.mark.parametrize("database_url", ["postgresql", "sqlite"], indirect=True)
def test_concurrent_claimers_never_share_a_phone_and_take_every_one(
    db_engine: Engine, rules: Rules
) -> None:
    postgresql = db_engine.dialect.name == "postgresql"
    count, claimers = (500, 8) if postgresql else (120, 4)
    phones = [f"P{n:04d}" for n in range(count)]
    with transaction(db_engine) as session:
        ingest(session, [event(phone_id) for phone_id in phones], rules, NOW, task="t",
               skew_s=SKEW_S)  # fmt: skip
    with transaction(db_engine) as session:
        fire_recalls(session, [f"{p}-1" for p in phones], at("2026-01-14T10:15:00+00:00"),
                     early_tolerance=timedelta(0))  # fmt: skip

    handed = claim_all_at_once(db_engine, claimers)

    everything = [phone_id for part in handed for phone_id in part]
    assert sorted(everything) == phones  # each eligible phone handed out exactly once
    if postgresql:  # SKIP LOCKED: the claimers worked side by side, not one after another
        assert sum(1 for part in handed if part) > 1
    with Session(db_engine) as session:
        leased_to = {p.phone_id: p.leased_to for p in session.query(Phone)}
    for me, part in enumerate(handed):
        assert all(leased_to[phone_id] == f"c{me}" for phone_id in part)


# --- recall phones claim -------------------------------------------------------------------------


@pytest.fixture
def recall(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Result]]:
    monkeypatch.delenv("RECALL_RULES", raising=False)
    monkeypatch.setenv("RECALL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECALL_DATABASE_URL", database_url)
    monkeypatch.setenv("RECALL_BROKER_URL", "redis://127.0.0.1:1/0")  # never needed
    reset_process_state()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["phones", "claim", *args], prog_name="recall")

    yield invoke
    reset_process_state()


def test_phones_claim_prints_the_claims(
    recall: Callable[..., Result], db_engine: Engine, rules: Rules
) -> None:
    # Eligible in the past, so that the command's own clock (now) leases them.
    make_eligible(db_engine, rules, [("C", "personal", "2026-01-14T10:40:00+00:00"), *FIVE])

    claimed = json_of(recall("--plan", "open", "--limit", "2", "--json"))
    assert [c["phone_id"] for c in claimed] == ["C", "P0"]
    assert all(set(c) == CLAIM_KEYS for c in claimed)
    assert row(db_engine, "C").leased_to.startswith("cli:")  # type: ignore[union-attr]

    text = recall("--plan", "open", "--lease", "60")
    assert text.exit_code == 0, (text.output, text.exception)
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["P1", "P2", "P3", "P4"]
    assert lines[0].split()[1:3] == ["sip_recall", "lease"]

    nothing = recall("--plan", "open")
    assert (nothing.exit_code, nothing.stdout) == (0, "")
    assert nothing.stderr == "no phone of plan 'open' is eligible and unclaimed\n"
    assert json_of(recall("--plan", "open", "--json")) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--limit", "0"), "error: limit must be from 1 to 1000, not 0"),
        (("--limit", "5000", "--json"), "error: limit must be from 1 to 1000, not 5000"),
        (("--lease", "0"), "error: lease_s must be from 1 to 86400 seconds, not 0"),
    ],
)
def test_phones_claim_refuses_limits_out_of_range_in_one_line(
    recall: Callable[..., Result], args: tuple[str, ...], message: str
) -> None:
    assert one_line_error(recall("--plan", "open", *args)) == message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_phones_claim_needs_a_plan(recall: Callable[..., Result]) -> None:
    result = recall("--limit", "3")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: Missing option '--plan'. (see 'recall phones claim --help')"
    ]
