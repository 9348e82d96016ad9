"""Security, against a real worker on real Redis (with a password) and PostgreSQL.

- The broker takes JSON only: a pickled message is refused, never unpickled, kept as a dead
  letter.
- Passwords in the broker and database URLs never appear in any command's output or any log
  line, on success and on failure.
- Ids with quotes, SQL, unicode (RTL, emoji, combining marks) are stored and shown intact; 10 KB
  strings are kept intact in an event's free fields, and refused with a reason as ids.
- Size limits: an event over ``MAX_EVENT_BYTES`` and a batch over ``RECALL_MAX_BATCH`` are
  refused with a clear reason, each event kept as a dead letter; at the limits they are taken.
- ``/metrics`` answers with counts only: no ids, no payloads, no secrets.
"""

from __future__ import annotations

import getpass
import pickle
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.helpers import reset_process_state
from tests.reliability.fast_harness import fresh_database, worker_env
from tests.servers import PostgresServer, free_port, redis_binary, unavailable, wait_for
from tests.workers import ROOT, WorkerProcess
from worker.cli import main
from worker.domain.events import MAX_EVENT_BYTES, MAX_ID_LENGTH
from worker.store.models import DeadLetter, ProcessedEvent

PASSWORD = "Pw-7xQ2-s3cr3t"
MAX_BATCH = 50


@dataclass
class Stack:
    """A password-protected Redis, a PostgreSQL database reached with a password, one worker."""

    broker: str
    database: str
    engine: Engine
    env: dict[str, str]
    worker: WorkerProcess
    metrics_port: int
    home: Path

    def run(
        self, *args: str, stdin: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=ROOT, env={**self.worker.env, **env}, input=stdin, capture_output=True,
            text=True, timeout=90, check=False,
        )  # fmt: skip

    def letters(self) -> list[DeadLetter]:
        with Session(self.engine) as session:
            return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))

    def events(self) -> dict[str, ProcessedEvent]:
        with Session(self.engine) as session:
            return {row.event_id: row for row in session.scalars(select(ProcessedEvent))}


@pytest.fixture(scope="module")
def stack(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = redis_binary()
    if binary is None:
        unavailable("no redis-server binary")
    port = free_port()
    server = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    home = tmp_path_factory.mktemp("security")
    try:
        wait_for(redis.Redis(port=port, password=PASSWORD).ping, 10, "redis-server")
        broker = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        with fresh_database(postgres) as (url, engine):
            parsed = make_url(url)
            parsed = parsed.set(username=parsed.username or getpass.getuser(), password=PASSWORD)
            database = parsed.render_as_string(hide_password=False)
            metrics_port = free_port()
            env = {
                **worker_env(broker, database, home / "home"),
                "RECALL_METRICS_PORT": str(metrics_port),
                "RECALL_MAX_BATCH": str(MAX_BATCH),
            }
            worker = WorkerProcess(env, home / "worker.log", ())
            try:
                worker.wait_ready()
                yield Stack(broker, database, engine, env, worker, metrics_port, home)
            finally:
                worker.stop()
    finally:
        server.kill()
        server.wait()


def event(event_id: str, phone_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "plan_id": "default",
        "lead_id": f"L-{phone_id}",
        "phone_id": phone_id,
        "sip_code": 486,
        "occurred_at": datetime.now(UTC).isoformat(),
        **fields,
    }


def publish(stack: Stack, *events: Any, batch: int | None = None) -> None:
    path = stack.home / f"publish-{time.monotonic_ns()}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in events))
    args = ["publish", str(path)] + (["--batch", str(batch)] if batch else [])
    done = stack.run(*args)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def wait_for_letters(stack: Stack, count: int, timeout: float = 60) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    while len(letters := stack.letters()) < count:
        assert time.monotonic() < deadline, f"{len(letters)} of {count} dead letters"
        time.sleep(0.3)
    return letters


def wait_for_events(stack: Stack, *event_ids: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not set(event_ids) <= set(stored := stack.events()):
        assert time.monotonic() < deadline, set(event_ids) - set(stored)
        time.sleep(0.3)
    return stored


class OpensAFile:
    """Unpickled, this creates the file at ``path``: proof that a payload was (not) executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_pickled_message_is_refused_never_run_and_kept(stack: Stack, tmp_path: Path) -> None:
    witness = tmp_path / "would-be-created"
    pickle.loads(pickle.dumps(OpensAFile(witness))).close()  # the payload is live...
    assert witness.exists()
    witness.unlink()
    marker = tmp_path / "created-by-the-worker"
    before = len(stack.letters())

    sender = Celery("attacker", broker=stack.broker)
    sender.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    try:
        sender.send_task(
            "recall.process_call_result", args=[OpensAFile(marker)], queue="call_results",
            serializer="pickle",
        )  # fmt: skip
    finally:
        sender.close()
    publish(stack, event("after-pickle", "p-after-pickle"))
    wait_for_events(stack, "after-pickle")
    (letter,) = wait_for_letters(stack, before + 1)[before:]

    assert not marker.exists(), "the worker unpickled the message"
    assert (letter.task, letter.reason) == ("recall.process_call_result", "invalid_event")
    assert "application/x-python-serialize" in letter.detail, letter.detail
    assert str(marker) in letter.payload  # the pickled body, kept (undecoded) for the operator
    assert stack.worker.process is not None
    assert stack.worker.process.poll() is None


def test_ids_with_quotes_sql_and_unicode_are_stored_and_shown_intact(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_id = ("é€😀" * MAX_ID_LENGTH)[:MAX_ID_LENGTH]  # 255 characters, 2-4 bytes each
    phones = [
        'it\'s "quoted" \\ back\\slash',
        "'; DROP TABLE phones; --",
        "שלום‏-مرحبا-\u202etxt.exe",  # RTL text and a right-to-left override
        "e\u0301\u0301-👩‍👩‍👧‍👦-𝔘𝔫𝔦",  # combining marks, a ZWJ family, astral letters
        long_id,
    ]
    note = ("'\"; DELETE FROM events; -- ü 漢字 🚀 \u202e " * 300)[: 10 * 1024]
    sent = [
        event(
            f"{n}:{phone}"[:MAX_ID_LENGTH],
            phone,
            lead_id=f"lead {phone}"[:MAX_ID_LENGTH],
            call_id=phone,
            note=note,
        )
        for n, phone in enumerate(phones)
    ]
    too_long = event("x" * 10 * 1024, "p-long-id")
    before = len(stack.letters())
    publish(stack, *sent, too_long)
    wait_for_letters(stack, before + 1)
    stored = wait_for_events(stack, *(raw["event_id"] for raw in sent))
    for name in ("RECALL_BROKER_URL", "RECALL_DATABASE_URL", "RECALL_HOME"):
        monkeypatch.setenv(name, stack.env[name])
    reset_process_state()  # the command reads the settings of this process: these
    runner = CliRunner()

    for raw, phone in zip(sent, phones, strict=True):
        row = stored[raw["event_id"]]
        assert (row.phone_id, row.lead_id) == (phone, raw["lead_id"])
        assert row.payload["note"] == note
        assert row.payload["call_id"] == phone
        shown = runner.invoke(main, ["phones", "show", phone, "--json"])
        assert shown.exit_code == 0, shown.output
        data = orjson.loads(shown.stdout)
        assert (data["phone_id"], data["lead_id"]) == (phone, raw["lead_id"])
        assert data["last_decision"]["event_id"] == raw["event_id"]
        text = runner.invoke(main, ["phones", "show", phone])
        assert text.exit_code == 0, text.output
        assert f"phone_id        {phone}\n" in text.stdout
    # And once through the real command (arguments and output through the OS, not Python).
    real = stack.run("phones", "show", phones[2], "--json")
    assert real.returncode == 0, real.stderr
    assert orjson.loads(real.stdout)["phone_id"] == phones[2]
    reset_process_state()
    (letter,) = stack.letters()[before:]
    assert letter.detail == f"event_id: longer than {MAX_ID_LENGTH} characters (10240)"
    assert orjson.loads(letter.payload) == too_long


def test_an_event_over_the_size_limit_is_refused_and_one_at_it_taken(stack: Stack) -> None:
    def sized(event_id: str, size: int) -> dict[str, Any]:
        base = event(event_id, f"p-{event_id}", pad="")
        base["pad"] = "x" * (size - len(orjson.dumps(base)))
        assert len(orjson.dumps(base)) == size
        return base

    at_limit, over = sized("at-limit", MAX_EVENT_BYTES), sized("over-limit", MAX_EVENT_BYTES + 1)
    huge = sized("huge", 20 * 1024 * 1024)
    before = len(stack.letters())
    publish(stack, at_limit, over, huge)
    letters = wait_for_letters(stack, before + 2)[before:]

    wait_for_events(stack, "at-limit")
    details = {letter.event_id: letter.detail for letter in letters}
    limit = f"event: payload is over the {MAX_EVENT_BYTES}-byte limit"
    assert details == {"over-limit": limit, "huge": limit}
    kept = {letter.event_id: letter.payload for letter in letters}
    assert kept["over-limit"] == orjson.dumps(over).decode()
    assert kept["huge"].endswith(f"...[truncated from {len(orjson.dumps(huge))} characters]")


def test_a_batch_over_the_limit_is_refused_event_by_event_and_one_at_it_taken(
    stack: Stack,
) -> None:
    at_limit = [event(f"batch-ok-{n}", f"p-batch-{n}") for n in range(MAX_BATCH)]
    over = [event(f"batch-over-{n}", f"p-batch-{n}") for n in range(MAX_BATCH + 1)]
    before = len(stack.letters())
    publish(stack, *at_limit, batch=MAX_BATCH)
    publish(stack, *over, batch=MAX_BATCH + 1)
    letters = wait_for_letters(stack, before + MAX_BATCH + 1)[before:]

    wait_for_events(stack, *(raw["event_id"] for raw in at_limit))
    assert [(letter.event_id, letter.detail) for letter in letters] == [
        (raw["event_id"],
         f"events: batch of {MAX_BATCH + 1} is over the limit of {MAX_BATCH} (event {n})")
        for n, raw in enumerate(over, start=1)
    ]  # fmt: skip
    assert not {raw["event_id"] for raw in over} & set(stack.events())


def test_metrics_carry_counts_only(stack: Stack) -> None:
    publish(stack, event("metrics-secret-event", "p-metrics-secret-phone"))
    wait_for_events(stack, "metrics-secret-event")
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()  # loopback

    assert "recall_decisions_total" in body
    for secret in ("metrics-secret", "p-metrics-secret-phone", PASSWORD, "L-p-"):
        assert secret not in body


def test_passwords_never_appear_in_output_or_logs(stack: Stack, tmp_path: Path) -> None:
    """Every command, with password-bearing URLs, on success and on failure."""
    history = tmp_path / "history.jsonl"
    history.write_bytes(
        orjson.dumps(event("mask-1", "p-mask", occurred_at="2026-01-14T10:00:00+00:00"))
        + b"\n{not json\n"
    )
    stdin = orjson.dumps(event("mask-0", "p-mask")).decode()
    closed = free_port()
    bad_database = make_url(stack.database).set(host="127.0.0.1", port=closed, query={})
    unreachable = {
        "RECALL_DATABASE_URL": bad_database.render_as_string(hide_password=False),
        "RECALL_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:{closed}/0",
    }
    wrong_password = {"RECALL_BROKER_URL": stack.broker.replace(PASSWORD, PASSWORD + "-wrong")}
    commands: list[tuple[tuple[str, ...], dict[str, str], str | None]] = [
        (("db", "upgrade"), {}, None),
        (("rules", "check"), {}, None),
        (("rules", "show"), {}, None),
        (("rules", "export"), {}, None),
        (("decide", "-"), {}, stdin),
        (("publish", str(history)), {}, None),
        (("status",), {}, None),
        (("status", "--json"), {}, None),
        (("phones", "list"), {}, None),
        (("phones", "show", "p-mask"), {}, None),
        (("dead-letters", "list"), {}, None),
        (("dead-letters", "replay"), {}, None),
        (("replay", str(history), "--dry-run"), {}, None),
        (("replay", str(history)), {}, None),
        (("status",), unreachable, None),
        (("db", "upgrade"), unreachable, None),
        (("phones", "list"), unreachable, None),
        (("dead-letters", "list"), unreachable, None),
        (("replay", str(history)), unreachable, None),
        (("status",), wrong_password, None),
        (("publish", str(history)), wrong_password, None),
        (("worker", "--no-beat"), unreachable, None),
    ]
    masked = set()
    for args, env, given in commands:
        done = stack.run(*args, stdin=given, **env)
        output = done.stdout + done.stderr
        assert PASSWORD not in output, f"recall {' '.join(args)} ({env or 'reachable'}):\n{output}"
        if "***" in output:
            masked.add((args, env is unreachable))
        if env is unreachable and args[0] in ("db", "phones", "dead-letters", "replay"):
            # A database that cannot be reached is a one-line error, never a traceback.
            assert done.returncode == 1, output
            assert done.stderr.startswith("error: cannot reach the database "), output
            assert done.stderr.count("\n") == 1, output
    worker_log = stack.worker.text()
    assert "***" in worker_log  # the worker's banner names the broker, masked
    assert PASSWORD not in worker_log
    for path in stack.home.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    print(f"\nmasking: {len(commands)} commands run, {len(masked)} printed a masked URL, 0 leaked")
    # Those that name the broker or the database did so, masked (the check above is not vacuous).
    for named in [("db", "upgrade"), ("status",), ("status", "--json"), ("publish", str(history))]:
        assert (named, False) in masked, named
    for named in [("status",), ("db", "upgrade"), ("phones", "list"), ("worker", "--no-beat")]:
        assert (named, True) in masked, named


def test_the_broker_url_password_is_needed(stack: Stack) -> None:
    """The masking test is only worth something if the password is real: without it, no entry."""
    port = make_url(stack.broker.replace("redis://", "postgresql://")).port
    client = redis.Redis(port=port)
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()


def test_metrics_are_not_published_beyond_the_private_network() -> None:
    """As docs/OPERATIONS.md says: compose only exposes 9547 to its network, no Kubernetes
    Service routes to it, and Flower, which shows payloads, is published on loopback only."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "ports" not in services["worker"]
    assert services["worker"]["expose"] == ["9547"]
    assert all(str(port).startswith("127.0.0.1:") for port in services["flower"]["ports"])
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for item in yaml.safe_load_all(path.read_text()):
            if item and item.get("kind") == "Service":
                ports = {p.get("targetPort", p.get("port")) for p in item["spec"]["ports"]}
                assert not ports & {9547, "metrics"}, path
