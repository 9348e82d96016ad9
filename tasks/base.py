"""The base task: owns the transaction, the clock and the retries, so each task is a few lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from celery import Task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from config.settings import RETRY_BACKOFF_MAX_S
from worker.domain.rules import RulesError
from worker.store.database import DatabaseNotReady, session_scope

__all__ = ["RecallTask"]


class RecallTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """Tasks retry with exponential backoff while the database is away, without limit.

    Each run is one transaction; everything is idempotent, so a retry or a redelivery after a
    crash leaves the same state as one clean run.
    """

    abstract = True
    # Only what an outage raises (database, broker, network), and rules that cannot be loaded
    # yet: a query error would fail again on retry, and is the dead letters' business.
    autoretry_for = (
        OperationalError,
        InterfaceError,
        DatabaseNotReady,
        ConnectionError,
        BrokerError,
        RulesError,
    )
    max_retries = None
    retry_backoff = 1
    retry_backoff_max = RETRY_BACKOFF_MAX_S
    retry_jitter = True

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with session_scope() as session:
            yield session
