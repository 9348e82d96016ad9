"""The rules' history: every version that has been in force, append-only (DESIGN.md section 9).

``record_rules_version`` is how a version comes into force: a worker calls it when its rules file
changes (worker/runtime/rules_cache.py), ``put_rules`` for an edit through the API or the
console, an applied replay and ``recall dead-letters replay`` before they decide. Rows are only
ever added (see ``models.RulesVersion``).

**The version in force** (``in_force``), the one the workers decide with, is the newest row that
came from a rules file, the shipped defaults or an edit: a replay's row ("replay: ...",
"dead-letters: ...") names the rules that replay decided with, not the workers' rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.orm import Session

from worker.domain.rules import Rules, RulesError, rules_from_export, rules_from_text
from worker.store.models import RulesVersion

__all__ = [
    "EDIT_NAME",
    "EDIT_SOURCES",
    "REPLAY_SOURCES",
    "UnknownVersion",
    "VersionInForce",
    "find_version",
    "in_force",
    "is_live",
    "last_from",
    "newest_id",
    "put_rules",
    "reassert_in_force",
    "record_rules_version",
    "rules_history",
    "rules_of",
    "source_of",
]

#: Where an edit comes from: the source recorded for it, beside its author and comment.
EDIT_SOURCES = ("api", "console")
#: The sources of a replay's row (``source_of(rules, via)``): not the workers' rules.
REPLAY_SOURCES = ("replay", "dead-letters")
#: The file name an edit's text is checked under: its errors read as ``recall rules check
#: --rules rules.toml`` prints them for a file holding that text.
EDIT_NAME = "rules.toml"

# The advisory lock that serialises writers of the history on PostgreSQL: the two-key form, whose
# key space is apart from the one-key lead locks (store/decisions.py).
_LOCK = {"kind": 0x52554C45, "key": 1}  # "RULE", the history


class UnknownVersion(LookupError):
    """A version asked for that is not in the history, or a prefix of more than one."""


@dataclass(frozen=True, slots=True)
class VersionInForce:
    """One row of the history, as the commands show it."""

    id: int
    version: str
    in_force_since: datetime
    source: str
    author: str | None
    comment: str | None
    rules: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "in_force_since": self.in_force_since.isoformat(),
            "source": self.source,
            "author": self.author,
            "comment": self.comment,
        }


def source_of(rules: Rules, via: str | None = None) -> str:
    """Where ``rules`` came from, for the history: ``file /abs/rules.toml`` or ``shipped
    defaults``, after ``via: `` (``replay``, ``dead-letters``) when not the worker's."""
    where = f"file {os.path.abspath(rules.sources[-1])}" if len(rules.sources) > 1 else None
    where = where or "shipped defaults"
    return f"{via}: {where}" if via else where


def is_live(source: str) -> bool:
    """Whether a row from ``source`` names the workers' rules (a file, the defaults, an edit)."""
    return not source.startswith(tuple(f"{via}: " for via in REPLAY_SOURCES))


def _live() -> Any:
    # The SQL of is_live.
    return and_(*(~RulesVersion.source.startswith(f"{via}: ") for via in REPLAY_SOURCES))


def _newest(session: Session, source: str) -> str | None:
    """The version a new row from ``source`` is compared with: the version in force for the
    workers' own sources, else the newest row."""
    query = select(RulesVersion.version).order_by(RulesVersion.id.desc()).limit(1)
    return session.scalar(query.where(_live()) if is_live(source) else query)


def record_rules_version(
    session: Session,
    rules: Rules,
    source: str,
    at: datetime,
    *,
    author: str | None = None,
    comment: str | None = None,
) -> bool:
    """Record that ``rules`` are in force since ``at``, unless they are the newest version already
    (for a file or an edit: unless they are the version in force).

    Returns whether a row was written. Safe with several workers at once: on PostgreSQL the
    writers of a new version queue on a transaction-level advisory lock and look again once they
    hold it (so one row, whoever comes first); SQLite has one writer at a time already. The lock
    is taken only when the newest version differs, and always before the leads' locks.
    """
    version = rules.version
    if _newest(session, source) == version:
        return False
    _lock(session)
    if _newest(session, source) == version:
        return False
    _add(session, version, rules.export_text(), at, source, author, comment)
    return True


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:kind, :key)"), _LOCK)


def _add(
    session: Session,
    version: str,
    rules: str,
    at: datetime,
    source: str,
    author: str | None,
    comment: str | None,
) -> None:
    session.add(
        RulesVersion(
            version=version,
            rules=rules,
            in_force_since=at,
            source=source,
            author=author,
            comment=comment,
        )
    )
    session.flush()


def newest_id(session: Session) -> int | None:
    """The id of the newest row: what a worker polls to see that the history changed."""
    return session.scalar(select(func.max(RulesVersion.id)))


def in_force(session: Session) -> VersionInForce | None:
    """The version in force: the newest row from a rules file, the defaults or an edit (None
    before any was recorded)."""
    query = select(RulesVersion).where(_live()).order_by(RulesVersion.id.desc()).limit(1)
    row = session.scalar(query)
    return _row(row) if row is not None else None


def last_from(session: Session, source: str) -> str | None:
    """The version last recorded from ``source`` (``file /abs/rules.toml``, ...), if any."""
    query = (
        select(RulesVersion.version)
        .where(RulesVersion.source == source)
        .order_by(RulesVersion.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def reassert_in_force(session: Session, at: datetime) -> bool:
    """Record the version in force again, as it was recorded, when a replay's row is newer.

    ``recall rules history`` then reads as it should: the newest row is the rules in force.
    Returns whether a row was written.
    """
    _lock(session)
    current = in_force(session)
    if current is None or current.id == newest_id(session):
        return False
    _add(session, current.version, current.rules, at, current.source, current.author,
         current.comment)  # fmt: skip
    return True


def rules_of(row: VersionInForce) -> Rules:
    """The rules a row of the history holds, loaded from its text (``rules_from_export``).

    Raises ``RulesError`` when the text no longer loads to its version.
    """
    rules = rules_from_export(row.rules, f"rules version {row.version}")
    if rules.version != row.version:
        raise RulesError(
            f"rules version {row.version}: its stored text loads as version {rules.version}"
        )
    return rules


def put_rules(
    session: Session,
    text: str,
    *,
    author: str,
    comment: str,
    now: datetime,
    via: str = "api",
) -> VersionInForce:
    """An edit: the whole rules file ``text`` (merged over the shipped defaults, as a
    ``RECALL_RULES`` file is) comes into force from ``now``, recorded with its author and comment.

    Checked exactly as ``recall rules check`` checks a file named ``rules.toml`` (``EDIT_NAME``):
    raises the same ``RulesError``, whose text is the line the command prints after ``error:``.
    Rules whose version is already in force change nothing: no row is written, and that row is
    returned (an edit that changes nothing is no new version). ``via`` is ``api`` or ``console``.
    Running workers take the new version within seconds (worker/runtime/rules_cache.py).
    """
    if via not in EDIT_SOURCES:
        raise ValueError(f"via must be one of {', '.join(EDIT_SOURCES)}, got {via!r}")
    rules = rules_from_text(text, EDIT_NAME)
    record_rules_version(session, rules, via, now, author=author, comment=comment)
    current = in_force(session)
    assert current is not None, "recorded, or in force already"
    return current


def _row(row: RulesVersion) -> VersionInForce:
    return VersionInForce(
        row.id, row.version, row.in_force_since, row.source, row.author, row.comment, row.rules
    )


def rules_history(session: Session) -> list[VersionInForce]:
    """Every version that has been in force, newest first."""
    query = select(RulesVersion).order_by(RulesVersion.id.desc())
    return [_row(row) for row in session.scalars(query)]


def find_version(session: Session, prefix: str) -> VersionInForce:
    """The version named by ``prefix`` (a version, or the start of one), as last in force.

    Raises ``UnknownVersion`` (a one-line message naming it) when no version or more than one
    starts so.
    """
    wanted = prefix.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,12}", wanted):
        raise UnknownVersion(f"no rules version {prefix!r} (a version is 12 hex digits)")
    query = (
        select(RulesVersion)
        .where(RulesVersion.version.startswith(wanted))
        .order_by(RulesVersion.id.desc())
    )
    rows = list(session.scalars(query))
    versions = sorted({row.version for row in rows})
    if not versions:
        raise UnknownVersion(f"no rules version {prefix!r} in the history (recall rules history)")
    if len(versions) > 1:
        raise UnknownVersion(
            f"rules version {prefix!r} is ambiguous: {', '.join(versions)} (give more digits)"
        )
    return _row(rows[0])
