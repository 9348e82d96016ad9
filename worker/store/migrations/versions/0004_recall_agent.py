"""A recall keeps the agent who owns a personal callback (null: anyone may take it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"  # 0003_rules_versions.py
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recalls") as batch:
        batch.add_column(sa.Column("agent", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recalls") as batch:
        batch.drop_column("agent")
