"""A real ``recall serve`` process per test (or per module), and tokens of each role for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port
from tests.workers import ROOT
from worker.api.tokens import token_entry

#: One token of each role, as the tests' tokens file lists them (names are the roles').
TOKENS = {
    role: f"test-token-of-the-{role}-role-0123456789abcdef"
    for role in ("dialer", "viewer", "editor")
}


def write_tokens(path: Path) -> Path:
    path.write_text("".join(token_entry(role, role, token) for role, token in TOKENS.items()))
    return path


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Server:
    """``recall serve`` in its own process group; its stdout and stderr go to ``log``."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, role: str | None = "viewer", **kwargs: object) -> httpx.Response:
        headers = auth(role) if role else {}
        return httpx.get(self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, role: str | None = "editor", **kwargs: object) -> httpx.Response:
        headers = auth(role) if role else {}
        return httpx.post(self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def put(self, path: str, role: str | None = "editor", **kwargs: object) -> httpx.Response:
        headers = auth(role) if role else {}
        return httpx.put(self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def delete(self, path: str, role: str | None = "dialer", **kwargs: object) -> httpx.Response:
        headers = auth(role) if role else {}
        return httpx.delete(self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


#: The console's secret key of the test servers (outside the embedded default one is required).
SECRET_KEY = "test-secret-key-of-the-console-0123456789abcdef"


def server_env(env: dict[str, str]) -> dict[str, str]:
    """The test process's environment without RECALL_*, then ``env``; outside the embedded
    default, the tests' RECALL_SECRET_KEY unless ``env`` says otherwise."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("RECALL_")}
    embedded = "RECALL_DATABASE_URL" not in env and "RECALL_BROKER_URL" not in env
    secret = {} if embedded else {"RECALL_SECRET_KEY": SECRET_KEY}
    return {**base, **secret, **env, "PYTHONUNBUFFERED": "1"}


def run_serve(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", *args],
            cwd=ROOT,
            env=server_env(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_server(env: dict[str, str], log: Path, timeout: float = 60) -> Server:
    """Start ``recall serve`` on a free port and wait until /healthz answers 200."""
    port = free_port()
    process = run_serve(env, log, "--port", str(port))
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"recall serve exited ({process.returncode}):\n{server.output()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"recall serve not ready after {timeout}s:\n{server.output()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Server]]:
    """Start real ``recall serve`` processes with a given environment; all stopped at the end."""
    started: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        server = start_server(env, tmp_path / f"serve-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.toml")


@pytest.fixture
def api(
    database_url: str,
    broker_url: str,
    tokens_file: Path,
    tmp_path: Path,
    serve: Callable[[dict[str, str]], Server],
) -> Server:
    """A service on the test database (SQLite, then PostgreSQL) and Redis, with the tokens.

    (The database first: it is dropped after the service stops.)
    """
    return serve(
        {
            "RECALL_HOME": str(tmp_path / "home"),
            "RECALL_DATABASE_URL": database_url,
            "RECALL_BROKER_URL": broker_url,
            "RECALL_API_TOKENS": str(tokens_file),
        }
    )
