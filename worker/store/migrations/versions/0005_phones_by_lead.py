"""An index of phones by lead: the caps counting every phone of a lead load the lead's phones.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"  # 0004_recall_agent.py
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_phones_lead", "phones", ["lead_id"])


def downgrade() -> None:
    op.drop_index("ix_phones_lead", table_name="phones")
