"""Shared fixtures. Keep this file to fixtures; builders live in ``tests/helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from tests.helpers import make_event as _make_event
from tests.servers import PostgresServer, redis_for_tests
from tests.workers import WorkerProcess, dispose_engines
from worker.domain.events import CallResult
from worker.domain.rules import Rules, load_rules
from worker.store.database import make_engine, upgrade


@pytest.fixture(scope="session")
def default_rules() -> Rules:
    """The shipped default rules, with no operator file."""
    return load_rules()


@pytest.fixture
def write_rules(tmp_path: Path) -> Callable[..., Path]:
    """Write TOML text to a file under ``tmp_path`` and return its path."""

    def write(text: str, name: str = "rules.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_event() -> Callable[..., CallResult]:
    """``tests.helpers.make_event``: a valid event with sensible defaults, fields overridable."""

    def make(**fields: Any) -> CallResult:
        return _make_event(**fields)

    return make


# --- real servers ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server to create test databases in (CI's cluster, or a throwaway one)."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server's URL (flushed before each test that uses ``broker_url``)."""
    with redis_for_tests(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def broker_url(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    return redis_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: SQLite (the embedded default) and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'recall.db'}"
        upgrade(url)
        yield url
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    upgrade(url)
    yield url
    dispose_engines()
    server.drop_database(url)


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``recall worker`` processes with a given environment; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], *args: str, name: str = "w") -> WorkerProcess:
        process = WorkerProcess(env, tmp_path / f"worker-{name}-{len(started)}.log", args)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()
