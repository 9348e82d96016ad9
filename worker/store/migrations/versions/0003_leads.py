"""Leads: one row per lead, the lock that serialises the events of one lead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows are made as leads get their next call result: nothing to fill in from the phones.
    op.create_table("leads", sa.Column("lead_id", sa.String(255), primary_key=True))


def downgrade() -> None:
    op.drop_table("leads")
