"""Real worker processes for the integration tests (no eager mode, no in-process worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from worker.store.models import ProcessedEvent

if TYPE_CHECKING:
    from worker.client import RecallClient

ROOT = Path(__file__).resolve().parents[1]


def dispose_engines() -> None:
    """Close pooled connections of the test process so a test database can be dropped."""
    from worker.store.database import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose()


class WorkerProcess:
    """``python -m worker worker`` (the ``recall worker`` command) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...]) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        for name in ("RECALL_BROKER_URL", "RECALL_DATABASE_URL", "RECALL_RULES", "RECALL_HOME"):
            if name not in env:
                self.env.pop(name, None)
        self.log = log
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "--concurrency", "2", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{self.text()}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """``kill -9`` the whole worker (main process and pool children)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


def decision_of(
    client: RecallClient,
    engine: Engine,
    event: dict[str, Any],
    worker: WorkerProcess,
    *,
    timeout: float = 30,
    poll_s: float = 0.1,
) -> dict[str, Any]:
    """Publish the call result ``event``; the decision ``worker`` stores for it, read from the
    database every ``poll_s`` seconds. None after ``timeout`` seconds fails with the worker's log.
    """
    client.publish(event)
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            found = session.scalar(
                select(ProcessedEvent.decision).where(ProcessedEvent.event_id == event["event_id"])
            )
        if found is not None:
            return dict(found)
        assert time.monotonic() < deadline, worker.text()[-3000:]
        time.sleep(poll_s)
