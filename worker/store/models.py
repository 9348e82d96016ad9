"""Database tables: processed events, attempts, phone state, recalls, dead letters, rules versions.

The database is the source of truth for recalls (DESIGN.md section 3): a recall is a row with its
due time and state, never a long broker countdown. The schema is created by Alembic migrations
(``worker/store/migrations``); these typed models are what the code reads and writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    column,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Attempt",
    "Base",
    "DeadLetter",
    "Phone",
    "ProcessedEvent",
    "Recall",
    "ReplayRun",
    "RulesVersion",
    "UTCDateTime",
]

ID = String(255)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored in UTC, returned aware on every backend (SQLite included)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps no offset: store the UTC wall time and put UTC back when reading.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ProcessedEvent(Base):
    """Every call result taken (not rejected), keyed by ``event_id``: the idempotency key."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    phone_id: Mapped[str] = mapped_column(ID, index=True)
    plan_id: Mapped[str] = mapped_column(ID)
    lead_id: Mapped[str] = mapped_column(ID)
    occurred_at: Mapped[datetime]
    processed_at: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    decision: Mapped[dict[str, Any]]


class Attempt(Base):
    """A call placed to a phone (each call result, stale ones too): what attempt caps count."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_phone_time", "phone_id", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    phone_id: Mapped[str] = mapped_column(ID)
    occurred_at: Mapped[datetime]


#: The claim order's first key: callbacks (personal and anyone) before every other eligible phone;
#: the claim index holds this very expression, so that the claim reads the index in order.
CLAIM_RANK: ColumnElement[bool] = column("eligible_reason").is_distinct_from(
    literal_column("'callback'")  # a literal, as in the index: a parameter would not match it
)


class Phone(Base):
    """A lead phone's current state: eligibility, the pending recall and the last decision."""

    __tablename__ = "phones"
    __table_args__ = (
        #: A lead's other phones, for the caps counting every phone of a lead (lead_max_attempts).
        Index("ix_phones_lead", "lead_id"),
        # Unique when set; partial, so that it is no way to the (many) phones under no lease.
        Index(
            "ix_phones_lease_id",
            "lease_id",
            unique=True,
            postgresql_where=text("lease_id IS NOT NULL"),
            sqlite_where=text("lease_id IS NOT NULL"),
        ),
        # The claim's two sources (store.claims): eligible phones under no lease, in claim order,
        # and those under a lease, by its end. Partial: a phone not eligible is in neither. Each
        # condition is the claim's as the backend's SQL spells it (SQLite has no boolean type).
        Index(
            "ix_phones_claim_free",
            "plan_id",
            CLAIM_RANK,
            "eligible_at",
            "phone_id",
            postgresql_where=text("eligible AND lease_id IS NULL"),
            sqlite_where=text("eligible = 1 AND lease_id IS NULL"),
        ),
        Index(
            "ix_phones_claim_leased",
            "plan_id",
            "leased_until",
            postgresql_where=text("eligible AND lease_id IS NOT NULL"),
            sqlite_where=text("eligible = 1 AND lease_id IS NOT NULL"),
        ),
    )

    phone_id: Mapped[str] = mapped_column(ID, primary_key=True)
    lead_id: Mapped[str] = mapped_column(ID)
    plan_id: Mapped[str] = mapped_column(ID)
    eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    eligible_at: Mapped[datetime | None]
    #: Bumped by every applied decision; a recall fires only if it still matches (supersede).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    pending_recall_id: Mapped[str | None] = mapped_column(ID)
    last_result_at: Mapped[datetime | None]
    last_event_id: Mapped[str | None] = mapped_column(ID)
    last_decision: Mapped[dict[str, Any] | None]
    system_recalls: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]
    #: Why the phone became eligible: the fired recall's reason (``callback``, ``sip_recall``
    #: ...) and a personal callback's agent; cleared with the eligibility by the next decision.
    eligible_reason: Mapped[str | None] = mapped_column(String(32))
    eligible_agent: Mapped[str | None] = mapped_column(ID)
    #: A dialer's claim on the eligible phone (``store.claims``): live while ``leased_until`` is
    #: ahead; ended by a release, by a call result for the phone, or by a recall firing.
    lease_id: Mapped[str | None] = mapped_column(String(32))
    leased_until: Mapped[datetime | None]
    leased_to: Mapped[str | None] = mapped_column(ID)


class Recall(Base):
    """A scheduled recall, keyed by the id of the event whose decision made it."""

    __tablename__ = "recalls"
    __table_args__ = (
        Index("ix_recalls_state_due", "state", "due_at"),
        Index("ix_recalls_phone", "phone_id"),
    )

    recall_id: Mapped[str] = mapped_column(ID, primary_key=True)
    phone_id: Mapped[str] = mapped_column(ID)
    lead_id: Mapped[str] = mapped_column(ID)
    plan_id: Mapped[str] = mapped_column(ID)
    generation: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str] = mapped_column(String(32))
    #: The agent who owns a personal callback (the event's callback_agent); null: anyone.
    agent: Mapped[str | None] = mapped_column(ID)
    #: pending -> fired, or pending -> superseded (a later decision replaced it); a replay's
    #: recalls are "held" (not dispatched) until the replay ends and fires or releases them.
    state: Mapped[str] = mapped_column(String(12), default="pending")
    created_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None]
    fired_at: Mapped[datetime | None]


class DeadLetter(Base):
    """A rejected input kept whole with its reason, for operators to list, fix and replay."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime]
    task: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    #: new -> replayed (taken on a later replay) or still new with a fresh detail.
    status: Mapped[str] = mapped_column(String(12), default="new")
    replayed_at: Mapped[datetime | None]


# An applied replay says it is alive this often (a row in replay_runs); one silent for
# RUNNING_WITHIN_S is taken as gone (killed, its machine lost), and its held recalls as orphaned.
HEARTBEAT_S = 10.0
RUNNING_WITHIN_S = 60.0


class ReplayRun(Base):
    """An applied replay running now: its recalls are ``held`` until it ends (``recall status``).

    The replay refreshes ``heartbeat_at`` while it runs and deletes its row when it ends; a row
    whose heartbeat stopped is a replay that was killed.
    """

    __tablename__ = "replay_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class RulesVersion(Base):
    """A rules version that came into force (DESIGN.md section 9): the rules' history, oldest first.

    **Append-only**: a row is added when a version comes into force
    (``store.rules_versions.record_rules_version``), and no code updates or deletes one, so the
    rules behind any stored decision (its ``rules_version``) can be read back years later. A
    version that comes back (A, then B, then A again) is a new row.
    """

    __tablename__ = "rules_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: ``Rules.version``: the first 12 hex digits of the SHA-256 of ``rules``.
    version: Mapped[str] = mapped_column(String(12), index=True)
    #: The complete rules, exactly as ``recall rules export`` prints them.
    rules: Mapped[str] = mapped_column(Text)
    in_force_since: Mapped[datetime]
    #: Where from: "file /path/rules.toml", "shipped defaults", "replay: file ...", "api" ...
    source: Mapped[str] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(String(255))
    comment: Mapped[str | None] = mapped_column(Text)


# A recall waiting to fire: "pending" for the live dispatcher, "held" while a replay that made
# it is still running (see fire_due).
WAITING = ("pending", "held")
