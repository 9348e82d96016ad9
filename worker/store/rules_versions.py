"""The rules' history: every version that has been in force, append-only (DESIGN.md section 9).

``record_rules_version`` is how a version comes into force: the worker calls it in the first
ingestion transaction that decides with new rules, an applied replay and ``recall dead-letters
replay`` before they decide. Rows are only ever added (see ``models.RulesVersion``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from worker.domain.rules import Rules
from worker.store.models import RulesVersion

__all__ = [
    "UnknownVersion",
    "VersionInForce",
    "find_version",
    "record_rules_version",
    "rules_history",
    "source_of",
]

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


def _newest(session: Session) -> str | None:
    newest = select(func.max(RulesVersion.id)).scalar_subquery()
    return session.scalar(select(RulesVersion.version).where(RulesVersion.id == newest))


def record_rules_version(
    session: Session,
    rules: Rules,
    source: str,
    at: datetime,
    *,
    author: str | None = None,
    comment: str | None = None,
) -> bool:
    """Record that ``rules`` are in force since ``at``, unless they are the newest version already.

    Returns whether a row was written. Safe with several workers at once: on PostgreSQL the
    writers of a new version queue on a transaction-level advisory lock and look again once they
    hold it (so one row, whoever comes first); SQLite has one writer at a time already. The lock
    is taken only when the newest version differs, and always before the leads' locks.
    """
    version = rules.version
    if _newest(session) == version:
        return False
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:kind, :key)"), _LOCK)
        if _newest(session) == version:
            return False
    session.add(
        RulesVersion(
            version=version,
            rules=rules.export_text(),
            in_force_since=at,
            source=source,
            author=author,
            comment=comment,
        )
    )
    session.flush()
    return True


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
