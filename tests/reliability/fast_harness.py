"""What the fast reliability tests share: a fresh PostgreSQL database, real workers' environment,
and waiting on what the workers logged. The slow fault scenarios have their own harness."""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from tests.servers import PostgresServer
from tests.workers import WorkerProcess, dispose_engines
from worker.client import RecallClient
from worker.store.database import make_engine, upgrade

#: A decision line of the ingestion tasks: "event <id> phone <id>: <action> (<reason>)".
DECISION_LINE = re.compile(
    r"/\S+\] event .*? phone .*?: (recall|suppress|duplicate|stale) \((\w+)\)"
)


@contextlib.contextmanager
def fresh_database(postgres: PostgresServer) -> Iterator[tuple[str, Engine]]:
    """A new, migrated PostgreSQL database (URL and an engine to read it), dropped at the end."""
    url = postgres.create_database()
    upgrade(url)
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        dispose_engines()
        postgres.drop_database(url)


def worker_env(broker: str, database: str, home: Path, rules: Path | None = None) -> dict[str, str]:
    env = {"RECALL_BROKER_URL": broker, "RECALL_DATABASE_URL": database, "RECALL_HOME": str(home)}
    if rules is not None:
        env["RECALL_RULES"] = str(rules)
    return env


def decisions_logged(*workers: WorkerProcess) -> int:
    return sum(len(DECISION_LINE.findall(worker.text())) for worker in workers)


def wait_for_decisions(count: int, *workers: WorkerProcess, timeout: float = 240) -> float:
    """Wait until the workers logged ``count`` decisions in all; return the seconds it took."""
    started = time.monotonic()
    while decisions_logged(*workers) < count:
        for worker in workers:
            if worker.process is None or worker.process.poll() is not None:
                raise AssertionError(f"{worker.log.name} exited:\n{worker.text()[-3000:]}")
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"{decisions_logged(*workers)} of {count} decisions after {timeout}s"
            )
        time.sleep(0.5)
    return time.monotonic() - started


def publish_mixed(
    client: RecallClient,
    events: Sequence[Any],
    rng: random.Random,
    single_share: float,
    largest_batch: int,
) -> int:
    """Publish ``events`` in order, each message alone (``single_share`` of the time) or a batch
    of 2 to ``largest_batch``, as a dialer mixing both tasks would; return the message count."""
    messages = position = 0
    while position < len(events):
        size = 1 if rng.random() < single_share else rng.randint(2, largest_batch)
        part = events[position : position + size]
        if size == 1:
            client.publish(part[0])
        else:
            client.publish_many(part, batch=size)
        messages += 1
        position += size
    return messages
