"""Initial schema: events, attempts, phones, recalls, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", ID, primary_key=True),
        sa.Column("phone_id", ID, nullable=False),
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_phone_id", "events", ["phone_id"])
    op.create_table(
        "attempts",
        sa.Column("event_id", ID, primary_key=True),
        sa.Column("phone_id", ID, nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_attempts_phone_time", "attempts", ["phone_id", "occurred_at"])
    op.create_table(
        "phones",
        sa.Column("phone_id", ID, primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("eligible_at", UTCDateTime(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pending_recall_id", ID, nullable=True),
        sa.Column("last_result_at", UTCDateTime(), nullable=True),
        sa.Column("last_event_id", ID, nullable=True),
        sa.Column("last_decision", sa.JSON(), nullable=True),
        sa.Column("system_recalls", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "recalls",
        sa.Column("recall_id", ID, primary_key=True),
        sa.Column("phone_id", ID, nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("plan_id", ID, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(80), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("dispatched_at", UTCDateTime(), nullable=True),
        sa.Column("fired_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_recalls_state_due", "recalls", ["state", "due_at"])
    op.create_index("ix_recalls_phone", "recalls", ["phone_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("replayed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_dead_letters_status", "dead_letters", ["status", "id"])


def downgrade() -> None:
    for table in ("dead_letters", "recalls", "phones", "attempts", "events"):
        op.drop_table(table)
