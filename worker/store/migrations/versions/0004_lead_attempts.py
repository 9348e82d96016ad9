"""An index of phones by lead: the caps counting every phone of a lead load the lead's phones.

Revision ID: 0004_lead_attempts
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0004_lead_attempts"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_phones_lead", "phones", ["lead_id"])


def downgrade() -> None:
    op.drop_index("ix_phones_lead", table_name="phones")
