"""Rules versions: every version of the rules that has been in force, append-only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"  # 0002_replay_runs.py
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(12), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("in_force_since", UTCDateTime(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("author", sa.String(255), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
    )
    op.create_index("ix_rules_versions_version", "rules_versions", ["version"])


def downgrade() -> None:
    op.drop_index("ix_rules_versions_version", "rules_versions")
    op.drop_table("rules_versions")
