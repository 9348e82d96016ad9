"""Fixtures of the reliability suite: servers a scenario may break, and the figures it prints.

The slow fault scenarios carry the ``reliability`` marker, which the default run leaves out
(``addopts`` in pyproject.toml); ``make reliability`` selects them. Every figure a scenario
measures is printed on its own line as it is measured (visible with ``-s``) and again in a
"reliability figures" section at the end of the run, in the form

    FIGURE <scenario> | <name> = <value>
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_integration import Db, open_db
from tests.reliability.support import worker_env
from tests.servers import PostgresServer, RedisServer
from tests.workers import WorkerProcess, dispose_engines
from worker.store.database import upgrade

__all__ = ["open_db"]  # the integration suite's database reader, shared

_FIGURES = pytest.StashKey[list[str]]()


class Figures:
    """Record the figures of one scenario."""

    def __init__(self, scenario: str, lines: list[str]) -> None:
        self.scenario = scenario
        self.lines = lines

    def __call__(self, name: str, value: object) -> None:
        line = f"FIGURE {self.scenario} | {name} = {value}"
        self.lines.append(line)
        print(line, flush=True)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures(name, value)`` prints one figure of this scenario (named after the test)."""
    scenario = request.node.name.removeprefix("test_")
    return Figures(scenario, request.config.stash[_FIGURES])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own (no persistence), which it may restart empty."""
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server = RedisServer(directory)
    yield server
    server.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop and start (never CI's cluster)."""
    server = PostgresServer(own=True)
    yield server
    server.stop()


@pytest.fixture
def fresh_database() -> Iterator[Callable[[PostgresServer], str]]:
    """A migrated database on a given server; every one is dropped at the end."""
    made: list[tuple[PostgresServer, str]] = []

    def make(server: PostgresServer) -> str:
        url = server.create_database()
        made.append((server, url))
        upgrade(url)
        return url

    yield make
    dispose_engines()
    for server, url in made:
        if server.launch and server.process is None:
            server.start()  # a scenario that failed while its server was stopped
        server.drop_database(url)


@dataclass
class Stack:
    """A worker started on a fresh database: its URL, a reader, the worker and its environment."""

    url: str
    db: Db
    worker: WorkerProcess
    env: dict[str, str]


@pytest.fixture
def stack(
    fresh_database: Callable[[PostgresServer], str],
    open_db: Callable[[str], Db],
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> Callable[..., Stack]:
    """``stack(broker_url, postgres_server, rules_text=None, **env)``: a fresh, migrated database
    on that server and a ``recall worker`` on it and that broker (stopped first at the end)."""

    def start(broker: str, server: PostgresServer, rules: str | None = None, **more: str) -> Stack:
        url = fresh_database(server)
        if rules is not None:
            path = tmp_path / "rules.toml"
            path.write_text(rules, encoding="utf-8")
            more["RECALL_RULES"] = str(path)
        env = worker_env(broker, url, tmp_path / "home", **more)
        return Stack(url, open_db(url), worker_process(env), env)

    return start
