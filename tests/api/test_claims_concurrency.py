"""Claims by many dialers at once through several ``recall serve`` processes (issue 15).

Two API processes on one PostgreSQL database, eight clients claiming ten phones at a time as
fast as they can: no phone is handed out twice while its lease holds, and every eligible phone
is handed out exactly once. Eligible phones are made the real way: call results ingested, their
recalls fired.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from tests.api.conftest import Server, auth
from tests.helpers import EVENT_DEFAULTS, SKEW_S, at
from tests.servers import PostgresServer
from tests.workers import dispose_engines
from worker.domain.rules import Rules
from worker.store.database import make_engine, upgrade
from worker.store.ingest import ingest
from worker.store.recalls import fire_recalls

PHONES = 300
CLIENTS = 8
NOW = at("2026-01-14T10:00:05+00:00")


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped after the services using it stopped."""
    url = postgres.create_database()
    upgrade(url)
    yield url
    dispose_engines()
    postgres.drop_database(url)


def make_eligible(url: str, rules: Rules, count: int) -> set[str]:
    events = [
        {**EVENT_DEFAULTS, "event_id": f"e{n}", "phone_id": f"P{n}", "lead_id": f"L{n}"}
        for n in range(count)
    ]
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            report = ingest(session, events, rules, NOW, task="test", skew_s=SKEW_S)
        with Session(engine) as session, session.begin():
            due = [d.event_id for d in report.decisions if d.action == "recall"]
            fired = fire_recalls(
                session, due, NOW + timedelta(hours=1), early_tolerance=timedelta(0)
            )
    finally:
        engine.dispose()
    return {each.phone_id for each in fired}


def test_concurrent_dialers_over_two_processes_never_share_a_phone(
    postgres_url: str,
    broker_url: str,
    tokens_file: Path,
    tmp_path: Path,
    serve: Callable[[dict[str, str]], Server],
    default_rules: Rules,
) -> None:
    eligible = make_eligible(postgres_url, default_rules, PHONES)
    assert len(eligible) == PHONES
    env = {
        "RECALL_DATABASE_URL": postgres_url,
        "RECALL_BROKER_URL": broker_url,
        "RECALL_API_TOKENS": str(tokens_file),
    }
    servers = [serve({**env, "RECALL_HOME": str(tmp_path / f"home{n}")}) for n in range(2)]
    handed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def dialer(number: int) -> None:
        server = servers[number % len(servers)]
        url = f"{server.url}/v1/plans/default/claims"
        with httpx.Client(headers=auth("dialer"), timeout=30) as client:
            start.wait()
            while True:
                answer = client.post(url, json={"limit": 10, "lease_s": 3600})
                if answer.status_code != 200:
                    with lock:
                        errors.append(answer.text)
                    return
                phones = [each["phone_id"] for each in answer.json()]
                if not phones:
                    return
                with lock:
                    handed.extend(phones)

    threads = [threading.Thread(target=dialer, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    twice = [phone for phone, times in Counter(handed).items() if times > 1]
    assert twice == []
    assert set(handed) == eligible
