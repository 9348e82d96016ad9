"""Database engines, sessions and migrations for PostgreSQL (psycopg 3) and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings, mask_url

__all__ = [
    "DatabaseNotReady",
    "database_url",
    "ensure_migrated",
    "get_engine",
    "make_engine",
    "session_scope",
    "upgrade",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseNotReady(RuntimeError):
    """The database is unreachable or not at the latest migration."""


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url
    settings.ready_home()
    return settings.sqlite_url


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: SQLite in WAL mode with writers that queue politely."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            json_serializer=_json_text,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself, so that it can be BEGIN IMMEDIATE below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # Take the write lock up front: a deferred transaction that upgrades to a writer later
            # fails at once with "database is locked" instead of waiting its turn.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, json_serializer=_json_text
    )


def _json_text(value: Any) -> str:
    # orjson, as the COPY path uses: the same text whatever the batch size (NaN becomes null).
    return orjson.dumps(value).decode()


@cache
def get_engine() -> Engine:
    """The process's engine, from the settings (call ``dispose(close=False)`` after a fork)."""
    return make_engine(database_url(get_settings()))


@cache
def _session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    factory = _session_factory(engine or get_engine())
    with factory.begin() as session:
        yield session


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> str:
    """Bring the database at ``url`` to the latest migration; return the revision."""
    try:
        command.upgrade(_alembic_config(url), "head")
    except (OperationalError, InterfaceError) as error:
        raise _unreachable(url, error) from None
    return _head(url)


def _unreachable(url: str, error: Exception) -> DatabaseNotReady:
    # One line, with the URL's password masked: the driver's message may run to several.
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DatabaseNotReady(f"cannot reach the database {mask_url(url)}: {reason}")


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(_alembic_config(url)).get_current_head()
    assert head is not None
    return head


def ensure_migrated(engine: Engine) -> None:
    """Refuse to go on with a database that is not at the latest migration."""
    url = engine.url.render_as_string(hide_password=False)
    head = _head(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as error:
        raise _unreachable(url, error) from None
    if current != head:
        raise DatabaseNotReady(
            f"the database {mask_url(url)} is at migration {current or 'none'}, not {head}:"
            " run `recall db upgrade`"
        )
